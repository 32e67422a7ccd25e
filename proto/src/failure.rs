//! What a failed event carries in its `data`, and the agent's timing (also
//! the `data` of the successful terminal event).
//!
//! Every field is `#[serde(default)]` and the enums carry `Unknown`, so an
//! older reader reads a newer writer's data and the other way round; fields
//! with nothing to say are left out, so the JSON keeps the shape it had when
//! it was written by hand (`{"step", "error", "timing", "security", "class",
//! "hint", "command", "exit_code", "last_lines"}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `data` of a `failed` event: of the failed step's own event (what the
/// error says besides its message), and of the terminal `done` event (also
/// which step failed, the error and the timing so far).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailureData {
    /// The failed step's name (its wire form for the protocol's steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The error chain (the terminal event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// A security alarm (e.g. an intercepted Vault wrap token): a terminal
    /// failure with it moves the machine to `compromised`, and the agent
    /// does not wait for a retry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub security: bool,
    /// What a failed `nixos-install` was, as far as its output tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<FailureClass>,
    /// One sentence for the technician (may name the machine as `HOST`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The failed command line, quoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its exit code (absent when it was killed by a signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The failed program's last lines of output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_lines: Vec<String>,
    /// A server-raised identity alarm: its kind (e.g. `TokenClaimed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// The address of the attempt's first claimant, as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_client: Option<String>,
    /// The address of the client that raised the alarm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_client: Option<String>,
    /// Who wrote the event when it was not the agent (`server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_by: Option<String>,
}

impl FailureData {
    /// As an event's `data`: `None` when there is nothing to say.
    pub fn to_data(&self) -> Option<serde_json::Value> {
        if *self == Self::default() {
            return None;
        }
        serde_json::to_value(self).ok()
    }

    /// From an event's `data`: what is not failure data (or does not
    /// parse) reads as nothing.
    pub fn from_data(data: Option<&serde_json::Value>) -> Self {
        data.and_then(|d| serde_json::from_value(d.clone()).ok())
            .unwrap_or_default()
    }
}

/// The `data` of the terminal `done` `finished` event: `{"timing": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DoneData {
    pub timing: Timing,
}

/// What went wrong in `nixos-install`, as far as the output tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The configuration did not evaluate (a Nix error in the fleet or the
    /// generated files, a missing attribute): fix the fleet, `landfall retry`.
    Evaluation,
    /// A derivation failed to build.
    Build,
    /// A substituter or source could not be fetched (network, cache, 404).
    Download,
    /// Installing GRUB / systemd-boot failed.
    Bootloader,
    /// Nothing recognisable: read the last lines (also a newer writer's class).
    #[serde(other)]
    Unknown,
}

/// Where the agent's time went: per step and in total, in milliseconds. A
/// step run twice (a retry) adds up. `agent_ms` is wall time not spent
/// waiting on programs, the server or Vault (`tools_ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    pub steps: BTreeMap<String, StepTiming>,
    pub wall_ms: u64,
    pub agent_ms: u64,
    pub tools_ms: u64,
    pub cpu_ms: u64,
    pub user_ms: u64,
}

/// One step's part of [`Timing`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepTiming {
    pub wall_ms: u64,
    pub tools_ms: u64,
    pub cpu_ms: u64,
    pub user_ms: u64,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evaluation => "evaluation",
            Self::Build => "build",
            Self::Download => "download",
            Self::Bootloader => "bootloader",
            Self::Unknown => "unknown",
        }
    }

    /// One sentence for the technician.
    pub fn hint(self) -> &'static str {
        match self {
            Self::Evaluation => "the configuration does not evaluate: fix the fleet flake (or the role's install target), then `landfall retry HOST`",
            Self::Build => "a derivation failed to build: read the builder's log lines, fix the package or pin, then `landfall retry HOST`",
            Self::Download => "a download failed: check the binary cache / network from the installer, then `landfall retry HOST`",
            Self::Bootloader => "installing the boot loader failed: check the firmware mode and the boot partition of the layout, then `landfall retry HOST`",
            Self::Unknown => "read the last lines of output, then `landfall retry HOST` or `landfall reinstall HOST`",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_shapes_read_and_write_the_same() {
        // What the agent wrote by hand before these types, read as them.
        let old = serde_json::json!({
            "step": "install", "error": "boom", "security": true,
            "class": "build", "hint": "h", "command": "nixos-install", "exit_code": null,
            "last_lines": ["a"],
            "timing": {"steps": {"detect": {"wall_ms": 1, "tools_ms": 0, "cpu_ms": 0, "user_ms": 0}},
                       "wall_ms": 1, "agent_ms": 1, "tools_ms": 0, "cpu_ms": 0, "user_ms": 0},
        });
        let d = FailureData::from_data(Some(&old));
        assert!(d.security);
        assert_eq!(d.class, Some(FailureClass::Build));
        assert_eq!(d.timing.as_ref().unwrap().steps["detect"].wall_ms, 1);
        let back = d.to_data().unwrap();
        assert_eq!(back["step"], "install");
        assert_eq!(back["security"], true);
        assert_eq!(back["last_lines"][0], "a");
        assert_eq!(back["timing"]["agent_ms"], 1);
        // Nothing to say: no data; an alarm alone is `{"security": true}`.
        assert_eq!(FailureData::default().to_data(), None);
        let alarm = FailureData {
            security: true,
            ..Default::default()
        };
        assert_eq!(alarm.to_data(), Some(serde_json::json!({"security": true})));
    }

    #[test]
    fn a_newer_writer_and_foreign_data_read() {
        let newer = serde_json::json!({"step": "probe", "class": "firmware", "more": 1});
        let d = FailureData::from_data(Some(&newer));
        assert_eq!(d.step.as_deref(), Some("probe"));
        assert_eq!(d.class, Some(FailureClass::Unknown));
        assert!(!d.security);
        assert_eq!(
            FailureData::from_data(Some(&serde_json::json!([1]))),
            FailureData::default()
        );
    }
}
