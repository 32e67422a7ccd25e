//! The install pipeline: the steps registered in [`register_steps`], in
//! order, on the step registry ([`crate::steps`]). Nothing else decides
//! order. Each step's output is a typed handle the later steps read.
//!
//! detect -> register -> secrets -> disks -> configure -> install -> finish,
//! then the terminal `done` event. When a step fails after `register`, the
//! agent reports it, keeps everything as it is (mounts, secrets in memory)
//! and waits for the operator (`POST wait`, docs/install.md): `landfall
//! retry HOST` runs again from the failed step (from `configure` when
//! `install` failed, so the files follow a fixed role); `landfall reinstall HOST`
//! stops the wait and the machine reboots into a fresh install.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use landfall_proto::{
    Assignment, DoneData, ErrorCode, EventKind, FailureData, HelloRequest, HelloResponse,
    Inventory, Step, WaitAction, WaitRequest, PROTOCOL_VERSION,
};

use crate::cmdline::{AgentConfig, FinalAction};
use crate::report::{Client, Console, Outbox, Reporter};
use crate::retry::{Attempt, Retry, RetryError};
use crate::steps::{Cx, Env, Start, StepHandle, Steps, Timings};

/// What the console shows for the terminal `done` event.
const DONE_TITLE: &str = "Report the result";

/// The outputs the runner reads after a failure and at the end.
struct Handles {
    inventory: StepHandle<Inventory>,
    hello: StepHandle<HelloResponse>,
    /// Mounted (and LUKS open) until the finish step closes them.
    disks: StepHandle<Option<crate::disk::Applied>>,
}

/// The agent's steps, in order: the one list of id, console title, retry
/// target and body.
fn register_steps(steps: &mut Steps) -> Handles {
    let inventory = steps
        .new_step(Step::Detect, "Detect hardware", |cx| {
            let cx: &Cx = cx;
            Start::run("detecting hardware", async move {
                let (inventory, summary) = detect(cx.opts()).await?;
                cx.reporter().console().set_ip(primary_ip(&inventory));
                Ok((inventory, summary))
            })
        })
        .register();

    let hello = steps
        .new_step(Step::Register, "Register with the server", move |cx| {
            let cx: &Cx = cx;
            let inventory = cx.get(inventory).clone();
            Start::run(
                format!("registering with {}", cx.cfg().server),
                register(cx.env(), inventory),
            )
        })
        .register();

    let fetched = steps
        .new_step(Step::Secrets, "Fetch secrets", move |cx| {
            let cx: &Cx = cx;
            let (cfg, opts, reporter) = (cx.cfg(), cx.opts(), cx.reporter());
            let a = &cx.get(hello).assignment;
            let from_bundle = a.secret_files.iter().any(|f| f.from.starts_with("bundle:"));
            match (&a.vault, from_bundle) {
                (Some(vault), _) => Start::run(
                    format!("fetching secrets from {}", vault.address),
                    some(secrets_step(opts, vault, a)),
                ),
                (None, true) => {
                    let path = bundle_path(cfg, opts);
                    Start::run(
                        format!("opening the age bundle {}", path.display()),
                        some(bundle_step(path, opts, reporter, a)),
                    )
                }
                (None, false) => Start::skip(None, "no secrets assigned"),
            }
        })
        .register();

    let disks = steps
        .new_step(
            Step::Disks,
            "Partition, format and mount disks",
            move |cx| start_disks(cx, inventory, hello, fetched),
        )
        .register();

    // The verify token the written verify.json carries.
    let configured = steps
        .new_step(
            Step::Configure,
            "Write the configuration, place secrets",
            move |cx| {
                let cx: &Cx = cx;
                let hello = cx.get(hello);
                let a = &hello.assignment;
                let Some(applied) = cx.get(disks) else {
                    if !a.secret_files.is_empty() || a.install.is_some() {
                        return Start::Fail(anyhow::anyhow!(
                            "the role has secret files or an install target but no layout: there \
                             is no target to write into; give the role a layout"
                        ));
                    }
                    return Start::skip(None, "no layout: nothing to configure");
                };
                Start::run(
                    format!(
                        "writing the configuration under {}",
                        cx.opts().target_root.display()
                    ),
                    configure_step(
                        cx.cfg(),
                        cx.opts(),
                        hello,
                        cx.get(inventory),
                        applied,
                        cx.get(fetched).as_ref(),
                    ),
                )
            },
        )
        .register();

    steps
        .new_step(Step::Install, "Install NixOS (nixos-install)", move |cx| {
            let cx: &Cx = cx;
            let Some(target) = &cx.get(hello).assignment.install else {
                return Start::skip(
                    (),
                    "no install target assigned: the disks and files are ready, nothing installed",
                );
            };
            Start::run(
                "running nixos-install",
                install_step(cx.reporter(), target, &cx.opts().target_root),
            )
        })
        // A failed install runs again from configure, so the generated files
        // carry the fixed role and the fresh verify token.
        .retry_from(Step::Configure)
        .register();

    steps
        .new_step(Step::Finish, "Unmount and close the disks", move |cx| {
            let Some(mut applied) = cx.get_mut(disks).take() else {
                return Start::skip((), "nothing mounted");
            };
            let hello = cx.get(hello).clone();
            // A retry after configure brought a fresh verify token.
            let stale = hello.assignment.verify_token.is_some()
                && *cx.get(configured) != hello.assignment.verify_token;
            Start::run("unmounting and closing the disks", async move {
                let result = finish_step(cx.env(), &hello, stale, &mut applied).await;
                if result.is_err() {
                    // What fails to unmount stays held for a retry.
                    *cx.get_mut(disks) = Some(applied);
                }
                result.map(|summary| ((), summary))
            })
        })
        .register();

    Handles {
        inventory,
        hello,
        disks,
    }
}

