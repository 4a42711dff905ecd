//! The `cryptvol` admin CLI: local key management, a self-contained demo, the benchmark and the
//! offline check of a volume (`fsck`).

pub mod bench;
pub mod demo;
pub mod fsck;
pub mod keys;

use std::path::PathBuf;

/// `cryptvol` and its subcommands.
#[derive(Debug, clap::Parser)]
#[command(name = "cryptvol", version, about = "cryptvol admin CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage keys of the local KMS provider.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Provision, stage and publish one volume through the CSI API, and serve it until interrupted.
    Demo {
        /// Working directory: sockets, backing store, key file and mount point go under it.
        dir: PathBuf,
        /// KMS configuration to use instead of a local key file under DIR.
        #[arg(long)]
        kms_config: Option<PathBuf>,
        /// The `kmsKeyId` StorageClass parameter (default: `demo`, created in the local key file).
        #[arg(long)]
        key: Option<String>,
    },
    /// Benchmark cryptvol against the plain directory and gocryptfs on the file system of DIR.
    Bench(bench::BenchArgs),
    /// Re-wrap a volume's data key under another KMS key, or under the newest material of its own
    /// key (key-encryption-key rotation; files are not re-encrypted). On a cluster, use an
    /// EncryptionKeyRotation object instead.
    Rewrap {
        /// Directory under which every volume lives.
        #[arg(long)]
        backing_root: PathBuf,
        /// KMS configuration file (YAML), as the plugins use.
        #[arg(long)]
        kms_config: PathBuf,
        /// Target key (id, ARN or alias on the volume's KMS connection; default: its current key).
        #[arg(long)]
        to_key: Option<String>,
        /// The volume id (its directory name under the backing root).
        volume_id: String,
    },
    /// Check a volume's encrypted tree offline: every unreadable block, name, directory id and
    /// symlink target; `--repair-truncate` cuts damaged files back to their last good block.
    Fsck(fsck::FsckArgs),
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> std::process::ExitCode {
    let result = match cli.command {
        Command::Keys { command } => keys::run(command).await.map_err(|e| e.to_string()),
        Command::Demo { dir, kms_config, key } => {
            demo::run(&dir, kms_config, key).await.map_err(|e| e.to_string())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Rewrap { backing_root, kms_config, to_key, volume_id } => {
            rewrap(backing_root, kms_config, to_key, volume_id).await
        }
        Command::Fsck(args) => return fsck::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cryptvol: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn rewrap(
    backing_root: PathBuf,
    kms_config: PathBuf,
    to_key: Option<String>,
    volume_id: String,
) -> Result<(), String> {
    let kms = crate::kms::config::KmsRegistry::load(&kms_config).map_err(|e| e.to_string())?;
    let store = crate::volume::BackingStore::new(backing_root);
    let secrets = crate::kms::Secrets::default();
    let done = crate::rotation::rotate_volume(&store, &kms, &volume_id, to_key.as_deref(), &secrets)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "volume {}: data key re-wrapped from {} to {}",
        done.volume_id, done.from_key_arn, done.to_key_arn
    );
    Ok(())
}
