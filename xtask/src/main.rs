//! Developer commands behind `./x`: `demo`, `test`, `bench`, `fuzz`.

mod bench;
mod build;
mod demo;
mod fuzz;
mod nixcheck;
mod test;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv.as_slice() {
        ["test"] => test::run_all(),
        ["nixcheck"] => nixcheck::run(),
        ["demo", rest @ ..] => demo::run(rest),
        ["bench", rest @ ..] => bench::run(rest),
        ["fuzz", rest @ ..] => fuzz::run(rest),
        _ => Err(anyhow::anyhow!(
            "usage: ./x (demo [--bios|--uefi] | test | nixcheck | bench [detect] [size] [vm] [disks] [netboot] [ui] [artifacts] [storm [N]] | fuzz [--seconds N] [TARGET...])"
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