/// How the disk step begins: skipped without a layout, else [`disk_step`]
/// with the LUKS keys named by the layout taken from the secrets.
fn start_disks<'c>(
    cx: &'c Cx,
    inventory: StepHandle<Inventory>,
    hello: StepHandle<HelloResponse>,
    fetched: StepHandle<Option<crate::secrets::Fetched>>,
) -> Start<'c, Option<crate::disk::Applied>> {
    let (opts, reporter) = (cx.opts(), cx.reporter());
    let hello = cx.get(hello);
    let a = &hello.assignment;
    let Some(layout) = &a.disko else {
        return Start::skip(None, "no layout assigned: disks left as they are");
    };
    // LUKS keys named by the layout come from the secrets, never from argv.
    let keys = crate::disk::apply::Keys {
        by_path: cx.get(fetched).as_ref().map(luks_keys).unwrap_or_default(),
    };
    Start::run(
        format!(
            "preparing disks from layout {}",
            a.layout.as_deref().unwrap_or("(unnamed)")
        ),
        some(disk_step(
            reporter,
            a,
            layout,
            cx.get(inventory),
            crate::disk::ApplyOptions {
                root: opts.target_root.clone(),
                keys: std::sync::Arc::new(keys),
                state_dir: opts.state_dir.clone(),
                ..Default::default()
            },
            Some((opts.state_dir.as_path(), hello.attempt_id.as_str())),
        )),
    )
}

/// A step's output that may be absent (nothing assigned) from one that ran.
async fn some<T>(
    work: impl std::future::Future<Output = Result<(T, String)>>,
) -> Result<(Option<T>, String)> {
    work.await.map(|(v, summary)| (Some(v), summary))
}

/// The console's list: every registered step with its title, then `done`.
pub fn console_steps() -> Vec<(Step, &'static str)> {
    let mut steps = Steps::default();
    register_steps(&mut steps);
    titles(&steps)
}

fn titles(steps: &Steps) -> Vec<(Step, &'static str)> {
    steps
        .titles()
        .into_iter()
        .map(|(id, title)| (id.wire(), title))
        .chain([(Step::Done, DONE_TITLE)])
        .collect()
}

pub use crate::options::{state_dir_from, RunOptions};

