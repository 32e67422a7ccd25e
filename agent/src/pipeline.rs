//! The install pipeline: the ordered list of typed steps. Nothing else
//! decides order. Each step's result is kept for the next ones.
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
    Assignment, EventKind, HelloRequest, HelloResponse, Inventory, Step, WaitAction, WaitRequest,
    PROTOCOL_VERSION,
};

use crate::cmdline::{AgentConfig, FinalAction};
use crate::report::{ApiError, Client, Console, Outbox, Reporter};
use crate::retry::{Attempt, Retry, RetryError};

/// The steps this agent runs, with what the console shows for each.
pub const STEPS: &[(Step, &str)] = &[
    (Step::Detect, "Detect hardware"),
    (Step::Register, "Register with the server"),
    (Step::Secrets, "Fetch secrets"),
    (Step::Disks, "Partition, format and mount disks"),
    (Step::Configure, "Write the configuration, place secrets"),
    (Step::Install, "Install NixOS (nixos-install)"),
    (Step::Finish, "Unmount and close the disks"),
    (Step::Done, "Report the result"),
];

/// The steps that do work, in order (`done` is the report).
const ORDER: [Step; 7] = [
    Step::Detect,
    Step::Register,
    Step::Secrets,
    Step::Disks,
    Step::Configure,
    Step::Install,
    Step::Finish,
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
    /// Where the target is mounted.
    pub target_root: PathBuf,
    /// Seconds one `wait` long-poll may be held by the server.
    pub wait_secs: u64,
    /// The installer's runtime directory for this boot (tmpfs: kept across
    /// agent restarts, not reboots): the disk journal of each attempt.
    /// `LANDFALL_STATE_DIR`, else `landfall.state_dir=`, else /run/landfall.
    pub state_dir: PathBuf,
}

/// The state directory from the environment value and the command line text.
pub fn state_dir_from(env: Option<std::ffi::OsString>, cmdline: &str) -> PathBuf {
    env.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            crate::cmdline::landfall_params(cmdline)
                .get("state_dir")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/run/landfall"))
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
            target_root: crate::disk::ApplyOptions::default().root,
            wait_secs: 25,
            state_dir: PathBuf::from("/run/landfall"),
        }
    }
}

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

/// Wall time of each step run and the part of it spent waiting on programs,
/// the server or Vault ([`crate::timing`]).
#[derive(Debug, Default)]
struct Timings(std::sync::Mutex<Vec<(Step, Duration, Duration, crate::timing::Cpu)>>);

impl Timings {
    fn add(&self, step: Step, wall: Duration, tools: Duration, cpu: crate::timing::Cpu) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((step, wall, tools, cpu));
    }

    /// `{"steps": {STEP: {wall_ms, tools_ms, cpu_ms, user_ms}}, "agent_ms",
    /// "tools_ms", "cpu_ms", "user_ms", "wall_ms"}`; a step run twice (retry)
    /// adds up.
    fn to_json(&self) -> serde_json::Value {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut steps = serde_json::Map::new();
        let (mut wall_all, mut tools_all, mut cpu_all, mut user_all) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        for (step, wall, tools, cpu) in v.iter() {
            let e = steps.entry(step.as_str()).or_insert_with(
                || serde_json::json!({"wall_ms": 0, "tools_ms": 0, "cpu_ms": 0, "user_ms": 0}),
            );
            let add = |e: &mut serde_json::Value, k: &str, d: Duration| {
                e[k] = (e[k].as_u64().unwrap_or(0) + d.as_millis() as u64).into()
            };
            add(e, "wall_ms", *wall);
            add(e, "tools_ms", *tools);
            add(e, "cpu_ms", cpu.total());
            add(e, "user_ms", cpu.user);
            wall_all += *wall;
            tools_all += *tools;
            cpu_all += cpu.total();
            user_all += cpu.user;
        }
        serde_json::json!({
            "steps": steps,
            "wall_ms": wall_all.as_millis() as u64,
            "agent_ms": wall_all.saturating_sub(tools_all).as_millis() as u64,
            "tools_ms": tools_all.as_millis() as u64,
            "cpu_ms": cpu_all.as_millis() as u64,
            "user_ms": user_all.as_millis() as u64,
        })
    }
}

/// What the steps have produced so far.
#[derive(Default)]
struct State {
    inventory: Option<Inventory>,
    hello: Option<HelloResponse>,
    fetched: Option<crate::secrets::Fetched>,
    /// Mounted (and LUKS open) until the finish step closes them.
    disks: Option<crate::disk::Applied>,
    /// The verify token in the target's verify.json: a retry brings a new
    /// one, which the finish step writes when configure did not run again.
    verify_written: Option<landfall_proto::SecretString>,
}

