//! `cryptvol fsck`: unwraps a volume's data key through its KMS connection and checks the
//! encrypted tree offline (see [`crate::fsck`]); exit code 0 when clean, 1 when every damaged
//! file was repaired, 4 when damage remains, 8 when the check could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::fsck::{check_tree, FsckOptions, Report};
use crate::header::{VolumeHeader, DATA_DIR};
use crate::kms::config::KmsRegistry;
use crate::kms::Secrets;
use crate::volume::BackingStore;

/// Exit code: damage was found and every damaged file was cut back.
pub const EXIT_REPAIRED: u8 = 1;
/// Exit code: damage remains.
pub const EXIT_DAMAGED: u8 = 4;
/// Exit code: the check could not run (bad flags, KMS refused, unreadable tree).
pub const EXIT_ERROR: u8 = 8;

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// The backing root that holds the volume directories (with --volume-id).
    #[arg(long, requires = "volume_id", conflicts_with = "volume_dir")]
    pub backing_root: Option<PathBuf>,
    /// The volume id (with --backing-root).
    #[arg(long, requires = "backing_root")]
    pub volume_id: Option<String>,
    /// The volume directory itself (`<backing root>/<volume id>`), instead of the two above.
    #[arg(long, required_unless_present = "backing_root")]
    pub volume_dir: Option<PathBuf>,
    /// The KMS configuration (the driver's YAML) used to unwrap the data key.
    #[arg(long)]
    pub kms_config: PathBuf,
    /// Cut every damaged file back to its last good block. Only on a volume that is not mounted.
    #[arg(long)]
    pub repair_truncate: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why `cryptvol fsck` could not run.
#[derive(Debug, thiserror::Error)]
pub enum FsckCliError {
    #[error("volume directory {0} has no file name to take the volume id from")]
    NoVolumeId(PathBuf),
    #[error(transparent)]
    Store(#[from] crate::volume::StoreError),
    #[error(transparent)]
    Header(#[from] crate::header::HeaderError),
    #[error("volume header in {dir} names volume {found}, not {expected}")]
    WrongVolume { dir: PathBuf, found: String, expected: String },
    #[error("volume {0} is being deleted: its wrapped key is gone")]
    Deleting(String),
    #[error(transparent)]
    Config(#[from] crate::kms::config::ConfigError),
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    Check(#[from] crate::fsck::FsckError),
}

pub async fn run(args: FsckArgs) -> ExitCode {
    let json = args.json;
    match check(args).await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("cryptvol fsck: cannot encode the report: {e}"),
                }
            } else {
                print!("{}", report.to_text());
            }
            let code = if report.is_clean() {
                0
            } else if report.damage_remains() {
                EXIT_DAMAGED
            } else {
                EXIT_REPAIRED
            };
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("cryptvol fsck: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn check(args: FsckArgs) -> Result<Report, FsckCliError> {
    let (volume_dir, volume_id) = match (args.volume_dir, args.backing_root, args.volume_id) {
        (Some(dir), _, _) => {
            let id = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            let id = id.ok_or_else(|| FsckCliError::NoVolumeId(dir.clone()))?;
            (dir, id)
        }
        (None, Some(root), Some(id)) => (BackingStore::new(root).volume_dir(&id)?, id),
        (None, _, _) => unreachable!("clap requires --volume-dir or --backing-root with --volume-id"),
    };
    crate::volume::validate_volume_id(&volume_id)?;
    let header = VolumeHeader::read(&volume_dir)?;
    if header.volume_id != volume_id {
        return Err(FsckCliError::WrongVolume {
            dir: volume_dir,
            found: header.volume_id,
            expected: volume_id,
        });
    }
    let wrapped = header.wrapped_key().ok_or_else(|| FsckCliError::Deleting(volume_id.clone()))?;
    let registry = KmsRegistry::load(&args.kms_config)?;
    let client = registry.client(Some(&header.kms_connection))?;
    let data_key = client.decrypt(&header.key_arn, &wrapped, &volume_id, &Secrets::default()).await?;
    let keys = data_key.derive();
    drop(data_key);
    // A seal that does not verify means the header was altered: refuse rather than trust it.
    header.verify_seal(&keys)?;
    let data = volume_dir.join(DATA_DIR);
    let opts = FsckOptions { repair_truncate: args.repair_truncate };
    let report =
        tokio::task::spawn_blocking(move || check_tree(&data, &keys, opts)).await.map_err(|e| {
            crate::fsck::FsckError::Io { path: volume_dir.clone(), source: std::io::Error::other(e) }
        })??;
    Ok(report)
}
