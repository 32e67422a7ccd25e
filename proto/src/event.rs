//! Progress events: what the agent reports, step by step.

use serde::{Deserialize, Serialize};

/// The highest event seq a server accepts (2^53 - 1: exact as a JSON number
/// in every reader, and far below SQLite's i64). Seqs count from 1.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// The pipeline's steps, in order. The agent's `pipeline.rs` decides which run.
/// A closed set on the wire: a step the agent registers beyond it (a test's,
/// or one not yet named here) is sent as `unknown`, which every server,
/// older ones included, stores and acks (`#[serde(other)]`); its name is in
/// the failure data's `step` and the timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Detect,
    Register,
    Disks,
    Secrets,
    Configure,
    Install,
    Finish,
    Verify,
    /// The terminal step: `finished` means the whole install succeeded, `failed`
    /// means it stopped (the event's `data` says which step and why).
    Done,
    #[serde(other)]
    Unknown,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detect => "detect",
            Self::Register => "register",
            Self::Disks => "disks",
            Self::Secrets => "secrets",
            Self::Configure => "configure",
            Self::Install => "install",
            Self::Finish => "finish",
            Self::Verify => "verify",
            Self::Done => "done",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Progress,
    Log,
    Finished,
    Failed,
    #[serde(other)]
    Unknown,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Log => "log",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// One event. `seq` starts at 1 and is per attempt; the server stores each seq once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339 UTC timestamp taken by the agent.
    pub time: String,
    pub step: Step,
    pub kind: EventKind,
    /// Fraction done of this step, 0.0 ..= 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Event {
    /// The terminal event of an attempt: `done` finished or failed.
    pub fn is_terminal(&self) -> bool {
        self.step == Step::Done && matches!(self.kind, EventKind::Finished | EventKind::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_agent_step_and_kind_parse_as_unknown() {
        let e: Event = serde_json::from_str(
            r#"{"seq":3,"time":"2026-01-01T00:00:00Z","step":"firmware_update","kind":"paused","message":"x"}"#,
        )
        .unwrap();
        assert_eq!(e.step, Step::Unknown);
        assert_eq!(e.kind, EventKind::Unknown);
        assert!(!e.is_terminal());
    }
}