/// What a finished run did.
#[derive(Debug)]
pub struct Outcome {
    pub attempt_id: String,
    pub hostname: String,
    pub last_seq: u64,
    /// True when the install failed and the operator answered `reinstall`:
    /// the machine should reboot into a fresh PXE boot.
    pub stopped: bool,
}

/// Run the whole pipeline. On a step's failure the failure is reported (when
/// the server knows the attempt), and the agent waits for the operator.
pub async fn run(cfg: &AgentConfig, opts: &RunOptions, console: Console) -> Result<Outcome> {
    run_with(cfg, opts, console, |_| {}).await
}

/// [`run`] with more steps: `extend` registers them on the agent's own
/// (a test's no-op step between configure and install is one registration).
pub async fn run_with(
    cfg: &AgentConfig,
    opts: &RunOptions,
    console: Console,
    extend: impl FnOnce(&mut Steps),
) -> Result<Outcome> {
    let mut steps = Steps::default();
    let handles = register_steps(&mut steps);
    extend(&mut steps);
    // The server's certificate pin (or the explicit plain-HTTP opt-in),
    // settled before anything is sent: a wrong CA stops here or in the
    // first handshake, before the hello.
    let trust = crate::report::ServerTrust::for_agent(cfg, &opts.etc_dir)?;
    let client = Client::new(&cfg.server, &trust)?;
    let reporter = Reporter::new(
        Outbox::persistent(opts.state_dir.join("outbox.json")),
        console,
    );
    reporter.console().set_steps(&titles(&steps));
    reporter.console().set_server(&cfg.server);
    let ticker = spawn_ticker(reporter.clone());
    let mut cx = steps.context(Env {
        cfg: cfg.clone(),
        opts: opts.clone(),
        client,
        reporter,
    });
    let result = run_until_done(&steps, &handles, &mut cx).await;
    ticker.abort();
    result
}

async fn run_until_done(steps: &Steps, h: &Handles, cx: &mut Cx) -> Result<Outcome> {
    let reporter = cx.reporter().clone();
    let timings = Timings::default();
    let mut from = 0;
    loop {
        let failure = match steps.run_from(cx, from, &timings).await {
            Ok(()) => break,
            Err(f) => f,
        };
        let crate::steps::StepFailure {
            id,
            position,
            error,
        } = failure;
        let message = format!("{error:#}");
        // Registered means the server knows the attempt and takes events.
        let Some(hello) = cx.output(h.hello).cloned() else {
            return Err(error.context(format!("step {id} failed")));
        };
        let data = FailureData {
            step: Some(id.name().to_owned()),
            error: Some(message.clone()),
            timing: Some(timings.timing()),
            ..crate::failure::failure_data(&error)
        };
        reporter.emit(
            Step::Done,
            EventKind::Failed,
            format!("{id} failed: {message}"),
            None,
            data.to_data(),
        );
        if let Err(e) = reporter.outbox.flush(cx.opts().final_ack_timeout).await {
            tracing::warn!("{e:#}");
        }
        if data.security {
            // A compromised install is not retried: the operator investigates
            // and reinstalls.
            return Err(error.context(format!("step {id} failed")));
        }
        let again = steps.retry_position(position);
        let retry_runs = steps.ids()[again..].iter().map(|s| s.name()).collect();
        show_failure(cx, h, &hello, id.name(), retry_runs, &message, &data);
        match wait_for_operator(cx, &hello).await {
            Ok(Some(assignment)) => {
                reporter.console().set_detail(Vec::new());
                cx.replace(
                    h.hello,
                    HelloResponse {
                        assignment,
                        ..hello
                    },
                );
                from = again;
                let id = steps.ids()[from];
                reporter.emit(
                    id.wire(),
                    EventKind::Log,
                    format!("the operator asked for a retry: running again from {id}"),
                    None,
                    None,
                );
            }
            Ok(None) => return Ok(outcome(&hello, &reporter, true)),
            Err(e) => {
                return Err(e.context(format!("step {id} failed; waiting for the operator failed")))
            }
        }
    }

    reporter.emit(
        Step::Done,
        EventKind::Finished,
        "install finished",
        Some(1.0),
        serde_json::to_value(DoneData {
            timing: timings.timing(),
        })
        .ok(),
    );
    reporter
        .console()
        .note("waiting for the server to acknowledge every event");
    reporter.outbox.flush(cx.opts().final_ack_timeout).await?;
    Ok(outcome(cx.get(h.hello), &reporter, false))
}

