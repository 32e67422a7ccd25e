//! Wire types shared by `landfall-agent` and the `landfall` server.
//!
//! serde only, no I/O. Every enum a newer peer may extend carries an
//! `Unknown` variant with `#[serde(other)]`, and every struct field that was
//! added after v1 has `#[serde(default)]`, so an older reader keeps working.

pub mod admin;
pub mod agent;
pub mod error;
pub mod event;
pub mod failure;
pub mod inventory;
pub mod names;
pub mod notify;
pub mod verify;

pub use agent::{
    Assignment, EventsRequest, EventsResponse, HelloRequest, HelloResponse, InstallTarget,
    LuksUnlock, SecretFile, SecretString, VaultAssignment, WaitAction, WaitRequest, WaitResponse,
    WipePolicy,
};
pub use error::{ErrorBody, ErrorCode};
pub use event::{Event, EventKind, Step};
pub use failure::{DoneData, FailureClass, FailureData, StepTiming, Timing};
pub use inventory::Inventory;
pub use verify::{Check, CheckResult, NamedCheck, VerifyConfig, VerifyRequest, VerifyResponse};

/// Version of the agent <-> server protocol described in `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Path prefix of the agent API.
pub const AGENT_API: &str = "/api/v1/agent";

/// Lifecycle of a machine as the server records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Listed in the server's configuration (`[[machines]]`) and never seen:
    /// shown by the admin API, never stored; its first PXE boot installs.
    Expected,
    /// Booted and seen, not yet given an assignment (unknown MAC without auto-enrol).
    Discovered,
    /// Has an assignment; the next PXE boot installs.
    Assigned,
    /// An agent said hello and is working through the pipeline.
    Installing,
    /// The agent's terminal event said success; next PXE boot goes `local`.
    Installed,
    /// First-boot verification passed.
    Ready,
    /// First-boot verification ran and some checks failed.
    Degraded,
    /// The install failed; PXE boot holds until an operator acts.
    Failed,
    /// The install hit a security alarm (e.g. a wrap token already used).
    Compromised,
    /// An operator asked for a reinstall; next PXE boot installs.
    ReinstallRequested,
    /// An operator asked the failed, still waiting agent to run again from
    /// the failed step (`landfall retry`); PXE boot holds meanwhile.
    RetryRequested,
    /// A hello presented identifying facts (DMI UUID and serial, disk
    /// serials, NIC MACs) other than those pinned at the first install:
    /// held until an operator runs `landfall approve`.
    IdentityHeld,
    #[serde(other)]
    Unknown,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expected => "expected",
            Self::Discovered => "discovered",
            Self::Assigned => "assigned",
            Self::Installing => "installing",
            Self::Installed => "installed",
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Compromised => "compromised",
            Self::ReinstallRequested => "reinstall_requested",
            Self::RetryRequested => "retry_requested",
            Self::IdentityHeld => "identity_held",
            Self::Unknown => "unknown",
        }
    }

    /// Parse the string form stored in a database or given on a command line.
    pub fn parse(s: &str) -> Self {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a PXE-booting machine is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootAction {
    Install,
    Local,
    Hold,
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_state_round_trips_and_tolerates_new_values() {
        for s in [
            MachineState::Discovered,
            MachineState::Installing,
            MachineState::ReinstallRequested,
            MachineState::IdentityHeld,
        ] {
            assert_eq!(MachineState::parse(s.as_str()), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(MachineState::parse("teleported"), MachineState::Unknown);
    }
}
