//! landfall-agent: thin CLI over the library. Prints the whole error chain and
//! exits non-zero on failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use landfall_agent::cmdline::{AgentConfig, ConsoleMode, FinalAction, Overrides};
use landfall_agent::{disk, hw, pipeline, report::Console, secrets};

#[derive(Parser)]
#[command(name = "landfall-agent", version, about = "landfall installer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the hardware inventory: a summary, or JSON with --json.
    Detect {
        /// Print JSON (the `Inventory` type of the protocol).
        #[arg(long)]
        json: bool,
        /// Read sysfs/procfs from this directory instead of `/` (captured trees).
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
    },
    /// Print the hardware-configuration.nix the install would write for this
    /// machine (or a captured --sysroot), with the storage of --layout.
    Hwconfig {
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
        /// Layout for fileSystems/swapDevices/LUKS and the GRUB disk.
        #[arg(long)]
        layout: Option<PathBuf>,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Print what `apply` would do with a disko layout. Pure: touches nothing.
    Plan {
        /// Layout: rendered JSON, or a .nix file (rendered with nix-instantiate).
        #[arg(long)]
        layout: PathBuf,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        unlock: UnlockArgs,
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
        /// An extra `cryptsetup luksFormat` argument, before the device
        /// (tests and benchmarks on emulated CPUs: `--pbkdf pbkdf2`). Repeatable.
        #[arg(long = "luks-format-arg", allow_hyphen_values = true)]
        luks_format_args: Vec<String>,
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Print the result (read-back and NixOS configuration) as JSON, and
        /// progress as JSON lines on stderr.
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
        /// The age secrets bundle (default: `landfall.bundle=` from the kernel
        /// command line, then agent.conf, then /etc/landfall/secrets.age).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Optional file with `landfall.KEY=VALUE` words baked into the image.
        #[arg(long, default_value = "/etc/landfall/agent.conf")]
        config: PathBuf,
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
    },
    /// First boot of the installed system: check the role's services and
    /// report them (exit 0: all ok, 1: a check failed, 2: reporting failed).
    Verify {
        /// Written at install time: server, verify token, checks.
        #[arg(long, default_value = "/etc/landfall/verify.json")]
        config: PathBuf,
        /// The NixOS module's checks (`landfall.verify.checks`).
        #[arg(long)]
        checks: Option<PathBuf>,
        /// Run the checks only; do not report (the config may be absent).
        #[arg(long)]
        no_report: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds failing checks are retried (default: from the checks file, else 0).
        #[arg(long)]
        timeout: Option<u64>,
        /// Keep the config after the server answered `ready` (it is removed otherwise).
        #[arg(long)]
        keep_config: bool,
    },
    /// Secrets bundles: age-encrypted tars for installs without Vault.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Encrypt the regular files under a directory into a bundle.
    Create {
        /// Directory whose files (recursively) go into the bundle.
        #[arg(long)]
        from: PathBuf,
        /// Encrypt to the passphrase in this file (asked at the console at install).
        #[arg(
            long,
            conflicts_with = "recipients",
            required_unless_present = "recipients"
        )]
        passphrase_file: Option<PathBuf>,
        /// Encrypt to this age public key (age1...). Repeatable.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        /// Where to write the bundle (e.g. the image's /etc/landfall/secrets.age).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print `SIZE  PATH` of every file in a bundle (never the contents).
    List {
        file: PathBuf,
        #[command(flatten)]
        unlock: Unlock,
    },
}

/// How to unlock a bundle: exactly one way.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct Unlock {
    /// An age identity file (AGE-SECRET-KEY-1...).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// A file holding the passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Ask for the passphrase on this terminal (echo off, 3 tries). Repeatable.
    #[arg(long = "prompt-tty")]
    prompt_ttys: Vec<PathBuf>,
}

