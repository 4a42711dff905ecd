//! The Prometheus endpoint over loopback: a volume staged, written and read through the in-process
//! plugins moves the KMS, FUSE, byte and volume metrics. Needs root and /dev/fuse.
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::collections::HashMap;

use csi_harness::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One plain HTTP/1.1 GET over loopback; returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let content_type =
        head.lines().find_map(|l| l.strip_prefix("content-type: ")).unwrap_or_default().to_string();
    (status, content_type, body.to_string())
}

/// Samples of the exposition: `name{labels}` to value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_string(), value.parse().unwrap()))
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} is not exposed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_exposes_kms_fuse_byte_and_volume_metrics() {
    let server = cryptvol::metrics::serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    let (status, _, before) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let before = samples(&before);

    let mut h = Harness::start().await;
    let volume = h.create("pvc-metrics", "app").await.unwrap();
    let (staging, target) = (h.path("staging"), h.path("mnt"));
    h.stage(&volume, &staging).await.unwrap();
    h.publish(&volume, &staging, &target, false).await.unwrap();
    let file = target.join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let written = data.len() as f64;
    let back = tokio::task::spawn_blocking(move || {
        std::fs::write(&file, &data).unwrap();
        // A new open drops the page cache, so the read reaches the FUSE layer.
        let back = std::fs::read(&file).unwrap();
        assert!(std::fs::read(file.with_file_name("missing")).is_err());
        back == data
    })
    .await
    .unwrap();
    assert!(back);

    let (status, content_type, body) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(body.ends_with("# EOF\n"));
    // cryptvol_volumes_by_key_state has no series until the controller's reconciler sets it.
    for family in [
        "cryptvol_kms_calls",
        "cryptvol_kms_call_duration_seconds",
        "cryptvol_staged_volumes",
        "cryptvol_locked_volumes",
        "cryptvol_key_rotations",
        "cryptvol_fuse_operations",
        "cryptvol_fuse_errors",
        "cryptvol_bytes_encrypted",
        "cryptvol_bytes_decrypted",
        "cryptvol_authentication_failures",
    ] {
        assert!(body.contains(&format!("# TYPE {family} ")), "{family} is missing:\n{body}");
    }
    let after = samples(&body);
    let moved = |series: &str| value(&after, series) - before.get(series).copied().unwrap_or(0.0);
    assert!(moved("cryptvol_bytes_encrypted_total") >= written, "{body}");
    assert!(moved("cryptvol_bytes_decrypted_total") >= written, "{body}");
    assert!(moved("cryptvol_fuse_operations_total{op=\"write\"}") > 0.0);
    assert!(moved("cryptvol_fuse_operations_total{op=\"read\"}") > 0.0);
    assert!(moved("cryptvol_fuse_operations_total{op=\"lookup\"}") > 0.0);
    assert!(moved("cryptvol_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}") >= 1.0, "{body}");
    let decrypt = "cryptvol_kms_calls_total{operation=\"kms:Decrypt\",outcome=\"success\"}";
    assert!(moved(decrypt) >= 1.0, "{body}");
    let generate =
        "cryptvol_kms_calls_total{operation=\"kms:GenerateDataKeyWithoutPlaintext\",outcome=\"success\"}";
    assert!(moved(generate) >= 1.0, "{body}");
    assert!(moved("cryptvol_kms_call_duration_seconds_count{operation=\"kms:Decrypt\"}") >= 1.0);
    assert_eq!(value(&after, "cryptvol_staged_volumes"), 1.0);
    assert_eq!(value(&after, "cryptvol_locked_volumes{cause=\"key_revoked\"}"), 0.0);
    assert_eq!(value(&after, "cryptvol_authentication_failures_total{kind=\"block\"}"), 0.0);

    h.unpublish(&volume.volume_id, &target).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap();
    let (_, _, body) = get(addr, "/metrics").await;
    assert_eq!(value(&samples(&body), "cryptvol_staged_volumes"), 0.0);

    let (status, _, _) = get(addr, "/other").await;
    assert!(status.contains("404"), "{status}");
}
