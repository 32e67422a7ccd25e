//! The admin API, used by the `landfall` CLI and the dashboard.

use serde::{Deserialize, Serialize};

use crate::{Event, Inventory, MachineState};

/// One row of `GET /api/v1/machines`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineSummary {
    pub mac: String,
    pub hostname: Option<String>,
    pub role: Option<String>,
    pub state: MachineState,
    /// The step and error when `state` is failed.
    #[serde(default)]
    pub error: Option<String>,
    pub last_event: Option<Event>,
    /// RFC 3339 time of the last state change or event.
    pub updated_at: String,
}

/// `GET /api/v1/machines/{mac}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub summary: MachineSummary,
    pub inventory: Option<Inventory>,
    pub attempts: Vec<AttemptDetail>,
    /// The last first-boot verification reported, if any.
    #[serde(default)]
    pub verify: Option<crate::verify::VerifySummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptDetail {
    pub attempt_id: String,
    pub started_at: String,
    /// Highest seq stored without a gap.
    pub acked_seq: u64,
    /// One page of the attempt's events, by seq (`GET ...?attempt=ID&events_after=SEQ&limit=N`).
    pub events: Vec<Event>,
    /// More events follow the last one in `events`: ask for the next page.
    /// (A server older than paging sends every event and no such field.)
    #[serde(default)]
    pub more_events: bool,
    /// RFC 3339 time the attempt's agent last asked for an operator's
    /// answer after a failure (`POST /agent/wait`); `None`: it never did.
    #[serde(default)]
    pub last_wait_at: Option<String>,
}

/// `POST /api/v1/machines/{mac}/retry`: the machine after the request, and
/// whether its failed installer is there to pick the retry up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryResponse {
    #[serde(flatten)]
    pub machine: MachineSummary,
    pub installer: InstallerWait,
}

/// Whether the agent of a machine's current attempt waits for an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallerWait {
    /// A wait is open now, or ended moments ago (the agent asks again at once).
    pub waiting: bool,
    /// RFC 3339 time it last asked; `None`: it never did.
    pub last_wait_at: Option<String>,
}
