//! What the dashboard reads: the fleet in one light query, the last event of
//! the listed machines only, and an attempt's milestones and output tail.

use std::collections::HashMap;

use anyhow::Result;
use landfall_proto::{Event, MachineState};
use rusqlite::params;

use super::Store;

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

impl Store {
    /// Every stored machine, light: the fleet page filters, sorts and pages
    /// these and reads events for the shown page only.
    pub fn fleet_rows(&self) -> Result<Vec<FleetRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT mac, hostname, role, state, error, updated_at,
                    COALESCE(state_since, created_at), current_attempt
               FROM machines",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FleetRow {
                    mac: r.get(0)?,
                    hostname: r.get(1)?,
                    role: r.get(2)?,
                    state: MachineState::parse(&r.get::<_, String>(3)?),
                    error: r.get(4)?,
                    updated_at: r.get(5)?,
                    state_since: r.get(6)?,
                    current_attempt: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// When `mac` entered its current state (unix seconds).
    pub fn state_since(&self, mac: &str) -> Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .lock()
            .query_row(
                "SELECT COALESCE(state_since, created_at) FROM machines WHERE mac = ?1",
                [mac],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The last event of each of `attempts` that has one.
    pub fn last_events(&self, attempts: &[&str]) -> Result<HashMap<String, LastEvent>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut out = HashMap::new();
        for a in attempts {
            let mut last = None;
            let mut progress = None;
            let mut rows = stmt.query(params![a, PROGRESS_LOOKBACK])?;
            while let Some(r) = rows.next()? {
                let body: String = r.get(0)?;
                let Some(e) = parse(&body) else {
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
                out.insert((*a).to_owned(), LastEvent { event, progress });
            }
        }
        Ok(out)
    }

    /// An attempt's events other than output lines (`log`), by seq: what
    /// the step list is folded from.
    pub fn attempt_milestones(&self, attempt: &str) -> Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM events WHERE attempt_id = ?1
                AND json_extract(body, '$.kind') != 'log' ORDER BY seq",
        )?;
        let bodies = stmt
            .query_map([attempt], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(bodies.iter().filter_map(|b| parse(b)).collect())
    }

    /// The last `n` events of an attempt with a seq above `after`, by seq.
    pub fn attempt_tail(&self, attempt: &str, after: u64, n: u64) -> Result<Vec<Event>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let mut bodies = stmt
            .query_map(
                params![
                    attempt,
                    after.min(i64::MAX as u64) as i64,
                    n.min(100_000) as i64
                ],
                |r| r.get::<_, String>(0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        bodies.reverse();
        Ok(bodies.iter().filter_map(|b| parse(b)).collect())
    }
}
