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
    /// List the keys with their state and versions.
    List {
        #[arg(long)]
        key_file: PathBuf,
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

pub fn run(command: KeysCommand) -> Result<(), KmsError> {
    match command {
        KeysCommand::Create { key_file, name } => {
            KeyFile::update(&key_file, true, |f| f.create_key(&name))?;
            println!("created key {name} ({}) in {}", arn_of(&name), key_file.display());
        }
        KeysCommand::List { key_file } => {
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
