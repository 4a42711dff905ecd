//! The objects the suite creates, and the shell scripts its pods run.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;

/// The CSI driver name, as StorageClasses name it.
pub const DRIVER: &str = "cryptvol.csi.dev";
/// Where workload pods mount their volume.
pub const MOUNT_PATH: &str = "/data";

/// A claim on `storage_class` of `size` (a quantity such as `1Gi`) with one access mode.
pub fn claim(name: &str, storage_class: &str, size: &str, access_mode: &str) -> PersistentVolumeClaim {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name },
        "spec": {
            "storageClassName": storage_class,
            "accessModes": [access_mode],
            "resources": { "requests": { "storage": size } },
        },
    }))
}

/// A pod on `node` that mounts `claim` at [`MOUNT_PATH`] and runs `script` with `sh -c`.
pub fn shell_pod(name: &str, image: &str, node: &str, claim: &str, script: &str) -> Pod {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/part-of": "cryptvol-e2e" } },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": { "kubernetes.io/hostname": node },
            "containers": [{
                "name": "work",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "volumeMounts": [{ "name": "data", "mountPath": MOUNT_PATH }],
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }],
        },
    }))
}

/// The same pod with its volume mounted with `mountPropagation: HostToContainer`, so that mounts
/// the node plugin makes again on the host after a restart reach the running container.
pub fn with_host_to_container(mut pod: Pod) -> Pod {
    let mounts =
        pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut()).flat_map(|c| c.volume_mounts.iter_mut());
    for mount in mounts.flatten() {
        mount.mount_propagation = Some("HostToContainer".into());
    }
    pod
}

/// A StorageClass of this driver with the given parameters.
pub fn storage_class(name: &str, parameters: serde_json::Value) -> StorageClass {
    from_json(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": { "name": name },
        "provisioner": DRIVER,
        "parameters": parameters,
    }))
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    // The literals above are fixed shapes; a mismatch is a bug in this file, found by its tests.
    serde_json::from_value(value).expect("object literal matches its Kubernetes type")
}

/// A recognisable plaintext: a file of `lines` copies of a random marker, in a directory whose
/// name and the file's name carry the marker too, so that file contents and names can both be
/// looked for on the backing store.
#[derive(Debug, Clone)]
pub struct Plaintext {
    pub marker: String,
    pub lines: usize,
}

impl Plaintext {
    /// A fresh marker; 2,000 lines make a file of several content blocks.
    pub fn new() -> Self {
        Plaintext { marker: format!("cvmark{}", uuid::Uuid::new_v4().simple()), lines: 2000 }
    }

    /// The file, relative to the mount path.
    pub fn path(&self) -> String {
        format!("{MOUNT_PATH}/dir-{m}/file-{m}.txt", m = self.marker)
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.lines * (self.marker.len() + 1)
    }

    /// Always false: the file has at least one line.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// What [`Self::write_script`] and [`Self::read_script`] print when the file is intact.
    pub fn expected_report(&self) -> String {
        format!("{} {}\n", self.lines, self.len())
    }

    /// Writes the file, flushes it, and reports it.
    pub fn write_script(&self) -> String {
        format!(
            "set -eu\nmkdir -p {MOUNT_PATH}/dir-{m}\ni=0\nwhile [ $i -lt {n} ]; do echo {m}; i=$((i+1)); done > {p}\nsync\n{report}",
            m = self.marker,
            n = self.lines,
            p = self.path(),
            report = self.report_line(),
        )
    }

    /// Reports the file without changing it.
    pub fn read_script(&self) -> String {
        format!("set -eu\n{}", self.report_line())
    }

    /// Reports the file, then keeps the volume in use until the pod is deleted.
    pub fn read_and_hold_script(&self) -> String {
        format!("set -eu\n{}\nexec sleep 3600", self.report_line())
    }

    fn report_line(&self) -> String {
        format!("echo \"$(grep -c {m} {p}) $(wc -c < {p})\"", m = self.marker, p = self.path())
    }
}

impl Default for Plaintext {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_match_their_types() {
        let pvc = claim("c", "sc", "1Gi", "ReadWriteMany");
        assert_eq!(pvc.spec.and_then(|s| s.storage_class_name).as_deref(), Some("sc"));
        let pod = shell_pod("p", "img", "node-a", "c", "true");
        let spec = pod.spec.expect("spec");
        assert_eq!(
            spec.node_selector.and_then(|s| s.get("kubernetes.io/hostname").cloned()).as_deref(),
            Some("node-a")
        );
        let sc = storage_class("s", json!({ "kmsConnection": "local" }));
        assert_eq!(sc.provisioner, DRIVER);
    }

    #[test]
    fn plaintext_report_counts_lines_and_bytes() {
        let text = Plaintext::new();
        assert_eq!(text.len(), 2000 * 39);
        assert_eq!(text.expected_report(), format!("2000 {}\n", 2000 * 39));
        assert!(text.write_script().contains(&text.path()));
    }
}
