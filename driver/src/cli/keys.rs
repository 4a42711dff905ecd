//! `cryptvol keys`: create, list, disable, enable and rotate keys of a local key file.

use std::path::PathBuf;

use crate::kms::local::{arn_of, KeyFile};
use crate::kms::KmsError;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Add a key (creating the key file, mode 0600, if needed).
    Create {
        #[arg(long)]
        key_file: PathBuf,
        name: String,
    },
    /// List keys: those of a local key file (state, versions), or those a configured KMS
    /// connection offers (`--kms-config FILE [--connection NAME]`; for AWS, its aliases).
    List {
        #[arg(long, conflicts_with_all = ["kms_config", "connection"], required_unless_present = "kms_config")]
        key_file: Option<PathBuf>,
        #[arg(long)]
        kms_config: Option<PathBuf>,
        /// Connection name in the KMS configuration (default: its `default`).
        #[arg(long, requires = "kms_config")]
        connection: Option<String>,
    },
    /// Disable a key: it no longer wraps or unwraps data keys.
    Disable {
        #[arg(long)]
        key_file: PathBuf,
        name: String,
    },
    /// Enable a disabled key.
    Enable {
        #[arg(long)]
        key_file: PathBuf,
        name: String,
    },
    /// Add a new version of a key; new wraps use it, existing wraps still open.
    Rotate {
        #[arg(long)]
        key_file: PathBuf,
        name: String,
    },
}

/// Why a `cryptvol keys` command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Config(#[from] crate::kms::config::ConfigError),
}

pub async fn run(command: KeysCommand) -> Result<(), KeysError> {
    match command {
        KeysCommand::Create { key_file, name } => {
            KeyFile::update(&key_file, true, |f| f.create_key(&name))?;
            println!("created key {name} ({}) in {}", arn_of(&name), key_file.display());
        }
        KeysCommand::List { key_file: None, kms_config: Some(config), connection } => {
            let registry = crate::kms::config::KmsRegistry::load(&config)?;
            let keys = crate::kms::picker::list_keys(&registry, connection.as_deref()).await?;
            print!("{}", crate::kms::picker::render_table(&keys));
        }
        KeysCommand::List { key_file: None, kms_config: None, .. } => {
            unreachable!("clap requires --key-file or --kms-config")
        }
        KeysCommand::List { key_file: Some(key_file), .. } => {
            let file = KeyFile::load(&key_file)?;
            println!("{:<24} {:<9} {:>8}  ARN", "NAME", "STATE", "VERSIONS");
            for (name, key) in &file.keys {
                let state = if key.enabled { "enabled" } else { "disabled" };
                println!("{name:<24} {state:<9} {:>8}  {}", key.version_count(), arn_of(name));
            }
        }
        KeysCommand::Disable { key_file, name } => {
            KeyFile::update(&key_file, false, |f| f.set_enabled(&name, false))?;
            println!("disabled key {name}");
        }
        KeysCommand::Enable { key_file, name } => {
            KeyFile::update(&key_file, false, |f| f.set_enabled(&name, true))?;
            println!("enabled key {name}");
        }
        KeysCommand::Rotate { key_file, name } => {
            let version = KeyFile::update(&key_file, false, |f| f.rotate_key(&name))?;
            println!("key {name} now has version {version}; new data keys are wrapped with it");
        }
    }
    Ok(())
}
