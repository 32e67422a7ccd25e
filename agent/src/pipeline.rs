//! The install pipeline: the ordered list of typed steps. Nothing else
//! decides order. Each step's result is handed to the next as a value.
//!
//! Now: detect -> register -> disks -> done. Later issues add secrets,
//! configure, install and finish between disks and done.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use landfall_proto::{EventKind, HelloRequest, HelloResponse, Inventory, Step, PROTOCOL_VERSION};

use crate::cmdline::{AgentConfig, FinalAction};
use crate::report::{Client, Console, Outbox, Reporter};
use crate::retry::{Attempt, Retry, RetryError};

/// The steps this agent runs, with what the console shows for each.
pub const STEPS: &[(Step, &str)] = &[
    (Step::Detect, "Detect hardware"),
    (Step::Register, "Register with the server"),
    (Step::Secrets, "Fetch secrets"),
    (Step::Disks, "Partition, format and mount disks"),
    (
        Step::Configure,
        "Place secrets and configuration in the target",
    ),
    (Step::Done, "Report the result"),
];

/// How long the terminal event may wait for the server's ack.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(300);

pub struct RunOptions {
    /// Root of the machine to inventory ("/" in the installer image).
    pub sysroot: PathBuf,
    /// Retry policy for `hello` while the server is unreachable.
    pub hello_retry: Retry,
    pub final_ack_timeout: Duration,
    /// The kernel command line's text (`landfall.vault_role_id=`, ...).
    pub cmdline: String,
    /// Where the image carries its own files: `vault-role-id`, `vault-ca.pem`.
    pub etc_dir: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            sysroot: PathBuf::from("/"),
            hello_retry: Retry {
                initial: Duration::from_millis(500),
                cap: Duration::from_secs(10),
                max_tries: Some(40),
            },
            final_ack_timeout: FINAL_ACK_TIMEOUT,
            cmdline: String::new(),
            etc_dir: PathBuf::from("/etc/landfall"),
        }
    }
}

/// What a finished run did.
#[derive(Debug)]
pub struct Outcome {
    pub attempt_id: String,
    pub hostname: String,
    pub last_seq: u64,
    /// The disk step's result: mounts under /mnt stay mounted (and LUKS
    /// open) until `Applied::close()` (or drop). `None`: no layout assigned.
    pub disks: Option<crate::disk::Applied>,
}

/// Run the whole pipeline. On a step's failure the failure is reported (when
/// the server knows the attempt) and returned.
pub async fn run(cfg: &AgentConfig, opts: &RunOptions, console: Console) -> Result<Outcome> {
    let client = Client::new(&cfg.server)?;
    let reporter = Reporter::new(Outbox::new(), console);
    reporter.console().set_server(&cfg.server);
    let ticker = spawn_ticker(reporter.clone());

    let result = steps(cfg, opts, &client, &reporter).await;
    let outcome = match result {
        Ok(outcome) => {
            reporter.emit(
                Step::Done,
                EventKind::Finished,
                "install finished",
                Some(1.0),
                None,
            );
            reporter
                .console()
                .note("waiting for the server to acknowledge every event");
            reporter.outbox.flush(opts.final_ack_timeout).await?;
            Ok(Outcome {
                last_seq: reporter.outbox.last_seq(),
                ..outcome
            })
        }
        Err(StepFailure { step, error }) => {
            let message = format!("{error:#}");
            if reporter.outbox.is_bound() {
                let mut data = serde_json::json!({ "step": step, "error": message });
                if let Some(serde_json::Value::Object(extra)) = failure_data(&error) {
                    data.as_object_mut().expect("an object").extend(extra);
                }
                reporter.emit(
                    Step::Done,
                    EventKind::Failed,
                    format!("{step} failed: {message}"),
                    None,
                    Some(data),
                );
                if let Err(e) = reporter.outbox.flush(opts.final_ack_timeout).await {
                    tracing::warn!("{e:#}");
                }
            }
            Err(error.context(format!("step {step} failed")))
        }
    };
    ticker.abort();
    outcome
}

struct StepFailure {
    step: Step,
    error: anyhow::Error,
}

/// Run one step: `started`, then `finished` with the step's summary, or `failed`.
async fn step<T>(
    reporter: &Reporter,
    step: Step,
    start_message: &str,
    work: impl std::future::Future<Output = Result<(T, String)>>,
) -> Result<T, StepFailure> {
    reporter.emit(step, EventKind::Started, start_message, Some(0.0), None);
    match work.await {
        Ok((value, summary)) => {
            reporter.emit(step, EventKind::Finished, summary, Some(1.0), None);
            Ok(value)
        }
        Err(error) => {
            let data = failure_data(&error);
            reporter.emit(step, EventKind::Failed, format!("{error:#}"), None, data);
            Err(StepFailure { step, error })
        }
    }
}

