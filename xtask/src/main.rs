//! Developer commands: `./x demo`, `./x test`, `./x bench`.

mod bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bench", "detect"] => bench::detect::run(),
        _ => anyhow::bail!("usage: xtask (demo | test | bench [detect])"),
    }
}
