//! The step registry: a pipeline is a list of registered steps, each with its
//! id, console title, where a retry after its failure starts, and its body.
//! A step's output is a typed [`StepHandle<T>`] that later steps read
//! through their [`Cx`] (as omicron installinator's `engine.new_step(...)
//! .register()` returns a `StepHandle<T>`): no `Option` per output, no
//! "register ran" expectations. The registry runs the steps in order, emits
//! each step's `started` / `finished` / `failed` events, times every run and
//! sends every failure through one path ([`Steps::run_from`]).
//!
//! Adding a step is one registration:
//!
//! ```text
//! steps.new_step(StepId::extension("probe"), "Probe the target", |cx| {
//!     Start::run("probing", async { Ok(((), "nothing to probe".to_owned())) })
//! })
//! .before(Step::Install)
//! .register();
//! ```

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use landfall_proto::{EventKind, Step, StepTiming, Timing};

use crate::cmdline::AgentConfig;
use crate::options::RunOptions;
use crate::report::{Client, Reporter};

/// A step's id: the wire's [`Step`] and the step's name. A built-in step's
/// name is its wire form; an extension step (a test's, or a new one before
/// the protocol names it) goes on the wire as `unknown`, which every server
/// reads as [`Step::Unknown`] (`#[serde(other)]`), and its name is in the
/// failure data's `step`, the timing and the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepId {
    wire: Step,
    name: &'static str,
}

impl StepId {
    /// A step the registry knows only by name.
    pub const fn extension(name: &'static str) -> Self {
        Self {
            wire: Step::Unknown,
            name,
        }
    }

    pub fn wire(self) -> Step {
        self.wire
    }

    pub fn name(self) -> &'static str {
        self.name
    }
}

impl From<Step> for StepId {
    fn from(wire: Step) -> Self {
        Self {
            wire,
            name: wire.as_str(),
        }
    }
}

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What every step can use: the agent's configuration, options, the
/// server's client and the reporter.
pub struct Env {
    pub cfg: AgentConfig,
    pub opts: RunOptions,
    pub client: Client,
    pub reporter: Reporter,
}

/// The output of a registered step, readable by the steps registered after it.
pub struct StepHandle<T> {
    slot: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for StepHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for StepHandle<T> {}

type Erased = Box<dyn Any + Send + Sync>;
type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// How a step begins, decided from the outputs so far: skip it (`finished`
/// at once with why, no `started`), fail it before it starts (`failed`, no
/// `started`), or run it (`started` with the message, then the work, whose
/// value is the step's output and whose text is the `finished` message).
pub enum Start<'c, T> {
    Skip(T, String),
    Fail(anyhow::Error),
    Run(String, BoxFuture<'c, Result<(T, String)>>),
}

impl<'c, T> Start<'c, T> {
    pub fn run(
        message: impl Into<String>,
        work: impl Future<Output = Result<(T, String)>> + Send + 'c,
    ) -> Self {
        Self::Run(message.into(), Box::pin(work))
    }

    pub fn skip(value: T, why: impl Into<String>) -> Self {
        Self::Skip(value, why.into())
    }
}

type Body = Box<dyn for<'c> Fn(&'c mut Cx) -> Start<'c, Erased> + Send + Sync>;

struct Def {
    id: StepId,
    title: &'static str,
    /// Where a retry after this step's failure starts (`None`: here).
    retry_from: Option<StepId>,
    slot: usize,
    body: Body,
}

/// A step's view of the run: the environment and the outputs of the steps
/// before it.
pub struct Cx {
    env: Arc<Env>,
    outputs: Vec<Option<Erased>>,
    /// Slot -> position in the order, and the position running now.
    positions: Vec<usize>,
    current: usize,
}

impl Cx {
    pub fn env(&self) -> &Env {
        &self.env
    }

    pub fn cfg(&self) -> &AgentConfig {
        &self.env.cfg
    }

    pub fn opts(&self) -> &RunOptions {
        &self.env.opts
    }

    pub fn reporter(&self) -> &Reporter {
        &self.env.reporter
    }