/// What a failed event carries besides its message: `{"security": true}` for
/// an interception alarm, so the server marks the machine compromised.
fn failure_data(error: &anyhow::Error) -> Option<serde_json::Value> {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::secrets::SecretsError>())
        .filter(|e| e.is_security_alarm())
        .map(|e| e.event_data())
}

async fn steps(
    cfg: &AgentConfig,
    opts: &RunOptions,
    client: &Client,
    reporter: &Reporter,
) -> Result<Outcome, StepFailure> {
    let inventory = step(reporter, Step::Detect, "detecting hardware", detect(opts)).await?;
    reporter.console().set_ip(primary_ip(&inventory));

    let hello = step(
        reporter,
        Step::Register,
        &format!("registering with {}", cfg.server),
        register(cfg, opts, client, reporter, inventory.clone()),
    )
    .await?;

    let from_bundle = hello
        .assignment
        .secret_files
        .iter()
        .any(|f| f.from.starts_with("bundle:"));
    let fetched = match (&hello.assignment.vault, from_bundle) {
        (Some(vault), _) => Some(
            step(
                reporter,
                Step::Secrets,
                &format!("fetching secrets from {}", vault.address),
                secrets_step(opts, vault, &hello.assignment),
            )
            .await?,
        ),
        (None, true) => Some(
            step(
                reporter,
                Step::Secrets,
                "opening the installer's age bundle",
                bundle_step(opts, reporter, &hello.assignment),
            )
            .await?,
        ),
        (None, false) => {
            reporter.emit(
                Step::Secrets,
                EventKind::Finished,
                "no secrets assigned",
                Some(1.0),
                None,
            );
            None
        }
    };
    // LUKS keys named by the layout come from the secrets, never from argv.
    let target_root = crate::disk::ApplyOptions::default().root;
    let keys = crate::disk::apply::Keys {
        by_path: fetched.as_ref().map(luks_keys).unwrap_or_default(),
    };

    let disks = match &hello.assignment.disko {
        None => {
            reporter.emit(
                Step::Disks,
                EventKind::Finished,
                "no layout assigned: disks left as they are",
                Some(1.0),
                None,
            );
            None
        }
        Some(layout) => Some(
            step(
                reporter,
                Step::Disks,
                &format!(
                    "preparing disks from layout {}",
                    hello.assignment.layout.as_deref().unwrap_or("(unnamed)")
                ),
                disk_step(
                    reporter,
                    &hello.assignment,
                    layout,
                    &inventory,
                    crate::disk::ApplyOptions {
                        root: target_root.clone(),
                        keys: std::sync::Arc::new(keys),
                        ..Default::default()
                    },
                ),
            )
            .await?,
        ),
    };

    match (&fetched, &disks) {
        (Some(fetched), Some(applied)) => {
            let root = target_root.clone();
            let keys = applied.key_paths.clone();
            step(
                reporter,
                Step::Configure,
                &format!("placing secrets under {}", root.display()),
                async move {
                    let placed = crate::secrets::place_except(&root, fetched, &keys)?;
                    let mut summary = format!(
                        "{} secret file(s) placed: {}",
                        placed.len(),
                        placed
                            .iter()
                            .map(|p| p.path.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if !keys.is_empty() {
                        summary.push_str(&format!(
                            "; {} LUKS key(s) used for the disks only, not written",
                            keys.len()
                        ));
                    }
                    Ok(((), summary))
                },
            )
            .await?;
        }
        (Some(_), None) => {
            return Err(StepFailure {
                step: Step::Configure,
                error: anyhow::anyhow!(
                    "the role has secret files but no layout: there is no target to place them in; \
                     give the role a layout"
                ),
            })
        }
        _ => {
            reporter.emit(
                Step::Configure,
                EventKind::Finished,
                "nothing to place",
                Some(1.0),
                None,
            );
        }
    }

    Ok(Outcome {
        attempt_id: hello.attempt_id,
        hostname: hello.assignment.hostname,
        last_seq: 0,
        disks,
    })
}

/// The disk step: select the target disks from the inventory, plan, check
/// safety against the assignment's wipe policy, apply with a progress event
/// per operation, verify by reading back. The mounts stay for later steps.
/// `base` gives the root (/mnt) and host options; its `wipe` and `progress`
/// are set here from the assignment and the reporter.
pub async fn disk_step(
    reporter: &Reporter,
    assignment: &landfall_proto::Assignment,
    layout: &serde_json::Value,
    inventory: &Inventory,
    base: crate::disk::ApplyOptions,
) -> Result<(crate::disk::Applied, String)> {
    use crate::disk::{self, select};
    let layout = disk::Layout::from_json(layout).context("the assigned layout is invalid")?;
    let specs = select::device_specs(&layout, &assignment.disks)?;
    // The boot medium and anything mounted or held is never a candidate.
    let candidates: Vec<_> = inventory
        .disks
        .iter()
        .filter(|d| !disk::in_use(&d.path))
        .cloned()
        .collect();
    let targets = select::select(&layout, &specs, &candidates)?;
    let plan = disk::plan(&layout, &targets)?;
    for w in plan.boot_warnings(inventory.firmware.mode) {
        reporter.emit(
            Step::Disks,
            EventKind::Log,
            format!("warning: {w}"),
            None,
            None,
        );
    }
    reporter.emit(
        Step::Disks,
        EventKind::Log,
        format!(
            "plan: {}",
            plan.disks
                .iter()
                .map(|d| format!(
                    "{} -> {} ({} partitions)",
                    d.name,
                    d.target.by_id.as_deref().unwrap_or(&d.target.device),
                    d.partitions.len()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None,
        serde_json::to_value(&plan).ok(),
    );
    let r = reporter.clone();
    let progress: disk::apply::ProgressFn = std::sync::Arc::new(move |e: &disk::OpEvent| {
        let (kind, word) = match e.state {
            disk::OpState::Started => (EventKind::Progress, "started".to_owned()),
            disk::OpState::Done { millis } => (EventKind::Progress, format!("done in {millis} ms")),
            disk::OpState::Skipped { because } => (EventKind::Log, format!("skipped ({because})")),
            disk::OpState::Failed => (EventKind::Log, "failed".to_owned()),
        };
        let done = matches!(
            e.state,
            disk::OpState::Done { .. } | disk::OpState::Skipped { .. }
        );
        let fraction = (e.index - usize::from(!done)) as f32 / e.total.max(1) as f32;
        r.emit(
            Step::Disks,
            kind,
            format!("[{}/{}] {word}: {}", e.index, e.total, e.what),
            Some(fraction.min(0.99)),
            None,
        );
    });
    let opts = disk::ApplyOptions {
        wipe: assignment.wipe == landfall_proto::WipePolicy::Always,
        progress: Some(progress),
        ..base
    };
    let applied = disk::apply(&plan, &opts).await?;
    reporter.emit(
        Step::Disks,
        EventKind::Log,
        "NixOS configuration for the disks",
        None,
        Some(applied.nixos.to_json()),
    );
    let summary = format!(
        "{} disk(s) ({}), {} partitions verified, {} mounted under {}",
        applied.disks.len(),
        applied
            .disks
            .iter()
            .map(|(n, d)| format!("{n}={d}"))
            .collect::<Vec<_>>()
            .join(", "),
        applied.verified.partitions.len(),
        applied.mounts.len(),
        opts.root.display()
    );
    Ok((applied, summary))
}

/// The secrets step: the AppRole role_id from the image (or the command
/// line), the wrapped secret_id from the assignment, the KV reads. Runs
/// before the disks are touched, so an interception alarm stops the install
/// with every disk as it was.
async fn secrets_step(
    opts: &RunOptions,
    vault: &landfall_proto::agent::VaultAssignment,
    assignment: &landfall_proto::Assignment,
) -> Result<(crate::secrets::Fetched, String)> {
    use crate::secrets;
    let role_id = secrets::role_id_from(&opts.etc_dir.join("vault-role-id"), &opts.cmdline)?;
    let fetch_opts = secrets::options_from(&opts.etc_dir.join("vault-ca.pem"), &opts.cmdline)?;
    let fetched = secrets::fetch(vault, &role_id, &assignment.secret_files, &fetch_opts).await?;
    let summary = format!(
        "{} secret file(s) from {} path(s); values held in memory only",
        fetched.files().len(),
        fetched.paths().count()
    );
    Ok((fetched, summary))
}

/// The offline path: the age bundle the image carries
/// (`/etc/landfall/secrets.age`), unlocked by an identity file
/// (`landfall.secrets_identity=PATH`) or a passphrase typed at the console.
/// The console panel is paused while the prompt owns the terminals.
async fn bundle_step(
    opts: &RunOptions,
    reporter: &Reporter,
    assignment: &landfall_proto::Assignment,
) -> Result<(crate::secrets::Fetched, String)> {
    use crate::secrets::{self, IdentitySource};
    let path = opts.etc_dir.join("secrets.age");
    let source = IdentitySource::from_cmdline(&opts.cmdline);
    let prompting = matches!(source, IdentitySource::Prompt(_));
    if prompting {
        reporter.console().pause(&format!(
            "the secrets bundle {} needs its passphrase",
            path.display()
        ));
    }
    let files = assignment.secret_files.clone();
    let opened = tokio::task::spawn_blocking(move || {
        secrets::open_bundle(&path, &source)
            .and_then(|b| b.into_fetched(&files).map_err(anyhow::Error::new))
    })
    .await
    .context("the bundle task panicked");
    if prompting {
        reporter.console().resume();
    }
    let fetched = opened??;
    let summary = format!(
        "{} secret file(s) from the age bundle; values held in memory only",
        fetched.files().len()
    );
    Ok((fetched, summary))
}

/// Key bytes for the layout's LUKS `keyFile`/`passwordFile` paths: the
/// secret files the role declares at those paths.
fn luks_keys(fetched: &crate::secrets::Fetched) -> std::collections::BTreeMap<String, Vec<u8>> {
    fetched
        .files()
        .iter()
        .filter_map(|f| {
            let v = fetched.lookup(&f.from).ok()?;
            Some((f.path.clone(), v.expose().to_vec()))
        })
        .collect()
}

async fn detect(opts: &RunOptions) -> Result<(Inventory, String)> {
    let sysroot = opts.sysroot.clone();
    let inv = tokio::task::spawn_blocking(move || crate::hw::detect(&sysroot))
        .await
        .context("the detect task panicked")??;
    let summary =
        format!(
        "{} disk(s), {} NIC(s), {} CPU thread(s), {} MiB memory, {} firmware, virtualization {}",
        inv.disks.len(),
        inv.nics.len(),
        inv.cpu.threads,
        inv.memory.total_bytes >> 20,
        serde_json::to_value(inv.firmware.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        if inv.virtualization.is_empty() { "none" } else { &inv.virtualization }
    );
    Ok((inv, summary))
}

async fn register(
    cfg: &AgentConfig,
    opts: &RunOptions,
    client: &Client,
    reporter: &Reporter,
    inventory: Inventory,
) -> Result<(HelloResponse, String)> {
    let req = HelloRequest {
        boot_token: cfg.token.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
        inventory,
    };
    let hello = opts
        .hello_retry
        .run(
            |_| async {
                match client.hello(&req).await {
                    Ok(r) => Attempt::Done(r),
                    Err(e) if e.retryable() => Attempt::Retry(e),
                    Err(e) => Attempt::Fatal(e),
                }
            },
            |e, n, d| {
                reporter.console().note(&format!(
                    "server not reachable (try {n}), retrying in {d:?}: {e}"
                ))
            },
        )
        .await
        .map_err(|e| match e {
            RetryError::Fatal(e) => anyhow::Error::new(e).context(
                "the server refused this boot's token: boot the machine again through the \
                 landfall server's boot.ipxe to get a fresh one",
            ),
            e => anyhow::Error::new(e).context("registering with the server"),
        })?;
    let a = &hello.assignment;
    let summary = format!(
        "attempt {}: hostname {}, role {}, layout {}, wipe {:?}",
        hello.attempt_id,
        a.hostname,
        a.role,
        a.layout.as_deref().unwrap_or("-"),
        a.wipe
    );
    reporter.console().set_hostname(&a.hostname);
    reporter.outbox.bind(
        client.clone(),
        hello.attempt_id.clone(),
        hello.agent_token.clone(),
        hello.next_seq,
    );
    Ok((hello, summary))
}

fn primary_ip(inv: &Inventory) -> Option<String> {
    inv.nics
        .iter()
        .flat_map(|n| &n.addresses)
        .find(|a| a.contains('.') && !a.starts_with("127."))
        .or_else(|| {
            inv.nics
                .iter()
                .flat_map(|n| &n.addresses)
                .find(|a| !a.starts_with("fe80"))
        })
        .cloned()
}

fn spawn_ticker(reporter: Reporter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            iv.tick().await;
            reporter.console().tick();
        }
    })
}

/// After success: sync, then reboot / power off / return, as configured.
pub fn final_action(action: FinalAction) -> Result<()> {
    use nix::sys::reboot::{reboot, RebootMode};
    if action == FinalAction::None {
        return Ok(());
    }
    nix::unistd::sync();
    let mode = match action {
        FinalAction::Reboot => RebootMode::RB_AUTOBOOT,
        FinalAction::Poweroff => RebootMode::RB_POWER_OFF,
        FinalAction::None => unreachable!(),
    };
    reboot(mode).with_context(|| format!("{action:?} failed"))?;
    Ok(())
}
