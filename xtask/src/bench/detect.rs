//! `cargo xtask bench detect`: landfall-agent detect vs `lshw -json`.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench detect: not written yet")
}
