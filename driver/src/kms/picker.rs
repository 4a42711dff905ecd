//! What `cryptvol keys list --connection NAME` shows: the keys a connection offers, by alias, as a
//! console key picker would. The CLI parses flags and prints; the work is here.

use super::config::KmsRegistry;
use super::{KeyListing, KmsError, Secrets};

/// Lists the keys of `connection` (the default connection for `None`), sorted by alias.
///
/// Uses the connection's default credentials (for `aws`, the SDK's default chain), as an
/// administrator running the CLI has them.
pub async fn list_keys(
    registry: &KmsRegistry,
    connection: Option<&str>,
) -> Result<Vec<KeyListing>, KmsError> {
    let client = registry.client(connection)?;
    let mut keys = client.list_keys(&Secrets::default()).await?;
    keys.sort_by(|a, b| a.alias.cmp(&b.alias));
    Ok(keys)
}

/// Renders a listing as an aligned two-column table, `ALIAS` and `KEY ARN`, one key per line.
pub fn render_table(keys: &[KeyListing]) -> String {
    const ALIAS: &str = "ALIAS";
    let width = keys.iter().map(|k| k.alias.len()).chain([ALIAS.len()]).max().unwrap_or(ALIAS.len());
    let mut out = format!("{ALIAS:<width$}  KEY ARN\n");
    for key in keys {
        out.push_str(&format!("{:<width$}  {}\n", key.alias, key.key_arn));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let keys = [
            KeyListing { alias: "alias/a".into(), alias_arn: None, key_arn: "arn:1".into() },
            KeyListing { alias: "alias/longer".into(), alias_arn: None, key_arn: "arn:2".into() },
        ];
        assert_eq!(render_table(&keys), "ALIAS         KEY ARN\nalias/a       arn:1\nalias/longer  arn:2\n");
    }

    #[tokio::test]
    async fn lists_local_keys_through_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.json");
        crate::kms::local::KeyFile::update(&key_file, true, |f| {
            f.create_key("b")?;
            f.create_key("a")
        })
        .unwrap();
        let config = crate::kms::config::KmsConfig::local(key_file);
        let registry = KmsRegistry::from_config(config, dir.path(), "test").unwrap();
        let keys = list_keys(&registry, None).await.unwrap();
        let aliases: Vec<_> = keys.iter().map(|k| k.alias.as_str()).collect();
        assert_eq!(aliases, ["alias/a", "alias/b"]);
        assert!(matches!(list_keys(&registry, Some("nope")).await, Err(KmsError::UnknownConnection { .. })));
    }
}
