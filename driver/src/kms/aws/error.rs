//! Maps every failure of an AWS KMS call to a [`KmsError`] naming the action and the key.
//!
//! The SDK's per-operation error enums do not model the errors that matter most here (access
//! denied, throttling, bad credentials arrive as "unhandled" with only a code), so the mapping
//! works on the error code, which every KMS error carries, and is the same for every operation.
//! Each code cryptvol knows is listed under the variant it means; a code outside the list is
//! reported as [`KmsError::UnexpectedAnswer`] with the code in the message.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use crate::kms::{KeyState, KmsAction, KmsError};

/// Codes that mean the caller's identity may not perform this action on this key.
const ACCESS_DENIED: &[&str] = &["AccessDeniedException", "NotAuthorized", "OptInRequired"];

/// Codes that mean the request was not signed by credentials KMS accepts.
const UNAUTHENTICATED: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "ExpiredTokenException",
    "ExpiredToken",
    "RequestExpired",
];

/// Codes that a later attempt may not get: throttling, KMS-side faults, a key whose backing store
/// (CloudHSM, external key store) is briefly out of reach, an exhausted quota.
const TRANSIENT: &[&str] = &[
    "ThrottlingException",
    "KMSInternalException",
    "KmsInternalException",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "LimitExceededException",
];

/// Codes that mean cryptvol built a request KMS does not accept: a bug here, not a user's mistake.
const MALFORMED_REQUEST: &[&str] = &[
    "ValidationException",
    "SerializationException",
    "UnknownOperationException",
    "InvalidAction",
    "MissingAction",
    "MissingParameter",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidQueryParameter",
    "MalformedQueryString",
    "DryRunOperationException",
    "InvalidGrantTokenException",
    "InvalidGrantIdException",
    "InvalidMarkerException",
];

/// Maps a failed SDK call. `key` is the key id or ARN the call named.
pub fn classify<E>(action: KmsAction, key: &str, err: SdkError<E, HttpResponse>) -> KmsError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            from_code(action, key, service.err().code(), service.err().message().unwrap_or(""), status)
        }
        SdkError::TimeoutError(_) => KmsError::Unavailable {
            action,
            key: key.to_string(),
            message: format!("no answer in time, retries included ({})", chain(&err)),
        },
        SdkError::DispatchFailure(_) => match find::<CredentialsError>(&err) {
            Some(CredentialsError::ProviderTimedOut(_)) => KmsError::Unavailable {
                action,
                key: key.to_string(),
                message: format!("the credential provider did not answer in time ({})", chain(&err)),
            },
            Some(_) => KmsError::Unauthenticated {
                action,
                key: key.to_string(),
                message: format!(
                    "no usable AWS credentials: none in the CSI secrets, and the default chain \
                     (environment, web identity, container or instance profile, shared profile) \
                     gave none ({})",
                    chain(&err)
                ),
            },
            None => KmsError::Unavailable {
                action,
                key: key.to_string(),
                message: format!("cannot reach the KMS endpoint, retries included ({})", chain(&err)),
            },
        },
        // A reply that does not parse: a proxy or load balancer page, a cut connection.
        SdkError::ResponseError(response) => KmsError::Unavailable {
            action,
            key: key.to_string(),
            message: format!(
                "unreadable answer with HTTP status {} ({})",
                response.raw().status().as_u16(),
                chain(&err)
            ),
        },
        SdkError::ConstructionFailure(_) => KmsError::UnexpectedAnswer {
            action,
            key: key.to_string(),
            detail: format!("the request could not be built ({})", chain(&err)),
        },
        // SdkError is non-exhaustive; a kind added after this SDK version is reported as it is.
        _ => KmsError::UnexpectedAnswer {
            action,
            key: key.to_string(),
            detail: format!("an SDK failure of a kind this build does not know ({})", chain(&err)),
        },
    }
}

