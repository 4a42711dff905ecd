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
