//! Builds and process helpers shared by the commands.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    landfall_vm_tests::agent::workspace_root()
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

/// `landfall-agent` as the image ships it (release, static), in `target/`.
pub fn static_agent() -> Result<PathBuf> {
    landfall_vm_tests::agent::build_static_agent(&workspace_root().join("target"))
}

/// The server binary (release) for the demo.
pub fn server_release() -> Result<PathBuf> {
    eprintln!("xtask: building the landfall server (release)");
    run(Command::new("cargo").args(["build", "--release", "-p", "landfall"]))?;
    Ok(workspace_root().join("target/release/landfall"))
}