    /// The output of a step registered before this one. A step runs only
    /// after every step before it succeeded (a retry starts at or before the
    /// failed step), so the output is there.
    pub fn get<T: 'static>(&self, h: StepHandle<T>) -> &T {
        self.check_order(h.slot);
        self.output(h)
            .unwrap_or_else(|| unreachable!("a step runs after the steps before it"))
    }

    /// The same, to change it (the finish step takes the disks).
    pub fn get_mut<T: 'static>(&mut self, h: StepHandle<T>) -> &mut T {
        self.check_order(h.slot);
        self.output_mut(h)
            .unwrap_or_else(|| unreachable!("a step runs after the steps before it"))
    }

    fn check_order(&self, slot: usize) {
        assert!(
            self.positions[slot] < self.current,
            "a step reads the output of a step registered after it"
        );
    }

    /// A step's output when it has run (the runner, after a failure).
    pub fn output<T: 'static>(&self, h: StepHandle<T>) -> Option<&T> {
        self.outputs[h.slot].as_ref()?.downcast_ref()
    }

    fn output_mut<T: 'static>(&mut self, h: StepHandle<T>) -> Option<&mut T> {
        self.outputs[h.slot].as_mut()?.downcast_mut()
    }

    /// Put a new value in a step's output (the runner: a retry's assignment).
    pub fn replace<T: Send + Sync + 'static>(&mut self, h: StepHandle<T>, value: T) {
        self.outputs[h.slot] = Some(Box::new(value));
    }
}

/// The registered steps, in order.
#[derive(Default)]
pub struct Steps {
    defs: Vec<Def>,
}

/// A step being registered: [`NewStep::register`] adds it (at the end, or
/// before a named step) and returns its output's handle.
#[must_use = "a step is added by register()"]
pub struct NewStep<'s, T> {
    steps: &'s mut Steps,
    def: Def,
    before: Option<StepId>,
    _t: PhantomData<fn() -> T>,
}

impl<T> NewStep<'_, T> {
    /// A retry after this step failed starts at `earlier` (registered
    /// before it), not at this step.
    pub fn retry_from(mut self, earlier: impl Into<StepId>) -> Self {
        self.def.retry_from = Some(earlier.into());
        self
    }

    /// Run it just before `later` instead of last.
    pub fn before(mut self, later: impl Into<StepId>) -> Self {
        self.before = Some(later.into());
        self
    }

    pub fn register(self) -> StepHandle<T> {
        let slot = self.def.slot;
        let at = match self.before {
            Some(id) => self
                .steps
                .position(id)
                .unwrap_or_else(|| panic!("no step {id} to register {} before", self.def.id)),
            None => self.steps.defs.len(),
        };
        assert!(
            self.steps.position(self.def.id).is_none(),
            "step {} registered twice",
            self.def.id
        );
        if let Some(earlier) = self.def.retry_from {
            assert!(
                self.steps.position(earlier).is_some_and(|p| p < at),
                "step {} retries from {earlier}, which is not registered before it",
                self.def.id
            );
        }
        self.steps.defs.insert(at, self.def);
        StepHandle {
            slot,
            _t: PhantomData,
        }
    }
}

/// A step's failure, as the runner sees it.
#[derive(Debug)]
pub struct StepFailure {
    pub id: StepId,
    /// Its position in the order.
    pub position: usize,
    pub error: anyhow::Error,
}