impl State {
    fn assignment(&self) -> &Assignment {
        &self.hello.as_ref().expect("register ran").assignment
    }
}

struct Ctx<'a> {
    cfg: &'a AgentConfig,
    opts: &'a RunOptions,
    client: &'a Client,
    reporter: &'a Reporter,
    timings: Timings,
}

/// Run the whole pipeline. On a step's failure the failure is reported (when
/// the server knows the attempt), and the agent waits for the operator.
pub async fn run(cfg: &AgentConfig, opts: &RunOptions, console: Console) -> Result<Outcome> {
    let client = Client::new(&cfg.server)?;
    let reporter = Reporter::new(
        Outbox::persistent(opts.state_dir.join("outbox.json")),
        console,
    );
    reporter.console().set_server(&cfg.server);
    let ticker = spawn_ticker(reporter.clone());
    let ctx = Ctx {
        cfg,
        opts,
        client: &client,
        reporter: &reporter,
        timings: Timings::default(),
    };
    let result = run_until_done(&ctx).await;
    ticker.abort();
    result
}

async fn run_until_done(ctx: &Ctx<'_>) -> Result<Outcome> {
    let reporter = ctx.reporter;
    let mut st = State::default();
    let mut from = 0;
    loop {
        let failure = match steps(ctx, &mut st, from).await {
            Ok(()) => break,
            Err(f) => f,
        };
        let StepFailure { step, error } = failure;
        let message = format!("{error:#}");
        if !reporter.outbox.is_bound() {
            return Err(error.context(format!("step {step} failed")));
        }
        let mut data = serde_json::json!({
            "step": step,
            "error": message,
            "timing": ctx.timings.to_json(),
        });
        let extra = failure_data(&error);
        let alarm = extra
            .as_ref()
            .and_then(|d| d.get(landfall_proto::SECURITY_FLAG))
            .is_some();
        if let Some(serde_json::Value::Object(extra)) = extra {
            data.as_object_mut().expect("an object").extend(extra);
        }
        reporter.emit(
            Step::Done,
            EventKind::Failed,
            format!("{step} failed: {message}"),
            None,
            Some(data.clone()),
        );
        if let Err(e) = reporter.outbox.flush(ctx.opts.final_ack_timeout).await {
            tracing::warn!("{e:#}");
        }
        if alarm {
            // A compromised install is not retried: the operator investigates
            // and reinstalls.
            return Err(error.context(format!("step {step} failed")));
        }
        show_failure(ctx, &st, step, &message, &data);
        match wait_for_operator(ctx, &st).await {
            Ok(Some(assignment)) => {
                reporter.console().set_detail(Vec::new());
                let st_hello = st.hello.as_mut().expect("register ran");
                st_hello.assignment = assignment;
                let again = retry_from(step);
                from = ORDER.iter().position(|s| *s == again).unwrap_or(0);
                reporter.emit(
                    ORDER[from],
                    EventKind::Log,
                    format!(
                        "the operator asked for a retry: running again from {}",
                        ORDER[from]
                    ),
                    None,
                    None,
                );
            }
            Ok(None) => return Ok(outcome(&st, reporter, true)),
            Err(e) => {
                return Err(e.context(format!(
                    "step {step} failed; waiting for the operator failed"
                )))
            }
        }
    }

    reporter.emit(
        Step::Done,
        EventKind::Finished,
        "install finished",
        Some(1.0),
        Some(serde_json::json!({ "timing": ctx.timings.to_json() })),
    );
    reporter
        .console()
        .note("waiting for the server to acknowledge every event");
    reporter.outbox.flush(ctx.opts.final_ack_timeout).await?;
    Ok(outcome(&st, reporter, false))
}

fn outcome(st: &State, reporter: &Reporter, stopped: bool) -> Outcome {
    let hello = st.hello.as_ref().expect("register ran");
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
fn show_failure(ctx: &Ctx<'_>, st: &State, step: Step, message: &str, data: &serde_json::Value) {
    let host = st
        .hello
        .as_ref()
        .map(|h| h.assignment.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            let inv = st.inventory.as_ref()?;
            inv.nics.first().map(|n| n.mac.clone())
        })
        .unwrap_or_else(|| "MAC".to_owned());
    let ip = st.inventory.as_ref().and_then(primary_ip);
    let sshd = [
        "etc/ssh/sshd_config",
        "usr/sbin/sshd",
        "run/current-system/sw/bin/sshd",
    ]
    .iter()
    .any(|p| ctx.opts.sysroot.join(p).exists());
    let again = retry_from(step);
    let failure = crate::report::failure::Failure {
        step,
        message,
        hint: data.get("hint").and_then(|h| h.as_str()),
        last_lines: data
            .get("last_lines")
            .and_then(|l| l.as_array())
            .map(|l| l.iter().filter_map(|l| l.as_str()).collect())
            .unwrap_or_default(),
        host: &host,
        ip: ip.as_deref(),
        sshd,
        retry_runs: ORDER.iter().copied().skip_while(|s| *s != again).collect(),
        target_root: &ctx.opts.target_root,
        mounted: st.disks.as_ref().map_or(0, |d| d.mounts.len()),
        luks_open: st.disks.as_ref().map_or(0, |d| d.luks.len()),
    };
    ctx.reporter.console().set_detail(failure.lines());
}

