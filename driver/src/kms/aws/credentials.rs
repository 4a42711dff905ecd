//! AWS credentials passed per StorageClass through the CSI secrets.
//!
//! With no secrets, the SDK's default chain answers (environment, web identity for IRSA and EKS pod
//! identity, container and instance profiles, shared profile). With secrets, exactly these keys are
//! taken; any other key is refused, so that a misspelt key fails loudly instead of silently falling
//! back to the plugin's own identity.

use aws_sdk_kms::config::Credentials;

use crate::kms::{KmsError, Secrets};

/// CSI secret key: the access key id.
pub const SECRET_ACCESS_KEY_ID: &str = "awsAccessKeyId";
/// CSI secret key: the secret access key.
pub const SECRET_SECRET_ACCESS_KEY: &str = "awsSecretAccessKey";
/// CSI secret key: the session token of temporary credentials (optional).
pub const SECRET_SESSION_TOKEN: &str = "awsSessionToken";

const PROVIDER_NAME: &str = "cryptvol-csi-secrets";

/// The credentials in `secrets`, or `None` to use the default chain.
pub fn from_secrets(secrets: &Secrets) -> Result<Option<Credentials>, KmsError> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let mut unknown: Vec<&str> = secrets
        .keys()
        .filter(|k| ![SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY, SECRET_SESSION_TOKEN].contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(KmsError::InvalidSecrets {
            message: format!(
                "unknown keys {unknown:?}; the aws provider takes {SECRET_ACCESS_KEY_ID}, \
                 {SECRET_SECRET_ACCESS_KEY} and optionally {SECRET_SESSION_TOKEN}"
            ),
        });
    }
    let required = |key: &str| match secrets.get(key) {
        Some(value) if !value.is_empty() => Ok(value),
        Some(_) => Err(KmsError::InvalidSecrets { message: format!("{key} is empty") }),
        None => Err(KmsError::InvalidSecrets {
            message: format!(
                "{key} is missing; {SECRET_ACCESS_KEY_ID} and {SECRET_SECRET_ACCESS_KEY} go together"
            ),
        }),
    };
    let access_key_id = required(SECRET_ACCESS_KEY_ID)?;
    let secret_access_key = required(SECRET_SECRET_ACCESS_KEY)?;
    let session_token = match secrets.get(SECRET_SESSION_TOKEN) {
        Some("") => {
            return Err(KmsError::InvalidSecrets {
                message: format!("{SECRET_SESSION_TOKEN} is empty; leave it out for long-term keys"),
            })
        }
        token => token.map(str::to_string),
    };
    Ok(Some(Credentials::new(access_key_id, secret_access_key, session_token, None, PROVIDER_NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets::from_map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn empty_secrets_use_the_default_chain() {
        assert!(from_secrets(&Secrets::default()).unwrap().is_none());
    }

    #[test]
    fn a_complete_set_becomes_credentials_without_showing_the_secret() {
        let creds = from_secrets(&secrets(&[
            (SECRET_ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (SECRET_SECRET_ACCESS_KEY, "very-secret"),
            (SECRET_SESSION_TOKEN, "token-value"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(creds.session_token(), Some("token-value"));
        let shown = format!("{creds:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("token-value"), "{shown}");
    }

    #[test]
    fn incomplete_or_unknown_sets_are_refused_by_name() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[(SECRET_ACCESS_KEY_ID, "AKID")], "awsSecretAccessKey is missing"),
            (&[(SECRET_ACCESS_KEY_ID, ""), (SECRET_SECRET_ACCESS_KEY, "s")], "awsAccessKeyId is empty"),
            (&[("accessKeyId", "AKID"), (SECRET_SECRET_ACCESS_KEY, "s")], "unknown keys [\"accessKeyId\"]"),
            (
                &[(SECRET_ACCESS_KEY_ID, "a"), (SECRET_SECRET_ACCESS_KEY, "s"), (SECRET_SESSION_TOKEN, "")],
                "awsSessionToken is empty",
            ),
        ];
        for (pairs, expected) in cases {
            let err = from_secrets(&secrets(pairs)).unwrap_err();
            assert!(matches!(err, KmsError::InvalidSecrets { .. }));
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
