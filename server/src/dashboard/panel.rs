//! The step list and progress of an install attempt, folded from its events
//! as the machine's console panel draws them (agent/src/report/console.rs):
//! the page renders it, and each live viewer keeps one up to date.

use landfall_proto::{Event, EventKind, FailureData, Step};

/// The pipeline's steps in the agent's order (agent/src/pipeline.rs), with
/// the console's titles. `verify` runs at first boot (its checks are shown
/// apart) and `done` is the terminal event.
pub const STEPS: [(Step, &str); 7] = [
    (Step::Detect, "Detect hardware"),
    (Step::Register, "Register with the server"),
    (Step::Secrets, "Fetch secrets"),
    (Step::Disks, "Partition, format and mount disks"),
    (Step::Configure, "Write the configuration, place secrets"),
    (Step::Install, "Install NixOS (nixos-install)"),
    (Step::Finish, "Unmount and close the disks"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    /// A later step started while this one never did.
    Skipped,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepLine {
    pub step: Step,
    pub title: &'static str,
    pub state: StepState,
    /// The step's fraction done while it runs.
    pub progress: Option<f32>,
    /// Its last message (the finished one says what it did).
    pub message: String,
    pub started: Option<String>,
    pub ended: Option<String>,
}

/// Why the attempt failed, from its `failed` events' data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure {
    /// The failed step's name.
    pub step: Option<String>,
    /// The failed event's message.
    pub message: String,
    pub data: FailureData,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub attempt: Option<String>,
    pub steps: Vec<StepLine>,
    /// The highest seq applied.
    pub last_seq: u64,
    pub last_message: String,
    /// The terminal event: `Some(true)` finished, `Some(false)` failed.
    pub ended: Option<bool>,
    pub failure: Option<Failure>,
}

impl Panel {
    pub fn new(attempt: Option<String>) -> Self {
        Self {
            attempt,
            steps: STEPS
                .iter()
                .map(|&(step, title)| StepLine {
                    step,
                    title,
                    state: StepState::Pending,
                    progress: None,
                    message: String::new(),
                    started: None,
                    ended: None,
                })
                .collect(),
            last_seq: 0,
            last_message: String::new(),
            ended: None,
            failure: None,
        }
    }

    /// Apply one event of the attempt (any order of arrival; a seq already
    /// applied is skipped by the caller through `last_seq`).
    pub fn apply(&mut self, e: &Event) {
        self.last_seq = self.last_seq.max(e.seq);
        if !e.message.is_empty() && e.kind != EventKind::Log {
            self.last_message = e.message.clone();
        }
        if e.kind == EventKind::Failed {
            self.note_failure(e);
        }
        if e.step == Step::Done {
            match e.kind {
                EventKind::Finished => {
                    self.ended = Some(true);
                    for s in &mut self.steps {
                        if matches!(s.state, StepState::Pending | StepState::Running) {
                            s.state = if s.started.is_some() {
                                StepState::Done
                            } else {
                                StepState::Skipped
                            };
                            s.progress = None;
                        }
                    }
                }
                EventKind::Failed => self.ended = Some(false),
                _ => {}
            }
            return;
        }
        let Some(i) = self.steps.iter().position(|s| s.step == e.step) else {
            return;
        };
        let line = &mut self.steps[i];
        match e.kind {
            EventKind::Started | EventKind::Progress | EventKind::Log => {
                if line.state != StepState::Failed {
                    line.state = StepState::Running;
                }
                if line.started.is_none() {
                    line.started = Some(e.time.clone());
                }
                if let Some(p) = e.progress {
                    line.progress = Some(p.clamp(0.0, 1.0));
                } else if e.kind == EventKind::Started {
                    line.progress = Some(0.0);
                }
                if e.kind != EventKind::Log && !e.message.is_empty() {
                    line.message = e.message.clone();
                }
            }
            EventKind::Finished | EventKind::Failed => {
                line.state = if e.kind == EventKind::Finished {
                    StepState::Done
                } else {
                    StepState::Failed
                };
                line.started.get_or_insert_with(|| e.time.clone());
                line.ended = Some(e.time.clone());
                line.progress = None;
                if !e.message.is_empty() {
                    line.message = e.message.clone();
                }
            }
            EventKind::Unknown => return,
        }
        // A step that never started before one that did was skipped.
        for s in &mut self.steps[..i] {
            if s.state == StepState::Pending {
                s.state = StepState::Skipped;
            }
        }
    }

    /// The step's own failed event carries the class, hint and last lines;
    /// the terminal one the step and the error: keep what each says.
    fn note_failure(&mut self, e: &Event) {
        let data = FailureData::from_data(e.data.as_ref());
        let f = self.failure.get_or_insert_with(Failure::default);
        if e.step != Step::Done || f.message.is_empty() {
            f.message = e.message.clone();
        }
        if e.step != Step::Done && e.step != Step::Unknown {
            f.step.get_or_insert_with(|| e.step.as_str().to_owned());
        }
        if let Some(s) = &data.step {
            f.step = Some(s.clone());
        }
        let d = &mut f.data;
        d.error = d.error.take().or(data.error);
        d.class = d.class.or(data.class);
        d.hint = d.hint.take().or(data.hint);
        d.command = d.command.take().or(data.command);
        d.exit_code = d.exit_code.or(data.exit_code);
        if d.last_lines.is_empty() {
            d.last_lines = data.last_lines;
        }
        d.security |= data.security;
    }

    /// The running step, if any.
    pub fn current(&self) -> Option<&StepLine> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.state == StepState::Running)
    }

    /// Fraction of the whole install done: the finished steps and the
    /// running one's fraction, out of the steps.
    pub fn fraction(&self) -> f32 {
        if self.ended == Some(true) {
            return 1.0;
        }
        let n = self.steps.len() as f32;
        let done = self
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Done | StepState::Skipped))
            .count() as f32;
        let running = self.current().and_then(|s| s.progress).unwrap_or(0.0);
        ((done + running) / n).clamp(0.0, 1.0)
    }
}