/// Maps a KMS error code (with its message and HTTP status) to a [`KmsError`].
pub fn from_code(action: KmsAction, key: &str, code: Option<&str>, message: &str, status: u16) -> KmsError {
    let key_owned = || key.to_string();
    let Some(code) = code else {
        return if status == 429 || status >= 500 {
            KmsError::Unavailable {
                action,
                key: key_owned(),
                message: format!("HTTP {status} without an error code"),
            }
        } else {
            KmsError::UnexpectedAnswer {
                action,
                key: key_owned(),
                detail: format!("HTTP {status} without an error code; is the endpoint an AWS KMS endpoint?"),
            }
        };
    };
    let with_code = || if message.is_empty() { code.to_string() } else { format!("{code}: {message}") };
    match code {
        "NotFoundException" => KmsError::KeyNotFound { key: key_owned() },
        "InvalidArnException" => KmsError::InvalidKeyId { key: key_owned(), reason: with_code() },
        "DisabledException" => KmsError::KeyNotEnabled { key: key_owned(), state: KeyState::Disabled },
        "KMSInvalidStateException" | "KmsInvalidStateException" => {
            KmsError::KeyNotEnabled { key: key_owned(), state: invalid_state(message) }
        }
        "InvalidKeyUsageException" => KmsError::UnsuitableKey { key: key_owned(), reason: with_code() },
        "InvalidCiphertextException" | "IncorrectKeyException" => {
            KmsError::InvalidCiphertext { action, key: key_owned() }
        }
        c if ACCESS_DENIED.contains(&c) => {
            KmsError::AccessDenied { action, key: key_owned(), message: with_code() }
        }
        c if UNAUTHENTICATED.contains(&c) => KmsError::Unauthenticated {
            action,
            key: key_owned(),
            message: format!("the KMS refused the credentials ({})", with_code()),
        },
        c if TRANSIENT.contains(&c) => KmsError::Unavailable {
            action,
            key: key_owned(),
            message: format!("{}, retries included", with_code()),
        },
        c if MALFORMED_REQUEST.contains(&c) => KmsError::UnexpectedAnswer {
            action,
            key: key_owned(),
            detail: format!("KMS refused the request as malformed ({})", with_code()),
        },
        _ => KmsError::UnexpectedAnswer {
            action,
            key: key_owned(),
            detail: format!("error code this build does not know ({})", with_code()),
        },
    }
}

/// KMSInvalidStateException carries no state field; its message names the state.
fn invalid_state(message: &str) -> KeyState {
    if message.to_ascii_lowercase().contains("pending deletion") {
        KeyState::PendingDeletion { deletion_date: None }
    } else if message.is_empty() {
        KeyState::Other("not valid for this request (KMSInvalidStateException)".into())
    } else {
        KeyState::Other(format!("not valid for this request (KMSInvalidStateException: {message})"))
    }
}

/// The error and its sources, joined: the SDK's own Display says only "dispatch failure".
fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTION: KmsAction = KmsAction::Decrypt;

    fn code(c: &str) -> KmsError {
        from_code(ACTION, "arn:k", Some(c), "the message", 400)
    }

    #[test]
    fn every_listed_code_lands_in_its_variant() {
        for c in ACCESS_DENIED {
            assert!(matches!(code(c), KmsError::AccessDenied { .. }), "{c}");
        }
        for c in UNAUTHENTICATED {
            assert!(matches!(code(c), KmsError::Unauthenticated { .. }), "{c}");
        }
        for c in TRANSIENT {
            assert!(matches!(code(c), KmsError::Unavailable { .. }), "{c}");
        }
        for c in MALFORMED_REQUEST {
            assert!(matches!(code(c), KmsError::UnexpectedAnswer { .. }), "{c}");
        }
        assert!(matches!(code("NotFoundException"), KmsError::KeyNotFound { .. }));
        assert!(matches!(code("InvalidArnException"), KmsError::InvalidKeyId { .. }));
        assert!(matches!(code("InvalidKeyUsageException"), KmsError::UnsuitableKey { .. }));
        assert!(matches!(code("IncorrectKeyException"), KmsError::InvalidCiphertext { .. }));
        assert!(matches!(code("InvalidCiphertextException"), KmsError::InvalidCiphertext { .. }));
        assert!(matches!(
            code("DisabledException"),
            KmsError::KeyNotEnabled { state: KeyState::Disabled, .. }
        ));
    }

    #[test]
    fn messages_name_the_action_key_and_code() {
        let denied = code("AccessDeniedException").to_string();
        assert!(denied.contains("kms:Decrypt") && denied.contains("arn:k"), "{denied}");
        assert!(denied.contains("AccessDeniedException: the message"), "{denied}");
        let unknown = code("BrandNewException").to_string();
        assert!(unknown.contains("BrandNewException") && unknown.contains("kms:Decrypt"), "{unknown}");
    }

    #[test]
    fn invalid_state_reads_pending_deletion_from_the_message() {
        let pending = from_code(ACTION, "k", Some("KMSInvalidStateException"), "k is pending deletion.", 400);
        assert!(matches!(
            pending,
            KmsError::KeyNotEnabled { state: KeyState::PendingDeletion { deletion_date: None }, .. }
        ));
        let other = from_code(ACTION, "k", Some("KMSInvalidStateException"), "k is pending import.", 400);
        assert!(other.to_string().contains("pending import"), "{other}");
    }

    #[test]
    fn answers_without_a_code_go_by_status() {
        assert!(matches!(from_code(ACTION, "k", None, "", 503), KmsError::Unavailable { .. }));
        assert!(matches!(from_code(ACTION, "k", None, "", 429), KmsError::Unavailable { .. }));
        let wrong = from_code(ACTION, "k", None, "", 404).to_string();
        assert!(wrong.contains("HTTP 404") && wrong.contains("endpoint"), "{wrong}");
    }
}
