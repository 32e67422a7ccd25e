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

/// The query of `GET /api/v1/machines`: one page of the list, filtered.
/// The order is fixed: machines with a hostname by hostname, then MAC; then
/// those without one by MAC. An answer with more after it carries
/// `Link: <URL>; rel="next"` (the same query with `cursor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineListQuery {
    /// Machines per page: 1 to [`MAX_MACHINES_PAGE`], default
    /// [`DEFAULT_MACHINES_PAGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Where the page starts: the `cursor` of the previous answer's `next` link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only machines in this state (`MachineState`'s snake_case name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only machines of this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Only machines whose hostname, MAC or role contains this text (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

pub const DEFAULT_MACHINES_PAGE: u64 = 100;
pub const MAX_MACHINES_PAGE: u64 = 1000;

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
    /// The identifying facts pinned at the first install, and those a held
    /// hello presented (docs/security.md, "Identity pinning").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityCheck>,
}

/// The pinned identity of a machine and, while it is `identity_held`, the
/// one presented.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityCheck {
    pub pinned: Option<IdentityFacts>,
    #[serde(default)]
    pub presented: Option<IdentityFacts>,
}

/// What identifies a machine beyond its MAC: DMI system UUID and serial,
/// the serials of its disks and the MACs of its NICs (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFacts {
    #[serde(default)]
    pub system_uuid: Option<String>,
    #[serde(default)]
    pub system_serial: Option<String>,
    #[serde(default)]
    pub disk_serials: Vec<String>,
    #[serde(default)]
    pub macs: Vec<String>,
}

impl IdentityFacts {
    pub fn from_inventory(inv: &Inventory) -> Self {
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let mut disk_serials: Vec<String> = inv
            .disks
            .iter()
            .filter(|d| !d.removable)
            .filter_map(|d| clean(&d.serial))
            .collect();
        disk_serials.sort();
        disk_serials.dedup();
        let mut macs: Vec<String> = inv.nics.iter().map(|n| n.mac.to_lowercase()).collect();
        macs.sort();
        macs.dedup();
        Self {
            system_uuid: clean(&inv.dmi.uuid).map(|u| u.to_lowercase()),
            system_serial: clean(&inv.dmi.serial),
            disk_serials,
            macs,
        }
    }

    /// What differs from `pinned`, one phrase each ("system UUID a -> b").
    pub fn differences(&self, pinned: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        if self.system_uuid != pinned.system_uuid {
            out.push(format!(
                "system UUID {} -> {}",
                opt(&pinned.system_uuid),
                opt(&self.system_uuid)
            ));
        }
        if self.system_serial != pinned.system_serial {
            out.push(format!(
                "system serial {} -> {}",
                opt(&pinned.system_serial),
                opt(&self.system_serial)
            ));
        }
        if self.disk_serials != pinned.disk_serials {
            out.push(format!(
                "disk serials [{}] -> [{}]",
                pinned.disk_serials.join(", "),
                self.disk_serials.join(", ")
            ));
        }
        if self.macs != pinned.macs {
            out.push(format!(
                "NIC MACs [{}] -> [{}]",
                pinned.macs.join(", "),
                self.macs.join(", ")
            ));
        }
        out
    }
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
    /// RFC 3339 time the attempt's events were deleted, the attempt being
    /// over for longer than `[server] event_retention`; `events` is then
    /// empty. `None`: its events are all kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_pruned_at: Option<String>,
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
