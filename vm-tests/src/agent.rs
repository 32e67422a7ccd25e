//! The static `landfall-agent` the test image ships, built the way the real
//! image gets it: release, `+crt-static`, with an explicit `--target` so the
//! flag stays off build scripts and proc macros.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Environment variable naming an already built static agent (`./x test` sets it).
pub const AGENT_ENV: &str = "LANDFALL_TEST_AGENT";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-tests lives in the workspace")
        .to_path_buf()
}

/// The agent named by `LANDFALL_TEST_AGENT`, or a fresh release build.
pub fn static_agent() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "{AGENT_ENV}={} does not exist: unset it or build the agent first",
                p.display()
            );
        }
        return Ok(p);
    }
    // Not the workspace's own target dir: `cargo test` may hold its lock.
    build_static_agent(&workspace_root().join("target/vm-agent"))
}

/// `cargo build --release --target x86_64-unknown-linux-gnu -p landfall-agent`
/// with `+crt-static`, into `target_dir` (the image builder refuses a dynamic binary).
pub fn build_static_agent(target_dir: &Path) -> Result<PathBuf> {
    eprintln!("building the static landfall-agent (release, {TARGET})");
    crate::cmd::Cmd::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "landfall-agent",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // A compile cache (sccache) as the wrapper has produced a static agent
        // that segfaulted at start: this binary is always built by rustc itself.
        .env("RUSTC_WRAPPER", "")
        .run_blocking()?;
    Ok(target_dir.join(format!("{TARGET}/release/landfall-agent")))
}
