//! `./x test`: formatting, lints, then every test (unit, API, fixtures,
//! privileged and VM tests: CI runs as root, nothing is skipped).

use anyhow::Result;

use crate::build::{run, static_agent, Cmd};

pub fn run_all() -> Result<()> {
    eprintln!("xtask: cargo fmt --check");
    run(Cmd::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    eprintln!("xtask: cargo clippy -D warnings");
    run(Cmd::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::nixcheck::run()?;
    let agent = static_agent()?;
    eprintln!("xtask: cargo test (VM tests use {})", agent.display());
    run(Cmd::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("LANDFALL_TEST_AGENT", &agent))?;
    // The server suite again with its servers on PostgreSQL (a throwaway
    // cluster, server/tests/common/pg.rs): both store backends pass it.
    eprintln!("xtask: cargo test -p landfall on PostgreSQL (LANDFALL_TEST_DATABASE=postgres)");
    run(Cmd::new("cargo")
        .args(["test", "-p", "landfall", "--no-fail-fast"])
        .env("LANDFALL_TEST_DATABASE", "postgres"))?;
    Ok(())
}