fn outcome(hello: &HelloResponse, reporter: &Reporter, stopped: bool) -> Outcome {
    Outcome {
        attempt_id: hello.attempt_id.clone(),
        hostname: hello.assignment.hostname.clone(),
        last_seq: reporter.outbox.last_seq(),
        stopped,
    }
}

/// The failure on the console: step, error, the install's last lines, what
/// the operator can do, how to get a shell and what is still mounted
/// ([`crate::report::failure`]).
fn show_failure(
    cx: &Cx,
    h: &Handles,
    hello: &HelloResponse,
    step: &str,
    retry_runs: Vec<&str>,
    message: &str,
    data: &FailureData,
) {
    let inventory = cx.output(h.inventory);
    let host = Some(hello.assignment.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| inventory?.nics.first().map(|n| n.mac.clone()))
        .unwrap_or_else(|| "MAC".to_owned());
    let ip = inventory.and_then(primary_ip);
    let opts = cx.opts();
    let sshd = [
        "etc/ssh/sshd_config",
        "usr/sbin/sshd",
        "run/current-system/sw/bin/sshd",
    ]
    .iter()
    .any(|p| opts.sysroot.join(p).exists());
    let disks = cx.output(h.disks).and_then(Option::as_ref);
    let failure = crate::report::failure::Failure {
        step,
        message,
        hint: data.hint.as_deref(),
        last_lines: data.last_lines.iter().map(String::as_str).collect(),
        host: &host,
        ip: ip.as_deref(),
        sshd,
        retry_runs,
        target_root: &opts.target_root,
        mounted: disks.map_or(0, |d| d.mounts.len()),
        luks_open: disks.map_or(0, |d| d.luks_open()),
    };
    cx.reporter().console().set_detail(failure.lines());
}

/// How a wait that could not reach the server is asked again: from 1 s,
/// doubling to 10 s, as long as it takes.
const WAIT_RETRY: Retry = Retry {
    initial: Duration::from_secs(1),
    cap: Duration::from_secs(10),
    max_tries: None,
};

/// Long-poll the server until the operator answers. `Some(assignment)`:
/// retry with it; `None`: stop (reinstall, or the attempt was replaced).
async fn wait_for_operator(cx: &Cx, hello: &HelloResponse) -> Result<Option<Assignment>> {
    let req = WaitRequest {
        attempt_id: hello.attempt_id.clone(),
        timeout_secs: cx.opts().wait_secs,
    };
    let client = &cx.env().client;
    // When the last try was asked.
    let asked = std::sync::Mutex::new(Instant::now());
    loop {
        let answer = WAIT_RETRY
            .run(
                |_| async {
                    *asked.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    match client.wait(&hello.agent_token, &req).await {
                        Ok(r) => Attempt::Done(r),
                        Err(e) if e.retryable() => Attempt::Retry(e),
                        Err(e) => Attempt::Fatal(e),
                    }
                },
                |e, _, backoff| {
                    cx.reporter().console().note(&format!(
                        "server not reachable while waiting ({e}); asking again in {backoff:?}"
                    ))
                },
            )
            .await;
        let r = match answer {
            Ok(r) => r,
            Err(RetryError::Fatal(e))
                if matches!(
                    e.code(),
                    Some(ErrorCode::AgentTokenInvalid | ErrorCode::AttemptMismatch)
                ) =>
            {
                // Another boot of this machine took the attempt over.
                tracing::warn!("{e}");
                return Ok(None);
            }
            Err(RetryError::Fatal(e))
                if matches!(
                    e.code(),
                    Some(ErrorCode::AttemptAlive | ErrorCode::BootTokenClaimed)
                ) =>
            {
                // Another client took this install over: the server raised
                // the alarm (the machine is compromised); nothing to wait for.
                cx.reporter()
                    .console()
                    .note(&format!("SECURITY ALARM: {e}"));
                tracing::error!("{e}");
                return Ok(None);
            }
            Err(RetryError::Fatal(e) | RetryError::Exhausted { last: e, .. }) => {
                return Err(anyhow::Error::new(e).context(
                    "the server does not offer the wait endpoint (older than landfall retry): \
                     PXE-boot the machine again to reinstall",
                ))
            }
        };
        match r.action {
            // A server that answers at once (shutting down) is not
            // asked more than once a second.
            WaitAction::Wait
                if asked.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
                    >= Duration::from_secs(1) =>
            {
                continue
            }
            WaitAction::Wait => {}
            WaitAction::Retry => match r.assignment {
                Some(a) => return Ok(Some(a)),
                None => anyhow::bail!("the server answered retry without an assignment"),
            },
            WaitAction::Stop => return Ok(None),
            WaitAction::Unknown => {
                tracing::warn!("the server answered an unknown wait action; asking again");
            }
        }
        tokio::time::sleep(WAIT_RETRY.initial).await;
    }
}