/// Whether an event is a line of a program's output (`nixos-install`'s
/// lines are `log` events, or `progress` ones when they move the estimate).
pub fn is_output(e: &Event) -> bool {
    e.kind == EventKind::Log
        || (e.kind == EventKind::Progress && e.step == Step::Install && !e.message.is_empty())
}

/// The fleet page's estimate from an attempt's last event alone: the
/// steps before its step done, and its step's fraction.
pub fn fraction_at(step: Step, kind: EventKind, progress: Option<f32>) -> f32 {
    if step == Step::Done {
        return if kind == EventKind::Finished {
            1.0
        } else {
            0.0
        };
    }
    let Some(i) = STEPS.iter().position(|(s, _)| *s == step) else {
        return 0.0;
    };
    let within = match kind {
        EventKind::Finished => 1.0,
        _ => progress.unwrap_or(0.0).clamp(0.0, 1.0),
    };
    (i as f32 + within) / STEPS.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::FailureClass;

    fn ev(seq: u64, step: Step, kind: EventKind, progress: Option<f32>, msg: &str) -> Event {
        Event {
            seq,
            time: format!("2026-01-01T00:00:{seq:02}Z"),
            step,
            kind,
            progress,
            message: msg.into(),
            data: None,
        }
    }

    #[test]
    fn steps_follow_the_events_like_the_console_panel() {
        let mut p = Panel::new(Some("a1".into()));
        p.apply(&ev(1, Step::Detect, EventKind::Started, None, "detecting"));
        p.apply(&ev(2, Step::Detect, EventKind::Finished, None, "2 disks"));
        p.apply(&ev(3, Step::Register, EventKind::Finished, None, "ws-01"));
        // secrets never ran: skipped once disks started.
        p.apply(&ev(4, Step::Disks, EventKind::Progress, Some(0.5), "mkfs"));
        let s = |p: &Panel, st: Step| p.steps.iter().find(|l| l.step == st).unwrap().state;
        assert_eq!(s(&p, Step::Detect), StepState::Done);
        assert_eq!(s(&p, Step::Secrets), StepState::Skipped);
        assert_eq!(s(&p, Step::Disks), StepState::Running);
        assert_eq!(p.current().unwrap().step, Step::Disks);
        assert!((p.fraction() - 3.5 / 7.0).abs() < 1e-6);
        assert_eq!(p.last_message, "mkfs");

        let data = FailureData {
            class: Some(FailureClass::Build),
            hint: Some("fix HOST".into()),
            last_lines: vec!["error: builder failed".into()],
            ..Default::default()
        };
        let mut failed = ev(
            5,
            Step::Install,
            EventKind::Failed,
            None,
            "nixos-install failed",
        );
        failed.data = data.to_data();
        p.apply(&failed);
        let mut done = ev(6, Step::Done, EventKind::Failed, None, "install failed");
        done.data = FailureData {
            step: Some("install".into()),
            error: Some("nixos-install exited 1".into()),
            ..Default::default()
        }
        .to_data();
        p.apply(&done);
        assert_eq!(p.ended, Some(false));
        let f = p.failure.as_ref().unwrap();
        assert_eq!(f.step.as_deref(), Some("install"));
        assert_eq!(f.message, "nixos-install failed");
        assert_eq!(f.data.class, Some(FailureClass::Build));
        assert_eq!(f.data.error.as_deref(), Some("nixos-install exited 1"));
        assert_eq!(f.data.last_lines, ["error: builder failed"]);
        assert_eq!(s(&p, Step::Install), StepState::Failed);
    }

    #[test]
    fn the_fleet_estimate_counts_steps_before_the_last_event() {
        assert_eq!(fraction_at(Step::Detect, EventKind::Started, None), 0.0);
        assert!(
            (fraction_at(Step::Install, EventKind::Progress, Some(0.5)) - 5.5 / 7.0).abs() < 1e-6
        );
        assert_eq!(fraction_at(Step::Done, EventKind::Finished, None), 1.0);
        assert!(is_output(&ev(1, Step::Install, EventKind::Log, None, "x")));
        assert!(is_output(&ev(
            1,
            Step::Install,
            EventKind::Progress,
            Some(0.1),
            "copying"
        )));
        assert!(!is_output(&ev(
            1,
            Step::Disks,
            EventKind::Progress,
            Some(0.1),
            "mkfs"
        )));
    }
}
