//! Node state that outlives the plugin process: what is staged where and published where.
//!
//! One JSON file per staged volume in a node-local directory (a hostPath in the DaemonSet),
//! written atomically. It holds what is needed to stage the volume again after a restart: never a
//! key, and never the CSI secrets of the stage request.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// What the node knows about one staged volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeRecord {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub read_only: bool,
    /// The key ARN the controller recorded in the volume context, pinned at every stage.
    pub key_arn: Option<String>,
    /// Published target paths, each with its read-only flag.
    #[serde(default)]
    pub targets: BTreeMap<PathBuf, bool>,
}

/// The state directory; `None` keeps no state (the demo, some tests).
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    dir: Option<PathBuf>,
}

impl NodeState {
    pub fn new(dir: Option<PathBuf>) -> Self {
        NodeState { dir }
    }

    fn file(&self, volume_id: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{volume_id}.json")))
    }

    /// Writes (or replaces) the record of a volume.
    pub fn save(&self, record: &VolumeRecord) -> io::Result<()> {
        let Some(path) = self.file(&record.volume_id) else { return Ok(()) };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        crate::atomic::write_file(&path, &bytes, 0o600)
    }

    /// Reads the record of one volume, if there is one.
    pub fn load(&self, volume_id: &str) -> io::Result<Option<VolumeRecord>> {
        let Some(path) = self.file(volume_id) else { return Ok(None) };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| invalid(&path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets a volume.
    pub fn remove(&self, volume_id: &str) -> io::Result<()> {
        let Some(path) = self.file(volume_id) else { return Ok(()) };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record, skipping (and logging) unreadable ones.
    pub fn load_all(&self) -> io::Result<Vec<VolumeRecord>> {
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| invalid(&path, e))
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).map_err(|e| invalid(&path, e)))
            {
                Ok(record) => records.push(record),
                Err(e) => tracing::error!(error = %e, "skipping unreadable node state record"),
            }
        }
        records.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        Ok(records)
    }
}

fn invalid(path: &Path, err: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::new(Some(dir.path().join("state")));
        let mut record = VolumeRecord {
            volume_id: "v1".into(),
            staging_path: "/stage/v1".into(),
            read_only: false,
            key_arn: Some("cryptvol:local:key/k".into()),
            targets: BTreeMap::new(),
        };
        state.save(&record).unwrap();
        record.targets.insert("/pods/a".into(), true);
        state.save(&record).unwrap();
        assert_eq!(state.load("v1").unwrap(), Some(record.clone()));
        std::fs::write(dir.path().join("state/junk.json"), b"{").unwrap();
        assert_eq!(state.load_all().unwrap(), vec![record]);
        state.remove("v1").unwrap();
        state.remove("v1").unwrap();
        assert_eq!(state.load("v1").unwrap(), None);
    }

    #[test]
    fn no_directory_keeps_nothing() {
        let state = NodeState::default();
        assert!(state.load_all().unwrap().is_empty());
        assert_eq!(state.load("v").unwrap(), None);
    }
}
