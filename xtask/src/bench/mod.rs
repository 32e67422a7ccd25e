//! `./x bench`: commands that print ratios and figures against baselines
//! measured in the same run (not timed tests).

pub mod artifacts;
pub mod detect;
pub mod disks;
pub mod storm;

use anyhow::Result;

use crate::build::{self, Cmd};

/// Static agent size against its budget.
const AGENT_BUDGET: u64 = 12 << 20;

pub fn run(which: &[&str]) -> Result<()> {
    let all = which.is_empty();
    if all || which.contains(&"artifacts") {
        artifacts::run()?;
    }
    if let Some(i) = which.iter().position(|w| *w == "storm") {
        // `storm [N]`: N machines.
        let n = match which
            .get(i + 1)
            .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        {
            Some(n) => n.parse().map_err(|e| anyhow::anyhow!("storm N: {e}"))?,
            None => storm::DEFAULT_MACHINES,
        };
        storm::run(n)?;
    } else if all {
        storm::run(storm::DEFAULT_MACHINES)?;
    }
    // Only the benches that run the agent build it.
    let agent = if all
        || which
            .iter()
            .any(|w| ["detect", "disks", "size", "vm"].contains(w))
    {
        build::static_agent()?
    } else {
        Default::default()
    };
    if all || which.contains(&"detect") {
        detect::run(&agent)?;
    }
    if all || which.contains(&"disks") {
        disks::run(&agent)?;
    }
    if all || which.contains(&"size") {
        let size = std::fs::metadata(&agent)?.len();
        println!(
            "bench size: static landfall-agent {:.2} MiB = {:.0}% of the 12 MiB budget",
            size as f64 / (1 << 20) as f64,
            100.0 * size as f64 / AGENT_BUDGET as f64
        );
    }
    if all || which.contains(&"netboot") {
        // Root: network namespaces; release: the server as it runs.
        build::run(
            Cmd::new("cargo")
                .args([
                    "test",
                    "--quiet",
                    "--release",
                    "-p",
                    "landfall",
                    "--test",
                    "netboot_bench",
                    "--",
                    "--nocapture",
                ])
                .env("LANDFALL_BENCH", "full"),
        )?;
    }
    if all || which.contains(&"ui") {
        // Release: the server as it runs; the fleet page and the live
        // viewers' cost to event ingestion (server/tests/dashboard_bench.rs).
        build::run(
            Cmd::new("cargo")
                .args([
                    "test",
                    "--quiet",
                    "--release",
                    "-p",
                    "landfall",
                    "--test",
                    "dashboard_bench",
                    "--",
                    "--nocapture",
                ])
                .env("LANDFALL_BENCH", "full"),
        )?;
    }
    if all || which.contains(&"vm") {
        println!(
            "bench vm: the BIOS install VM test, QEMU start -> installed -> first boot ready, time per step (printed by the test)"
        );
        build::run(
            Cmd::new("cargo")
                .args([
                    "test",
                    "--quiet",
                    "-p",
                    "landfall-vm-tests",
                    "--test",
                    "install",
                    "bios_machine",
                    "--",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(landfall_vm_tests::agent::AGENT_ENV, &agent),
        )?;
    }
    Ok(())
}
