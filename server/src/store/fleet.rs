//! What the dashboard reads: the fleet in one light query, the last event of
//! the listed machines only, and an attempt's milestones and output tail.

use std::collections::HashMap;

use super::Tx;
use crate::params;
use anyhow::Result;
use landfall_proto::{Event, EventKind, MachineState};

/// One machine of the fleet page, without its events.
#[derive(Debug, Clone)]
pub struct FleetRow {
    pub mac: String,
    pub hostname: Option<String>,
    pub role: Option<String>,
    pub state: MachineState,
    pub error: Option<String>,
    /// Last state change or event (unix seconds).
    pub updated_at: i64,
    /// When the machine entered its state (unix seconds).
    pub state_since: i64,
    pub current_attempt: Option<String>,
}

/// The last event of an attempt, and the newest step fraction among its
/// last events (output lines carry none).
#[derive(Debug, Clone)]
pub struct LastEvent {
    pub event: Event,
    pub progress: Option<f32>,
}

/// How far back from an attempt's last event a step fraction is looked for.
const PROGRESS_LOOKBACK: i64 = 50;

fn parse(body: &str) -> Option<Event> {
    serde_json::from_str(body).ok()
}

impl Tx<'_> {
    /// Every stored machine, light: the fleet page filters, sorts and pages
    /// these and reads events for the shown page only.
    pub fn fleet_rows(&mut self) -> Result<Vec<FleetRow>> {
        self.query(
            "SELECT mac, hostname, role, state, error, updated_at,
                    COALESCE(state_since, created_at), current_attempt
               FROM machines",
            params![],
        )?
        .iter()
        .map(|r| {
            Ok(FleetRow {
                mac: r.get(0)?,
                hostname: r.get(1)?,
                role: r.get(2)?,
                state: MachineState::parse(&r.get::<String>(3)?),
                error: r.get(4)?,
                updated_at: r.get(5)?,
                state_since: r.get(6)?,
                current_attempt: r.get(7)?,
            })
        })
        .collect()
    }

    /// When `mac` entered its current state (unix seconds).
    pub fn state_since(&mut self, mac: &str) -> Result<Option<i64>> {
        self.value(
            "SELECT COALESCE(state_since, created_at) FROM machines WHERE mac = ?1",
            params![mac],
        )
    }

    /// The last event of each of `attempts` that has one.
    pub fn last_events(&mut self, attempts: &[String]) -> Result<HashMap<String, LastEvent>> {
        let mut out = HashMap::new();
        for a in attempts {
            let mut last = None;
            let mut progress = None;
            for r in self.query(
                "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq DESC LIMIT ?2",
                params![a, PROGRESS_LOOKBACK],
            )? {
                let Some(e) = parse(&r.get::<String>(0)?) else {
                    continue;
                };
                if progress.is_none() {
                    progress = e.progress;
                }
                if last.is_none() {
                    last = Some(e);
                }
                if progress.is_some() {
                    break;
                }
            }
            if let Some(event) = last {
                out.insert(a.clone(), LastEvent { event, progress });
            }
        }
        Ok(out)
    }

    /// An attempt's events other than output lines (`log`), by seq: what
    /// the step list is folded from.
    pub fn attempt_milestones(&mut self, attempt: &str) -> Result<Vec<Event>> {
        let rows = self.query(
            "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq",
            params![attempt],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(e) = parse(&r.get::<String>(0)?) {
                if e.kind != EventKind::Log {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// The last `n` events of an attempt with a seq above `after`, by seq.
    pub fn attempt_tail(&mut self, attempt: &str, after: u64, n: u64) -> Result<Vec<Event>> {
        let rows = self.query(
            "SELECT body FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3",
            params![attempt, after.min(i64::MAX as u64), n.min(100_000)],
        )?;
        let mut out = Vec::new();
        for r in rows.iter().rev() {
            if let Some(e) = parse(&r.get::<String>(0)?) {
                out.push(e);
            }
        }
        Ok(out)
    }
}
