//! Builds shared by the commands: the static agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run a command from the workspace root; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `landfall-agent` as the image ships it: release, statically linked
/// (glibc `crt-static`; `--target` keeps the flag off build scripts).
pub fn static_agent() -> Result<PathBuf> {
    eprintln!("xtask: building the static landfall-agent (release, {TARGET})");
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "landfall-agent",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let path = workspace_root().join(format!("target/{TARGET}/release/landfall-agent"));
    check_static(&path)?;
    Ok(path)
}

/// Refuse a binary that still needs the dynamic loader: the image has none to give it.
fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let needle = b"/lib64/ld-linux-x86-64.so";
    if bytes.windows(needle.len()).any(|w| w == needle) {
        bail!(
            "{} is dynamically linked; it must be static",
            path.display()
        );
    }
    Ok(())
}

/// The server binary (release) for the demo.
pub fn server_release() -> Result<PathBuf> {
    eprintln!("xtask: building the landfall server (release)");
    run(Command::new("cargo").args(["build", "--release", "-p", "landfall"]))?;
    Ok(workspace_root().join("target/release/landfall"))
}