impl Unlock {
    fn source(self) -> secrets::IdentitySource {
        match (self.identity, self.passphrase_file) {
            (Some(i), _) => secrets::IdentitySource::IdentityFile(i),
            (None, Some(p)) => secrets::IdentitySource::PassphraseFile(p),
            (None, None) => secrets::IdentitySource::Prompt(self.prompt_ttys),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run { .. }));
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `landfall-agent plan ... | head`: the reader has what it wanted.
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("landfall-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Standard output's reader went away (EPIPE): not a failure of the command.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct StdoutClosed;

/// Write `text` to standard output (never `println!`, which panics on EPIPE).
fn out(text: impl std::fmt::Display) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match write!(o, "{text}").and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Which device each layout disk is, for commands that plan without applying.
#[derive(Args)]
struct TargetArgs {
    /// Map a layout disk to a device (or "auto"): NAME=DEV. Repeatable.
    #[arg(long = "disk", value_parser = parse_kv)]
    disks: Vec<(String, String)>,
    /// Plan for a hypothetical disk of this size: NAME=SIZE (e.g. main=20G).
    #[arg(long = "size", value_parser = parse_kv)]
    sizes: Vec<(String, String)>,
}

impl TargetArgs {
    fn resolve(self, layout: &disk::Layout) -> Result<BTreeMap<String, disk::Target>> {
        disk::cli_targets(
            layout,
            &self.disks.into_iter().collect(),
            &self.sizes.into_iter().collect(),
        )
    }
}

/// How the installed system unlocks LUKS (the role's `luks_unlock`, docs/disks.md).
#[derive(Args)]
struct UnlockArgs {
    /// initrd_key (default), prompt or tpm2 (tpm2 adds a systemd-cryptenroll
    /// operation after each luksFormat).
    #[arg(long, default_value = "initrd_key", value_parser = parse_unlock)]
    luks_unlock: landfall_proto::LuksUnlock,
    /// With --luks-unlock tpm2: the PCRs to seal to, e.g. 7 or 0+7; "" for the TPM alone.
    #[arg(long, default_value = "7", value_parser = parse_pcrs)]
    tpm2_pcrs: Pcrs,
}

#[derive(Clone)]
struct Pcrs(Vec<u8>);

impl UnlockArgs {
    fn apply(self, plan: &mut disk::Plan, layout: &disk::Layout) -> Result<()> {
        plan.set_luks_unlock(layout, self.luks_unlock, &self.tpm2_pcrs.0)
    }
}

fn parse_unlock(s: &str) -> Result<landfall_proto::LuksUnlock, String> {
    use landfall_proto::LuksUnlock;
    match s {
        "initrd_key" => Ok(LuksUnlock::InitrdKey),
        "prompt" => Ok(LuksUnlock::Prompt),
        "tpm2" => Ok(LuksUnlock::Tpm2),
        _ => Err(format!("{s:?}: use initrd_key, prompt or tpm2")),
    }
}

fn parse_pcrs(s: &str) -> Result<Pcrs, String> {
    s.split(['+', ','])
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().parse::<u8>() {
            Ok(n) if n <= 23 => Ok(n),
            _ => Err(format!(
                "{p:?} is not a PCR number (0 to 23); e.g. 7 or 0+7"
            )),
        })
        .collect::<Result<_, _>>()
        .map(Pcrs)
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
        Command::Bundle { command } => bundle(command),
        Command::Verify {
            config,
            checks,
            no_report,
            json,
            timeout,
            keep_config,
        } => {
            use landfall_agent::install::verify;
            let mut opts = verify::VerifyOptions::new(config);
            opts.checks_file = checks;
            opts.report = !no_report;
            opts.timeout = timeout;
            opts.keep_config = keep_config;
            let checked = match runtime().and_then(|rt| rt.block_on(verify::verify(&opts))) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("landfall-agent: error: {e:#}");
                    std::process::exit(2);
                }
            };
            // A closed stdout does not change the checks' exit code.
            let printed = if json {
                out(format_args!(
                    "{}\n",
                    serde_json::to_string_pretty(&checked)?
                ))
            } else {
                let r = out(verify::table(&checked.checks));
                match (&checked.state, &checked.report_error) {
                    (Some(state), _) => r.and_then(|()| {
                        out(format_args!(
                            "reported: the server marked this machine {state}\n"
                        ))
                    }),
                    (None, Some(e)) => {
                        eprintln!("landfall-agent: error: {e}");
                        r
                    }
                    (None, None) => r,
                }
            };
            match printed {
                Err(e) if !e.is::<StdoutClosed>() => eprintln!("landfall-agent: error: {e:#}"),
                _ => {}
            }
            std::process::exit(checked.exit_code.into())
        }
        Command::Plan {
            layout,
            targets,
            unlock,
            json,
        } => {
            let rt = runtime()?;
            let layout = rt.block_on(disk::load_layout(&layout))?;
            let targets = targets.resolve(&layout)?;
            let mut plan = disk::plan(&layout, &targets)?;
            unlock.apply(&mut plan, &layout)?;
            if json {
                out(format_args!("{}\n", serde_json::to_string_pretty(&plan)?))
            } else {
                out(plan)
            }
        }
        Command::Apply {
            layout,
            disks,
            wipe,
            root,
            no_mount,
            no_open_luks,
            luks_format_args,
            unlock,
            json,
        } => {
            let rt = runtime()?;
            let layout = rt.block_on(disk::load_layout(&layout))?;
            let targets =
                disk::cli_targets(&layout, &disks.into_iter().collect(), &Default::default())?;
            let mut plan = disk::plan(&layout, &targets)?;
            unlock.apply(&mut plan, &layout)?;
            let opts = disk::ApplyOptions {
                root,
                wipe,
                no_mount_formats: no_mount,
                open_luks: !no_open_luks,
                luks_format_args,
                // One line per operation event on stderr: JSON lines with --json.
                progress: Some(std::sync::Arc::new(move |e: &disk::OpEvent| {
                    if json {
                        if let Ok(line) = serde_json::to_string(e) {
                            eprintln!("{line}");
                        }
                    } else {
                        let state = match e.state {
                            disk::OpState::Started => "started".to_owned(),
                            disk::OpState::Done { millis } => format!("done in {millis} ms"),
                            disk::OpState::Skipped { because } => format!("skipped ({because})"),
                            disk::OpState::Failed => "FAILED".to_owned(),
                        };
                        eprintln!("[{}/{}] {state}: {}", e.index, e.total, e.what)
                    }
                })),
                ..Default::default()
            };
            let applied = rt.block_on(disk::apply(&plan, &opts))?;
            let text = if json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "disks": applied.disks,
                    "read_back": applied.read_back,
                    "nixos": applied.nixos,
                }))
                .map(|j| j + "\n")
            } else {
                Ok(applied.nixos.to_nix())
            };
            // Mounted and open before anything is printed: a closed stdout
            // must not unmount what was applied.
            applied.leak();
            out(text?)
        }
        Command::Hwconfig {
            sysroot,
            layout,
            targets,
            unlock,
        } => {
            let inv = hw::detect(&sysroot)?;
            let storage = match layout {
                None => disk::NixosConfig::default(),
                Some(layout) => {
                    let rt = runtime()?;
                    let layout = rt.block_on(disk::load_layout(&layout))?;
                    let mut targets = targets.resolve(&layout)?;
                    // The installed system names disks by id, as the agent does.
                    for t in targets.values_mut() {
                        if t.by_id.is_none() {
                            t.by_id = inv
                                .disks
                                .iter()
                                .find(|d| d.path == t.device)
                                .and_then(|d| d.by_id.clone());
                        }
                    }
                    let mut plan = disk::plan(&layout, &targets)?;
                    unlock.apply(&mut plan, &layout)?;
                    plan.nixos
                }
            };
            out(landfall_agent::install::configure::hardware_file(
                &inv, &storage,
            ))
        }
        Command::Detect { json, sysroot } => {
            let inv = hw::detect(&sysroot)?;
            if json {
                out(format_args!("{}\n", serde_json::to_string_pretty(&inv)?))
            } else {
                out(hw::describe(&inv))
            }
        }
        Command::Run {
            server,
            token,
            final_action,
            console,
            bundle,
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
                    bundle,
                },
            )?;
            let rt = runtime()?;
            // agent.conf < kernel command line, for the words the steps read
            // themselves (state_dir, vault_role_id, secrets_identity, ...).
            let words = landfall_agent::cmdline::layered_text(
                &std::fs::read_to_string(&config).unwrap_or_default(),
                &std::fs::read_to_string(&cmdline).unwrap_or_default(),
            );
            let opts = pipeline::RunOptions {
                sysroot,
                state_dir: pipeline::state_dir_from(std::env::var_os("LANDFALL_STATE_DIR"), &words),
                cmdline: words,
                ..Default::default()
            };
            let console = Console::system(cfg.console, &pipeline::console_steps());
            let outcome = rt.block_on(pipeline::run(&cfg, &opts, console))?;
            if outcome.stopped {
                tracing::warn!(
                    attempt = %outcome.attempt_id,
                    "the install of {} failed and the operator asked for a reinstall",
                    outcome.hostname
                );
                // The next PXE boot starts over; `none` (tests) just exits.
                return pipeline::final_action(cfg.final_action);
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

/// `landfall-agent bundle ...`: operators' tools; never prints a secret.
fn bundle(command: BundleCommand) -> Result<()> {
    use anyhow::Context;
    use secrets::bundle;
    match command {
        BundleCommand::Create {
            from,
            passphrase_file,
            recipients,
            output,
        } => {
            let to = match passphrase_file {
                Some(p) => bundle::Recipients::Passphrase(bundle::read_passphrase_file(&p)?),
                None => bundle::Recipients::Keys(recipients),
            };
            let bytes = bundle::create(&from, &to)?;
            std::fs::write(&output, bytes).with_context(|| format!("writing {}", output.display()))
        }
        BundleCommand::List { file, unlock } => {
            let b = secrets::open_bundle(&file, &unlock.source())?;
            for (path, size) in b.entries() {
                out(format_args!("{size:>10}  {path}\n"))?;
            }
            Ok(())
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
