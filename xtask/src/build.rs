//! Builds and process helpers shared by the commands.

use std::path::PathBuf;

use anyhow::Result;
pub use landfall_cmd::Cmd;

pub fn workspace_root() -> PathBuf {
    landfall_vm_tests::agent::workspace_root()
}

/// Run a command from the workspace root, its output on the terminal; a
/// non-zero exit is an error naming it.
pub fn run(cmd: Cmd) -> Result<()> {
    Ok(cmd.current_dir(workspace_root()).status_blocking()?)
}

/// Run `argv` to completion and return its stdout; a non-zero exit is an
/// error with the command line and stderr's tail.
pub fn output(argv: &[&str]) -> Result<String> {
    Ok(Cmd::new(argv[0]).args(&argv[1..]).run_blocking()?.stdout)
}

/// `landfall-agent` as the image ships it (release, static), in `target/`; or the
/// one `LANDFALL_TEST_AGENT` names (already built, e.g. by a VM test run).
pub fn static_agent() -> Result<PathBuf> {
    if std::env::var_os(landfall_vm_tests::agent::AGENT_ENV).is_some() {
        return landfall_vm_tests::agent::static_agent();
    }
    landfall_vm_tests::agent::build_static_agent(&workspace_root().join("target"))
}

/// The server binary (release) for the demo.
pub fn server_release() -> Result<PathBuf> {
    eprintln!("xtask: building the landfall server (release)");
    run(Cmd::new("cargo").args(["build", "--release", "-p", "landfall"]))?;
    Ok(workspace_root().join("target/release/landfall"))
}