impl Steps {
    pub fn new_step<T, F>(
        &mut self,
        id: impl Into<StepId>,
        title: &'static str,
        body: F,
    ) -> NewStep<'_, T>
    where
        T: Send + Sync + 'static,
        F: for<'c> Fn(&'c mut Cx) -> Start<'c, T> + Send + Sync + 'static,
    {
        let slot = self.defs.iter().map(|d| d.slot + 1).max().unwrap_or(0);
        let body: Body = Box::new(erase(body));
        NewStep {
            def: Def {
                id: id.into(),
                title,
                retry_from: None,
                slot,
                body,
            },
            steps: self,
            before: None,
            _t: PhantomData,
        }
    }

    fn position(&self, id: StepId) -> Option<usize> {
        self.defs.iter().position(|d| d.id == id)
    }

    /// Each step's id and console title, in order.
    pub fn titles(&self) -> Vec<(StepId, &'static str)> {
        self.defs.iter().map(|d| (d.id, d.title)).collect()
    }

    /// The ids of the steps in order.
    pub fn ids(&self) -> Vec<StepId> {
        self.defs.iter().map(|d| d.id).collect()
    }

    /// Where a retry after the step at `failed` starts: its retry target
    /// (registered before it, [`NewStep::register`] checks), else itself.
    pub fn retry_position(&self, failed: usize) -> usize {
        self.defs[failed]
            .retry_from
            .and_then(|id| self.position(id))
            .unwrap_or(failed)
    }

    /// The context the steps run in: the environment and no output yet.
    pub fn context(&self, env: Env) -> Cx {
        let slots = self.defs.iter().map(|d| d.slot + 1).max().unwrap_or(0);
        let mut positions = vec![usize::MAX; slots];
        for (i, d) in self.defs.iter().enumerate() {
            positions[d.slot] = i;
        }
        Cx {
            env: Arc::new(env),
            outputs: (0..slots).map(|_| None).collect(),
            positions,
            current: 0,
        }
    }

    /// Run the steps from position `from` on, each timed into `timings`.
    pub async fn run_from(
        &self,
        cx: &mut Cx,
        from: usize,
        timings: &Timings,
    ) -> Result<(), StepFailure> {
        for (position, def) in self.defs.iter().enumerate().skip(from) {
            cx.current = position;
            let reporter = cx.env.reporter.clone();
            let step = def.id.wire;
            let clock = Clock::start();
            // `Ok((value, message, ran))`: `ran` false for a skipped step.
            let result = {
                let start = (def.body)(cx);
                match start {
                    Start::Skip(value, why) => Ok((value, why, false)),
                    Start::Fail(error) => Err(error),
                    Start::Run(message, work) => {
                        reporter.emit(step, EventKind::Started, message, Some(0.0), None);
                        work.await.map(|(value, summary)| (value, summary, true))
                    }
                }
            };
            match result {
                Ok((value, message, ran)) => {
                    if ran {
                        timings.add(def.id.name, clock.stop());
                    }
                    reporter.emit(step, EventKind::Finished, message, Some(1.0), None);
                    cx.outputs[def.slot] = Some(value);
                }
                Err(error) => {
                    timings.add(def.id.name, clock.stop());
                    let data = crate::failure::failure_data(&error).to_data();
                    reporter.emit(step, EventKind::Failed, format!("{error:#}"), None, data);
                    return Err(StepFailure {
                        id: def.id,
                        position,
                        error,
                    });
                }
            }
        }
        // Every step ran: the runner reads any output.
        cx.current = self.defs.len();
        Ok(())
    }
}

/// The typed body as the registry stores it.
fn erase<T, F>(body: F) -> impl for<'c> Fn(&'c mut Cx) -> Start<'c, Erased> + Send + Sync
where
    T: Send + Sync + 'static,
    F: for<'c> Fn(&'c mut Cx) -> Start<'c, T> + Send + Sync + 'static,
{
    fn boxed<T: Send + Sync + 'static>(v: T) -> Erased {
        Box::new(v)
    }
    move |cx| match body(cx) {
        Start::Skip(v, why) => Start::Skip(boxed(v), why),
        Start::Fail(e) => Start::Fail(e),
        Start::Run(m, work) => Start::Run(
            m,
            Box::pin(async move { work.await.map(|(v, s)| (boxed(v), s)) }),
        ),
    }
}

/// Wall time, time waiting on programs/server/Vault, and CPU of one run.
struct Clock {
    t0: Instant,
    w0: Duration,
    c0: crate::timing::Cpu,
}

impl Clock {
    fn start() -> Self {
        Self {
            t0: Instant::now(),
            w0: crate::timing::waited(),
            c0: crate::timing::cpu(),
        }
    }

    fn stop(self) -> RunTime {
        (
            self.t0.elapsed(),
            crate::timing::waited().saturating_sub(self.w0),
            crate::timing::cpu().since(self.c0),
        )
    }
}

