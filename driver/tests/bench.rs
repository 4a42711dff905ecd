//! `cryptvol bench` end to end with a tiny size: every figure of every target is reported, and
//! is positive. Needs root and /dev/fuse, like the other mount tests.
#![allow(clippy::unwrap_used)]

use cryptvol::bench::{run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = BenchOptions::new(dir.path().to_path_buf());
    opts.size = 4 << 20;
    opts.repeat = 1;
    opts.skip_gocryptfs = true;
    opts.tree_files = Some(200);
    opts.files = 200;
    opts.random_ops = 100;
    opts.volumes = 3;
    opts.concurrent_creates = 5;
    let report = run(&opts).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();

    let figures = [
        "seq_write",
        "seq_read_cold",
        "small_write_4k",
        "rand_read_4k",
        "rand_write_4k",
        "tree_extract",
        "tree_ls_lR",
        "tree_read_all",
        "tree_rm_rf",
        "files_create",
        "files_stat",
        "files_delete",
    ];
    for target in ["plain", "cryptvol"] {
        for figure in figures {
            let value = json["targets"][target][figure]["median"].as_f64();
            assert!(value.is_some_and(|v| v > 0.0), "{target} {figure}: {value:?}");
        }
    }
    let csi = [
        "create_volume_median",
        "create_volume_p99",
        "node_stage_median",
        "node_stage_p99",
        "node_publish_median",
        "node_publish_p99",
        "create_volume_concurrent_total",
        "rss_idle",
        "rss_staged",
    ];
    for figure in csi {
        let value = json["csi"][figure]["median"].as_f64();
        assert!(value.is_some_and(|v| v > 0.0), "csi {figure}: {value:?}");
    }
    assert!(json["csi"]["rss_per_staged_volume"]["median"].is_f64());
    assert_eq!(json["settings"]["tree_files"], "200");
    assert_eq!(json["skipped"]["gocryptfs"], "--skip-gocryptfs given");
    for key in ["cpu", "cores", "kernel", "backing_fs"] {
        assert!(json["machine"][key].as_str().is_some_and(|v| !v.is_empty()), "machine {key}");
    }
    assert!(report.table().contains("seq_write"));
    // Nothing is left behind: no work directory, so no mount either.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
