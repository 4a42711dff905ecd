// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;
#[test]
#[ignore]
fn scratch() {
    let v = common::Volume::new();
    let cmd = std::env::var("CMD").unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&cmd)
        .env("MNT", v.path())
        .env("BACKING", v.backing())
        .output()
        .unwrap();
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
