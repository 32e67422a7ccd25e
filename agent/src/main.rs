//! landfall-agent: thin CLI over the library. Prints the whole error chain and
//! exits non-zero on failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use landfall_agent::cmdline::{AgentConfig, ConsoleMode, FinalAction, Overrides};
use landfall_agent::{disk, hw, pipeline, report::Console};

#[derive(Parser)]
#[command(name = "landfall-agent", version, about = "landfall installer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the hardware inventory.
    Detect {
        /// Print JSON (the `Inventory` type of the protocol).
        #[arg(long)]
        json: bool,
        /// Read sysfs/procfs from this directory instead of `/` (captured trees).
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
    },
    /// Print what `apply` would do with a disko layout. Pure: touches nothing.
    Plan {
        /// Layout: rendered JSON, or a .nix file (rendered with nix-instantiate).
        #[arg(long)]
        layout: PathBuf,
        /// Map a layout disk to a device (or "auto"): NAME=DEV. Repeatable.
        #[arg(long = "disk", value_parser = parse_kv)]
        disks: Vec<(String, String)>,
        /// Plan for a hypothetical disk of this size: NAME=SIZE (e.g. main=20G).
        #[arg(long = "size", value_parser = parse_kv)]
        sizes: Vec<(String, String)>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Partition, format and mount the disks of a disko layout under --root.
    Apply {
        #[arg(long)]
        layout: PathBuf,
        #[arg(long = "disk", value_parser = parse_kv)]
        disks: Vec<(String, String)>,
        /// Overwrite disks that hold data (partition tables, filesystems, LUKS, RAID/LVM members).
        #[arg(long)]
        wipe: bool,
        #[arg(long, default_value = "/mnt")]
        root: PathBuf,
        /// Make but do not mount filesystems of this format (kernels without it). Repeatable.
        #[arg(long = "no-mount")]
        no_mount: Vec<String>,
        /// Write LUKS headers but do not open them (hosts without device-mapper).
        #[arg(long)]
        no_open_luks: bool,
        /// Print the result (read-back and NixOS configuration) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install this machine: what the installer image's service runs.
    Run {
        /// Server URL (default: `landfall.server=` from the kernel command line).
        #[arg(long)]
        server: Option<String>,
        /// Boot token (default: `landfall.token=` from the kernel command line).
        #[arg(long)]
        token: Option<String>,
        #[arg(long, value_enum)]
        final_action: Option<FinalAction>,
        #[arg(long, value_enum)]
        console: Option<ConsoleMode>,
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Optional file with `landfall.KEY=VALUE` words baked into the image.
        #[arg(long, default_value = "/etc/landfall/agent.conf")]
        config: PathBuf,
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run { .. }));
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("landfall-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plan {
            layout,
            disks,
            sizes,
            json,
        } => {
            let rt = runtime()?;
            let layout = rt.block_on(disk::load_layout(&layout))?;
            let targets = disk::cli_targets(
                &layout,
                &disks.into_iter().collect(),
                &sizes.into_iter().collect(),
            )?;
            let plan = disk::plan(&layout, &targets)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{plan}");
            }
            Ok(())
        }
        Command::Apply {
            layout,
            disks,
            wipe,
            root,
            no_mount,
            no_open_luks,
            json,
        } => {
            let rt = runtime()?;
            let layout = rt.block_on(disk::load_layout(&layout))?;
            let targets =
                disk::cli_targets(&layout, &disks.into_iter().collect(), &Default::default())?;
            let plan = disk::plan(&layout, &targets)?;
            let opts = disk::ApplyOptions {
                root,
                wipe,
                no_mount_formats: no_mount,
                open_luks: !no_open_luks,
                progress: Some(std::sync::Arc::new(|e: &disk::OpEvent| {
                    eprintln!("[{}/{}] {:?}: {}", e.index, e.total, e.state, e.what)
                })),
                ..Default::default()
            };
            let applied = rt.block_on(disk::apply(&plan, &opts))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "disks": applied.disks,
                        "verified": applied.verified,
                        "nixos": applied.nixos,
                    }))?
                );
            } else {
                print!("{}", applied.nixos.to_nix());
            }
            applied.keep();
            Ok(())
        }
        Command::Detect { json, sysroot } => {
            let _ = json; // JSON is the only output format so far.
            println!("{}", serde_json::to_string_pretty(&hw::detect(&sysroot)?)?);
            Ok(())
        }
        Command::Run {
            server,
            token,
            final_action,
            console,
            cmdline,
            config,
            sysroot,
        } => {
            let cfg = AgentConfig::load(
                &config,
                &cmdline,
                Overrides {
                    server,
                    token,
                    final_action,
                    console,
                },
            )?;
            let rt = runtime()?;
            let opts = pipeline::RunOptions {
                sysroot,
                ..Default::default()
            };
            let console = Console::system(cfg.console, pipeline::STEPS);
            let mut outcome = rt.block_on(pipeline::run(&cfg, &opts, console))?;
            if let Some(disks) = outcome.disks.take() {
                rt.block_on(disks.close())?;
            }
            tracing::info!(
                attempt = %outcome.attempt_id,
                "installed {} ({} events acknowledged)",
                outcome.hostname,
                outcome.last_seq
            );
            pipeline::final_action(cfg.final_action)
        }
    }
}

/// journald when present, else stderr. `run` keeps stderr to warnings because
/// the console already shows every step; LANDFALL_LOG overrides the filter.
fn init_logging(run: bool) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let default = if run { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_env("LANDFALL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        if let Ok(layer) = tracing_journald::layer() {
            let filter =
                EnvFilter::try_from_env("LANDFALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
            tracing_subscriber::registry()
                .with(layer.with_filter(filter))
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
}