/// The finish step: verify.json rewritten when `stale` (a retry brought a
/// fresh verify token that configure did not write), sync, unmount and close.
async fn finish_step(
    env: &Env,
    hello: &HelloResponse,
    stale: bool,
    applied: &mut crate::disk::Applied,
) -> Result<String> {
    let mut summary = String::new();
    if stale {
        write_verify(&env.cfg, &env.opts, hello)?;
        summary.push_str("verify.json refreshed; ");
    }
    let (mounts, luks) = (applied.mounts.len(), applied.luks_open());
    tokio::task::spawn_blocking(nix::unistd::sync)
        .await
        .context("the sync task panicked")?;
    applied.try_close().await?;
    summary.push_str(&format!(
        "{mounts} mount(s) unmounted, {luks} LUKS mapping(s) closed"
    ));
    Ok(summary)
}

/// The configure step: the generated files (hardware configuration,
/// inventory, flake), first-boot verify's config, the secrets.
async fn configure_step(
    cfg: &AgentConfig,
    opts: &RunOptions,
    hello: &HelloResponse,
    inventory: &Inventory,
    applied: &crate::disk::Applied,
    fetched: Option<&crate::secrets::Fetched>,
) -> Result<(Option<landfall_proto::SecretString>, String)> {
    use crate::install::configure::TargetFiles;
    let root = &opts.target_root;
    let a = &hello.assignment;
    let files = TargetFiles::build(inventory, &applied.nixos, a)?;
    let mut written: Vec<String> = files
        .write(root)?
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect();
    if a.verify_token.is_some() {
        let p = write_verify(cfg, opts, hello)?;
        written.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
    }
    let mut summary = format!("wrote {}", written.join(", "));
    let initrd_keys = &applied.nixos.initrd_keys;
    if let Some(fetched) = fetched {
        let keys = &applied.key_paths;
        let placed = crate::secrets::place_except(root, fetched, keys)?;
        summary.push_str(&format!(
            "; {} secret file(s) placed: {}",
            placed.len(),
            placed
                .iter()
                .map(|p| p.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if !keys.is_empty() && initrd_keys.is_empty() {
            summary.push_str(&format!(
                "; {} LUKS key(s) used for the disks only, not written",
                keys.len()
            ));
        }
    }
    if !initrd_keys.is_empty() {
        // The installed initrd's own copy of each LUKS key (LuksUnlock::InitrdKey).
        use crate::disk::apply::KeyProvider;
        let keys = crate::disk::apply::Keys {
            by_path: fetched.map(luks_keys).unwrap_or_default(),
        };
        for (path, src) in initrd_keys {
            let mut bytes = zeroize::Zeroizing::new(keys.key(src)?);
            if matches!(src, crate::disk::layout::KeySource::PasswordFile(_)) {
                // Keys ends a passphrase with the newline cryptsetup's stdin wants; the
                // initrd reads a key file whole (`--key-file`): the passphrase alone.
                bytes.pop();
            }
            crate::secrets::place::write_target_file(root, path, &bytes, 0o400)?;
        }
        summary.push_str(&format!(
            "; the installed initrd's LUKS key(s): {}",
            initrd_keys.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((a.verify_token.clone(), summary))
}

/// `/etc/landfall/verify.json` in the target for the assignment's verify token.
fn write_verify(
    cfg: &AgentConfig,
    opts: &RunOptions,
    hello: &HelloResponse,
) -> Result<std::path::PathBuf> {
    use crate::install::verify;
    let a = &hello.assignment;
    let mut vc = verify::verify_config(a, &cfg.server, a.checks.clone())?;
    vc.attempt_id = Some(hello.attempt_id.clone());
    let trust = crate::report::ServerTrust::for_agent(cfg, &opts.etc_dir)?;
    vc.server_ca_pem = trust.ca_pem();
    vc.server_ca_sha256 = trust.sha256();
    vc.insecure_http = matches!(trust, crate::report::ServerTrust::InsecureHttp);
    verify::write_verify_config(&opts.target_root, &vc)
}

/// The install step: every output line a `log` event, or a `progress` event
/// when it moved the estimate.
async fn install_step(
    reporter: &Reporter,
    target: &landfall_proto::InstallTarget,
    root: &std::path::Path,
) -> Result<((), String)> {
    use crate::install::nixos_install;
    let cmds = nixos_install::commands(target, root)?;
    nixos_install::check_programs(&cmds, std::env::var_os("PATH").as_deref())?;
    let shown: Vec<String> = cmds.iter().map(|c| c.display()).collect();
    let t0 = Instant::now();
    let p = nixos_install::run(cmds, |_, line, fraction| match fraction {
        Some(f) => {
            reporter.emit(Step::Install, EventKind::Progress, line, Some(f), None);
        }
        None => {
            reporter.emit(Step::Install, EventKind::Log, line, None, None);
        }
    })
    .await?;
    Ok((
        (),
        format!(
            "`{}` succeeded in {:.1} s: {} path(s) copied, {} built",
            shown.join("` then `"),
            t0.elapsed().as_secs_f32(),
            p.copied,
            p.built
        ),
    ))
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
    journal: Option<(&std::path::Path, &str)>,
) -> Result<(crate::disk::Applied, String)> {
    use crate::disk::{self, select};
    let layout = disk::Layout::from_json(layout).context("the assigned layout is invalid")?;
    let specs = select::device_specs(&layout, &assignment.disks)?;
    // A journal of this attempt: an agent before this one (killed,
    // restarted) chose the disks and the ids; take both from it.
    let journal = match journal {
        Some((dir, attempt)) => {
            let path = disk::Journal::path(dir, attempt);
            let j = disk::Journal::load(&path)?;
            Some((path, attempt, j))
        }
        None => None,
    };
    let resumed = journal.as_ref().and_then(|(_, _, j)| j.clone());
    let (targets, ids) = match &resumed {
        Some(j) => {
            reporter.emit(
                Step::Disks,
                EventKind::Log,
                format!(
                    "resuming the disk step of attempt {} from its journal ({} operation(s) done): disks {}",
                    j.attempt_id,
                    j.done.len(),
                    j.targets
                        .iter()
                        .map(|(n, t)| format!("{n}={}", t.device))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
                None,
            );
            (j.targets.clone(), j.ids.clone())
        }
        None => {
            // The boot medium and anything mounted or held is never a candidate.
            let (candidates, left_out) = disk::candidates(&inventory.disks);
            (
                select::select(&layout, &specs, &candidates, &left_out)?,
                disk::Ids::random()?,
            )
        }
    };
    let mut plan = disk::plan_pinned(&layout, &targets, &ids)?;
    let journal = match journal {
        Some((path, attempt, j)) => {
            let j = j.unwrap_or_else(|| disk::Journal::new(attempt, ids.clone(), targets.clone()));
            // Saved before anything is written: a restart finds the disks chosen.
            j.save(&path)
                .with_context(|| format!("writing the disk journal {}", path.display()))?;
            Some(disk::JournalFile::new(path, j))
        }
        None => None,
    };
    plan.set_luks_unlock(&layout, assignment.luks_unlock, &assignment.tpm2_pcrs)?;
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
        journal,
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
        applied.read_back.partitions.len(),
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
    let role_id = secrets::role_id_from(&opts.etc_dir.join(secrets::ROLE_ID_FILE), &opts.cmdline)?;
    let fetch_opts = secrets::options_from(&opts.etc_dir.join(secrets::CA_FILE), &opts.cmdline)?;
    let fetched = {
        let _waiting = crate::timing::waiting();
        secrets::fetch(vault, &role_id, &assignment.secret_files, &fetch_opts).await?
    };
    let summary = format!(
        "{} secret file(s) from {} path(s); values held in memory only",
        fetched.files().len(),
        fetched.paths().count()
    );
    Ok((fetched, summary))
}

/// The age bundle to open: `landfall.bundle=` / `--bundle`, else the one the
/// image carries (`/etc/landfall/secrets.age`).
pub fn bundle_path(cfg: &AgentConfig, opts: &RunOptions) -> PathBuf {
    cfg.bundle
        .clone()
        .unwrap_or_else(|| opts.etc_dir.join(crate::secrets::BUNDLE_FILE))
}

/// The offline path: the age bundle at `path` ([`bundle_path`]), unlocked by
/// an identity file (`landfall.secrets_identity=PATH`) or a passphrase typed
/// at the console. The console panel is paused while the prompt owns the
/// terminals.
async fn bundle_step(
    path: PathBuf,
    opts: &RunOptions,
    reporter: &Reporter,
    assignment: &landfall_proto::Assignment,
) -> Result<(crate::secrets::Fetched, String)> {
    use crate::secrets::{self, IdentitySource};
    if !path.exists() {
        anyhow::bail!(
            "the role takes secrets from an age bundle, but {} does not exist: bring it there \
             (a medium mounted at that path), or name the bundle with landfall.bundle=PATH \
             (the image's landfall.installer.ageBundle), then retry",
            path.display()
        );
    }
    let source = IdentitySource::from_cmdline(&opts.cmdline);
    let prompting = matches!(source, IdentitySource::Prompt(_));
    if prompting {
        reporter.console().pause(&format!(
            "the secrets bundle {} needs its passphrase",
            path.display()
        ));
    }
    let files = assignment.secret_files.clone();
    let shown = path.display().to_string();
    // The passphrase prompt waits on the technician.
    let _waiting = crate::timing::waiting();
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
        "{} secret file(s) from the age bundle {shown}; values held in memory only",
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

async fn register(env: &Env, inventory: Inventory) -> Result<(HelloResponse, String)> {
    let (cfg, opts, client, reporter) = (&env.cfg, &env.opts, &env.client, &env.reporter);
    // Saved before it is first sent: a restarted agent proves with it that
    // it is the boot token's first claimant.
    let nonce = crate::report::nonce::for_token(&opts.state_dir, &cfg.token)?;
    let req = HelloRequest {
        boot_token: cfg.token.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
        inventory,
        nonce: Some(nonce),
    };
    let hello = opts
        .hello_retry
        .run(
            |_| async {
                let _waiting = crate::timing::waiting();
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
            RetryError::Fatal(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::BootTokenInvalid | ErrorCode::BootTokenMacMismatch)
                ) =>
            {
                anyhow::Error::new(e).context(
                    "the server refused this boot's token: boot the machine again through the \
                     landfall server's boot.ipxe to get a fresh one",
                )
            }
            RetryError::Fatal(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::BootTokenClaimed | ErrorCode::AttemptAlive)
                ) =>
            {
                reporter.console().note(
                    "SECURITY ALARM: another client claimed this machine's install; the server \
                     marked it compromised and revoked its secrets. Nothing was touched here.",
                );
                anyhow::Error::new(e).context(
                    "SECURITY ALARM: another client already used this boot's token or this \
                     machine's install; nothing on this machine was touched. Tell the operator: \
                     `landfall machine` shows both clients' addresses",
                )
            }
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
