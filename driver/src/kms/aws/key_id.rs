//! The shapes of AWS KMS key identifiers, checked before a request is sent.
//!
//! KMS itself answers a malformed id with NotFoundException, which would reach a user as "key does
//! not exist"; checking the shape here lets a typo in a StorageClass say what is wrong with it.

use crate::kms::{KmsAction, KmsError};

/// Longest key id KMS accepts.
const MAX_KEY_ID_LEN: usize = 2048;

/// The parts of `arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE`.
#[derive(Debug, PartialEq, Eq)]
struct Arn<'a> {
    prefix: &'a str,
    resource: &'a str,
}

fn parse_arn(id: &str) -> Option<Arn<'_>> {
    let mut parts = id.splitn(6, ':');
    let (arn, partition, service, region, account, resource) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = arn == "arn"
        && partition.starts_with("aws")
        && service == "kms"
        && !region.is_empty()
        && !account.is_empty()
        && account.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| Arn { prefix: &id[..id.len() - resource.len()], resource })
}

fn is_key_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_alias_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
}

fn invalid(key_id: &str, reason: &str) -> KmsError {
    KmsError::InvalidKeyId { key: key_id.to_string(), reason: reason.to_string() }
}

/// Checks that `key_id` is a key id, key ARN, `alias/NAME` or alias ARN.
pub fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    const FORMS: &str = "an AWS KMS key is named by its key id (1234abcd-...), key ARN \
                         (arn:aws:kms:REGION:ACCOUNT:key/ID), alias name (alias/NAME) or alias ARN \
                         (arn:aws:kms:REGION:ACCOUNT:alias/NAME)";
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(invalid(key_id, FORMS));
    }
    let resource = if key_id.starts_with("arn:") {
        parse_arn(key_id).ok_or_else(|| invalid(key_id, FORMS))?.resource
    } else {
        key_id
    };
    let ok = match (resource.strip_prefix("key/"), resource.strip_prefix("alias/")) {
        (Some(id), _) if key_id.starts_with("arn:") => is_key_name(id),
        (Some(_), _) => false,
        (None, Some(alias)) => is_alias_name(alias),
        (None, None) => !key_id.starts_with("arn:") && is_key_name(resource),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(key_id, FORMS))
    }
}

/// Checks that `key_arn` is a canonical key ARN, as headers store and data operations take.
pub fn check_key_arn(action: KmsAction, key_arn: &str) -> Result<(), KmsError> {
    let is_key_arn =
        parse_arn(key_arn).and_then(|arn| arn.resource.strip_prefix("key/")).is_some_and(is_key_name);
    if is_key_arn {
        Ok(())
    } else {
        Err(invalid(
            key_arn,
            &format!("{action} takes a canonical key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
        ))
    }
}

/// The key ARN an alias points to, from the alias ARN and the alias's target key id.
pub fn key_arn_for_alias(alias_arn: &str, target_key_id: &str) -> Option<String> {
    let arn = parse_arn(alias_arn)?;
    arn.resource.starts_with("alias/").then(|| format!("{}key/{target_key_id}", arn.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn accepts_the_four_forms() {
        for id in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            KEY_ARN,
            "alias/app/prod_1",
            "arn:aws:kms:eu-west-1:111122223333:alias/app",
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/abc",
        ] {
            check_key_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn refuses_malformed_ids() {
        for id in [
            "",
            "alias/",
            "key/abc",
            "has space",
            "arn:aws:s3:::bucket",
            "arn:aws:kms:eu-west-1:acct:key/abc",
            "arn:aws:kms:eu-west-1:111122223333:key/",
            "arn:aws:kms:eu-west-1:111122223333:grant/abc",
            "alias/bad name",
        ] {
            assert!(matches!(check_key_id(id), Err(KmsError::InvalidKeyId { .. })), "{id:?}");
        }
    }

    #[test]
    fn data_operations_need_a_key_arn() {
        check_key_arn(KmsAction::Decrypt, KEY_ARN).unwrap();
        for id in ["alias/app", "1234abcd", "arn:aws:kms:eu-west-1:111122223333:alias/app"] {
            let err = check_key_arn(KmsAction::Decrypt, id).unwrap_err().to_string();
            assert!(err.contains("kms:Decrypt takes a canonical key ARN"), "{err}");
        }
    }

    #[test]
    fn alias_targets_become_key_arns() {
        assert_eq!(
            key_arn_for_alias("arn:aws:kms:eu-west-1:111122223333:alias/app", "k-1").as_deref(),
            Some("arn:aws:kms:eu-west-1:111122223333:key/k-1")
        );
        assert_eq!(key_arn_for_alias("alias/app", "k-1"), None);
    }
}