/// Where `landfall retry` starts again after `failed`: a failed install
/// starts from `configure`, so the generated files carry the fixed role and
/// the fresh verify token; any other step runs again itself.
fn retry_from(failed: Step) -> Step {
    if failed == Step::Install {
        Step::Configure
    } else {
        failed
    }
}

/// Long-poll the server until the operator answers. `Some(assignment)`:
/// retry with it; `None`: stop (reinstall, or the attempt was replaced).
async fn wait_for_operator(ctx: &Ctx<'_>, st: &State) -> Result<Option<Assignment>> {
    let hello = st.hello.as_ref().expect("register ran");
    let req = WaitRequest {
        attempt_id: hello.attempt_id.clone(),
        timeout_secs: ctx.opts.wait_secs,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let asked = Instant::now();
        match ctx.client.wait(&hello.agent_token, &req).await {
            Ok(r) => {
                backoff = Duration::from_secs(1);
                match r.action {
                    // A server that answers at once (shutting down) is not
                    // asked more than once a second.
                    WaitAction::Wait if asked.elapsed() >= Duration::from_secs(1) => continue,
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
            }
            Err(e @ ApiError::Status { status, .. })
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN =>
            {
                // Another boot of this machine took the attempt over.
                tracing::warn!("{e}");
                return Ok(None);
            }
            Err(e) if e.retryable() => {
                ctx.reporter.console().note(&format!(
                    "server not reachable while waiting ({e}); asking again in {backoff:?}"
                ));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(
                    "the server does not offer the wait endpoint (older than landfall retry): \
                     PXE-boot the machine again to reinstall",
                ))
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

struct StepFailure {
    step: Step,
    error: anyhow::Error,
}

/// Run one step: `started`, then `finished` with the step's summary, or `failed`.
async fn step<T>(
    ctx: &Ctx<'_>,
    step: Step,
    start_message: &str,
    work: impl std::future::Future<Output = Result<(T, String)>>,
) -> Result<T, StepFailure> {
    let reporter = ctx.reporter;
    let (t0, w0, c0) = (
        Instant::now(),
        crate::timing::waited(),
        crate::timing::cpu(),
    );
    reporter.emit(step, EventKind::Started, start_message, Some(0.0), None);
    let result = work.await;
    ctx.timings.add(
        step,
        t0.elapsed(),
        crate::timing::waited().saturating_sub(w0),
        crate::timing::cpu().since(c0),
    );
    match result {
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

/// A step with nothing to do: `finished` at once with why.
fn skip(ctx: &Ctx<'_>, step: Step, why: &str) {
    ctx.reporter
        .emit(step, EventKind::Finished, why, Some(1.0), None);
}

/// What a failed event carries besides its message: `{"security": true}` for
/// an interception alarm, so the server marks the machine compromised; the
/// class, hint and last lines of a failed `nixos-install`.
fn failure_data(error: &anyhow::Error) -> Option<serde_json::Value> {
    if let Some(f) = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::install::nixos_install::InstallFailure>())
    {
        return Some(f.event_data());
    }
    error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::secrets::SecretsError>())
        .filter(|e| e.is_security_alarm())
        .map(|e| e.event_data())
}

/// Run the steps of [`ORDER`] from index `from`.
async fn steps(ctx: &Ctx<'_>, st: &mut State, from: usize) -> Result<(), StepFailure> {
    let (cfg, opts, reporter) = (ctx.cfg, ctx.opts, ctx.reporter);
    for &s in &ORDER[from..] {
        match s {
            Step::Detect => {
                let inventory = step(ctx, s, "detecting hardware", detect(opts)).await?;
                reporter.console().set_ip(primary_ip(&inventory));
                st.inventory = Some(inventory);
            }
            Step::Register => {
                let inventory = st.inventory.clone().expect("detect ran");
                let hello = step(
                    ctx,
                    s,
                    &format!("registering with {}", cfg.server),
                    register(cfg, opts, ctx.client, reporter, inventory),
                )
                .await?;
                st.hello = Some(hello);
            }
            Step::Secrets => {
                let a = st.assignment();
                let from_bundle = a.secret_files.iter().any(|f| f.from.starts_with("bundle:"));
                st.fetched = match (&a.vault, from_bundle) {
                    (Some(vault), _) => Some(
                        step(
                            ctx,
                            s,
                            &format!("fetching secrets from {}", vault.address),
                            secrets_step(opts, vault, a),
                        )
                        .await?,
                    ),
                    (None, true) => {
                        let path = bundle_path(cfg, opts);
                        Some(
                            step(
                                ctx,
                                s,
                                &format!("opening the age bundle {}", path.display()),
                                bundle_step(path, opts, reporter, a),
                            )
                            .await?,
                        )
                    }
                    (None, false) => {
                        skip(ctx, s, "no secrets assigned");
                        None
                    }
                };
            }
            Step::Disks => {
                let a = st.assignment();
                let Some(layout) = &a.disko else {
                    skip(ctx, s, "no layout assigned: disks left as they are");
                    continue;
                };
                // LUKS keys named by the layout come from the secrets, never from argv.
                let keys = crate::disk::apply::Keys {
                    by_path: st.fetched.as_ref().map(luks_keys).unwrap_or_default(),
                };
                let applied = step(
                    ctx,
                    s,
                    &format!(
                        "preparing disks from layout {}",
                        a.layout.as_deref().unwrap_or("(unnamed)")
                    ),
                    disk_step(
                        reporter,
                        a,
                        layout,
                        st.inventory.as_ref().expect("detect ran"),
                        crate::disk::ApplyOptions {
                            root: opts.target_root.clone(),
                            keys: std::sync::Arc::new(keys),
                            state_dir: opts.state_dir.clone(),
                            ..Default::default()
                        },
                        Some((
                            opts.state_dir.as_path(),
                            st.hello.as_ref().expect("register ran").attempt_id.as_str(),
                        )),
                    ),
                )
                .await?;
                st.disks = Some(applied);
            }
            Step::Configure => {
                let a = st.assignment();
                let Some(applied) = &st.disks else {
                    if !a.secret_files.is_empty() || a.install.is_some() {
                        let error = anyhow::anyhow!(
                            "the role has secret files or an install target but no layout: there \
                             is no target to write into; give the role a layout"
                        );
                        reporter.emit(s, EventKind::Failed, format!("{error:#}"), None, None);
                        return Err(StepFailure { step: s, error });
                    }
                    skip(ctx, s, "no layout: nothing to configure");
                    continue;
                };
                step(
                    ctx,
                    s,
                    &format!(
                        "writing the configuration under {}",
                        opts.target_root.display()
                    ),
                    configure_step(
                        cfg,
                        opts,
                        st.hello.as_ref().expect("register ran"),
                        st.inventory.as_ref().expect("detect ran"),
                        applied,
                        st.fetched.as_ref(),
                    ),
                )
                .await?;
            }
            Step::Install => {
                let a = st.assignment();
                let Some(target) = &a.install else {
                    skip(ctx, s, "no install target assigned: the disks and files are ready, nothing installed");
                    continue;
                };
                step(
                    ctx,
                    s,
                    "running nixos-install",
                    install_step(reporter, target, &opts.target_root),
                )
                .await?;
            }
            Step::Finish => {
                let Some(applied) = st.disks.as_mut() else {
                    skip(ctx, s, "nothing mounted");
                    continue;
                };
                let hello = st.hello.as_ref().expect("register ran");
                let stale = hello.assignment.verify_token.is_some()
                    && st.verify_written != hello.assignment.verify_token;
                step(ctx, s, "unmounting and closing the disks", async {
                    let mut summary = String::new();
                    if stale {
                        // A retry of this step brought a fresh verify token.
                        write_verify(cfg, opts, hello)?;
                        summary.push_str("verify.json refreshed; ");
                    }
                    let (mounts, luks) = (applied.mounts.len(), applied.luks.len());
                    tokio::task::spawn_blocking(nix::unistd::sync)
                        .await
                        .context("the sync task panicked")?;
                    // What fails to unmount stays held for a retry.
                    applied.release().await?;
                    summary.push_str(&format!(
                        "{mounts} mount(s) unmounted, {luks} LUKS mapping(s) closed"
                    ));
                    Ok(((), summary))
                })
                .await?;
                st.verify_written = hello.assignment.verify_token.clone();
                st.disks = None;
            }
            _ => unreachable!("ORDER holds only working steps"),
        }
    }
    Ok(())
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
        .unwrap_or_else(|| opts.etc_dir.join("secrets.age"))
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
