//! The agent API: `hello` and `events` (see docs/protocol.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Inventory};

/// `POST /api/v1/agent/hello`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// The one-time boot token from the kernel command line.
    pub boot_token: String,
    pub agent_version: String,
    #[serde(default)]
    pub protocol: u32,
    pub inventory: Inventory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResponse {
    pub attempt_id: String,
    /// Bearer token for this attempt's events; it can do nothing else.
    pub agent_token: String,
    pub assignment: Assignment,
}

/// What the server wants installed on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub hostname: String,
    pub role: String,
    /// Name of the disko layout (a file in the server's layouts directory), if any.
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub wipe: WipePolicy,
    /// The layout rendered to JSON (`nix-instantiate --eval --strict --json`):
    /// the whole file, `{disko: {devices}}` or `{devices}`. The agent
    /// partitions from it (see docs/disks.md); `None`: no disk step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disko: Option<serde_json::Value>,
    /// Layout disk name -> device path ("/dev/disk/by-id/...", "/dev/vda") or
    /// "auto" (chosen by rule from the inventory). Overrides the layout's `device`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, String>,
}

/// May the agent destroy data it finds on the target disks?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WipePolicy {
    /// Refuse any disk that holds a partition table, filesystem or other signature.
    #[default]
    Never,
    /// Wipe whatever is on the chosen disks.
    Always,
    /// Unknown to this reader: treated like `never`.
    #[serde(other)]
    Unknown,
}

/// `POST /api/v1/agent/events` (Authorization: Bearer agent_token)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub attempt_id: String,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Every seq up to and including this one is stored.
    pub acked_seq: u64,
}

/// The error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
