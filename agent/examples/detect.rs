//! Print the inventory of this machine (or of `--sysroot DIR`) as JSON.
//! `--bench N` prints the mean in-process time of N runs in nanoseconds
//! (used by `cargo xtask bench detect`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut sysroot = PathBuf::from("/");
    let mut bench: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => {}
            "--sysroot" => {
                sysroot = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--sysroot needs a directory"))?
                    .into()
            }
            "--bench" => {
                bench = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--bench needs a count"))?
                        .parse()?,
                )
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if let Some(n) = bench {
        // In-process cost of detect + JSON, without process start-up.
        let start = std::time::Instant::now();
        for _ in 0..n.max(1) {
            std::hint::black_box(landfall_agent::hw::detect_json(&sysroot)?);
        }
        let mean = start.elapsed() / n.max(1);
        println!("{}", mean.as_nanos());
        return Ok(());
    }
    println!("{}", landfall_agent::hw::detect_json(&sysroot)?);
    Ok(())
}
