//! `landfall-agent plan ... | head`: a reader that goes away ends the command
//! normally, without a panic (issue 10 item 15).

use std::process::{Command, Stdio};

const LAYOUT: &str = r#"{"disk": {"main": {"device": "auto", "content": {"type": "gpt", "partitions": {
  "ESP": {"type": "EF00", "size": "500M", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
  "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}"#;

fn plan() -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout.json");
    std::fs::write(&layout, LAYOUT).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_landfall-agent"));
    c.arg("plan")
        .arg("--layout")
        .arg(&layout)
        .args(["--size", "main=20G"]);
    (c, dir)
}

#[test]
fn plan_into_a_closed_pipe_exits_zero_without_a_panic() {
    // It does print: the closed pipe below is really written to.
    let (mut c, _dir) = plan();
    let full = c.output().unwrap();
    assert!(full.status.success(), "{full:?}");
    assert!(!full.stdout.is_empty());

    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let (mut c, _dir) = plan();
    let r = c
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(r.status.success(), "{:?}: {stderr}", r.status);
}