/// Wall time of each step run and the part of it spent waiting on programs,
/// the server or Vault ([`crate::timing`]); a step run twice (retry) adds up.
#[derive(Debug, Default)]
pub struct Timings(std::sync::Mutex<Vec<(&'static str, RunTime)>>);

/// One run of a step: wall, waiting on tools, CPU.
type RunTime = (Duration, Duration, crate::timing::Cpu);

impl Timings {
    fn add(&self, step: &'static str, run: RunTime) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((step, run));
    }

    /// The totals as the wire's [`Timing`].
    pub fn timing(&self) -> Timing {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ms = |d: Duration| d.as_millis() as u64;
        let mut t = Timing::default();
        let (mut wall_all, mut tools_all, mut cpu_all, mut user_all) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        for (step, (wall, tools, cpu)) in v.iter() {
            let e: &mut StepTiming = t.steps.entry((*step).to_owned()).or_default();
            e.wall_ms += ms(*wall);
            e.tools_ms += ms(*tools);
            e.cpu_ms += ms(cpu.total());
            e.user_ms += ms(cpu.user);
            wall_all += *wall;
            tools_all += *tools;
            cpu_all += cpu.total();
            user_all += cpu.user;
        }
        t.wall_ms = ms(wall_all);
        t.agent_ms = ms(wall_all.saturating_sub(tools_all));
        t.tools_ms = ms(tools_all);
        t.cpu_ms = ms(cpu_all);
        t.user_ms = ms(user_all);
        t
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cmdline::{ConsoleMode, FinalAction};
    use crate::report::{Console, Outbox};

    fn env(dir: &Path) -> Env {
        let server = "http://127.0.0.1:9";
        Env {
            cfg: AgentConfig {
                server: server.into(),
                token: String::new(),
                final_action: FinalAction::None,
                console: ConsoleMode::Lines,
                bundle: None,
                server_ca_sha256: None,
                insecure_http: true,
            },
            opts: RunOptions::default(),
            client: Client::new(server, &crate::report::ServerTrust::InsecureHttp).unwrap(),
            reporter: Reporter::new(
                Outbox::persistent(dir.join("outbox.json")),
                Console::new(Box::new(std::io::sink()), false, ConsoleMode::Lines, &[]),
            ),
        }
    }

    /// `step kind message` of every event recorded (none sent: unbound).
    fn events(dir: &Path) -> Vec<String> {
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("outbox.json")).unwrap()).unwrap();
        saved["pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {}", e["step"], e["kind"], e["message"]).replace('"', ""))
            .collect()
    }

    #[tokio::test]
    async fn outputs_reach_later_steps_and_a_retry_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = Steps::default();
        let two = steps
            .new_step(Step::Detect, "Two", |_| {
                Start::run("making", async { Ok((2u32, "made 2".to_owned())) })
            })
            .register();
        let tries = Arc::new(AtomicUsize::new(0));
        let seen = tries.clone();
        steps
            .new_step(Step::Register, "Times ten", move |cx| {
                let cx: &Cx = cx;
                let n = seen.fetch_add(1, Ordering::SeqCst);
                Start::run("multiplying", async move {
                    anyhow::ensure!(n > 0, "first try fails");
                    let v = *cx.get(two) * 10;
                    Ok((v, format!("got {v}")))
                })
            })
            .register();
        steps
            .new_step(Step::Secrets, "Nothing", |_| {
                Start::skip((), "nothing to do")
            })
            .register();
        let mut cx = steps.context(env(dir.path()));
        let timings = Timings::default();

        let f = steps.run_from(&mut cx, 0, &timings).await.unwrap_err();
        assert_eq!((f.id, f.position), (Step::Register.into(), 1));
        assert_eq!(steps.retry_position(f.position), 1);
        assert_eq!(cx.output(two), Some(&2));
        steps.run_from(&mut cx, 1, &timings).await.unwrap();
        assert_eq!(
            events(dir.path()),
            [
                "detect started making",
                "detect finished made 2",
                "register started multiplying",
                "register failed first try fails",
                "register started multiplying",
                "register finished got 20",
                "secrets finished nothing to do",
            ]
        );
        // Each run is timed, the failed one too; a skipped step is not.
        let t = timings.timing();
        assert_eq!(
            t.steps.keys().collect::<Vec<_>>(),
            ["detect", "register"],
            "{t:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_before_the_start_is_reported_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = Steps::default();
        steps
            .new_step(StepId::extension("check"), "Check", |_| {
                Start::<()>::Fail(anyhow::anyhow!("nothing to check"))
            })
            .register();
        let mut cx = steps.context(env(dir.path()));
        let timings = Timings::default();
        let f = steps.run_from(&mut cx, 0, &timings).await.unwrap_err();
        assert_eq!(f.id.name(), "check");
        assert_eq!(events(dir.path()), ["unknown failed nothing to check"]);
        assert!(timings.timing().steps.contains_key("check"));
    }

    #[tokio::test]
    #[should_panic(expected = "registered after it")]
    async fn a_step_cannot_read_the_output_of_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut steps = Steps::default();
        let later = steps
            .new_step(Step::Install, "Later", |_| {
                Start::run("", async { Ok((1u8, String::new())) })
            })
            .register();
        steps
            .new_step(Step::Configure, "Earlier", move |cx| {
                let v = *cx.get(later);
                Start::skip(v, "")
            })
            .before(Step::Install)
            .register();
        let mut cx = steps.context(env(dir.path()));
        let _ = steps.run_from(&mut cx, 0, &Timings::default()).await;
    }

    #[test]
    #[should_panic(expected = "not registered before it")]
    fn a_retry_target_is_registered_before_the_step() {
        let mut steps = Steps::default();
        steps
            .new_step(Step::Install, "Install", |_| Start::skip((), ""))
            .retry_from(Step::Configure)
            .register();
    }
}
