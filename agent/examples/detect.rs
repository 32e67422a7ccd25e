//! Print the inventory of this machine (or of `--sysroot DIR`) as JSON.
//! Used by `cargo xtask bench detect` until the CLI grows `detect --json`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut sysroot = PathBuf::from("/");
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
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    println!("{}", landfall_agent::hw::detect_json(&sysroot)?);
    Ok(())
}
