//! Machines: recorded on every boot.ipxe hit, read by the admin API.

use super::{rfc3339, state_str, wipe_parse, wipe_str, Row, Tx, Value};
use crate::params;
use anyhow::Result;
use landfall_proto::admin::{AttemptDetail, IdentityCheck, MachineDetail, MachineSummary};
use landfall_proto::{Assignment, Event, Inventory, MachineState, WipePolicy};

#[derive(Debug, Clone)]
pub struct MachineRow {
    pub mac: String,
    pub hostname: Option<String>,
    pub role: Option<String>,
    pub layout: Option<String>,
    pub wipe: WipePolicy,
    pub state: MachineState,
    pub error: Option<String>,
    pub current_attempt: Option<String>,
    pub updated_at: i64,
    pub last_seen: i64,
}

impl MachineRow {
    /// The stored assignment, when the machine has a hostname and a role.
    pub fn assignment(&self) -> Option<Assignment> {
        Some(Assignment::new(
            self.hostname.clone()?,
            self.role.clone()?,
            self.layout.clone(),
            self.wipe,
        ))
    }
}

/// The caps on `discovered` machines (`[server] max_discovered*`).
#[derive(Debug, Clone, Copy)]
pub struct DiscoveredCap {
    /// Most kept; past it the least recently seen are deleted.
    pub max: u64,
    /// Most new ones recorded in the last 60 seconds.
    pub per_minute: u64,
}

/// Which events a machine's detail carries: per attempt (or only the named
/// one) at most `limit`, those with a seq above `after`.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub attempt: Option<String>,
    pub after: u64,
    pub limit: u64,
}

/// Which machines a list page holds (`GET /api/v1/machines`).
#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    pub state: Option<MachineState>,
    pub role: Option<String>,
    /// Lower-case text the hostname, the MAC or the role contains.
    pub text: Option<String>,
}

impl MachineFilter {
    /// Whether a machine passes (the same test as the SQL of `machine_page`).
    pub fn matches(
        &self,
        mac: &str,
        hostname: Option<&str>,
        role: Option<&str>,
        state: MachineState,
    ) -> bool {
        let has = |v: Option<&str>, t: &str| v.is_some_and(|v| v.to_lowercase().contains(t));
        self.state.is_none_or(|s| s == state)
            && self.role.as_deref().is_none_or(|r| role == Some(r))
            && self
                .text
                .as_deref()
                .is_none_or(|t| has(hostname, t) || has(Some(mac), t) || has(role, t))
    }
}

/// A machine's place in the list: those with a hostname by hostname, then
/// MAC; then those without one by MAC. A page starts after a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListKey {
    pub unnamed: bool,
    pub hostname: String,
    pub mac: String,
}

impl ListKey {
    pub fn new(hostname: Option<&str>, mac: &str) -> Self {
        Self {
            unnamed: hostname.is_none(),
            hostname: hostname.unwrap_or_default().to_owned(),
            mac: mac.to_owned(),
        }
    }

    /// The `cursor` parameter naming this key: `HOSTNAME/MAC`, or `/MAC`.
    pub fn cursor(&self) -> String {
        format!("{}/{}", self.hostname, self.mac)
    }

    /// A cursor this server gave out; `None` for anything else.
    pub fn parse(cursor: &str) -> Option<Self> {
        let (host, mac) = cursor.rsplit_once('/')?;
        let mac = landfall_proto::names::normalize_mac(mac)?;
        if host.is_empty() {
            return Some(Self::new(None, &mac));
        }
        landfall_proto::names::check_hostname(host).ok()?;
        Some(Self::new(Some(host), &mac))
    }
}

/// `text` as a LIKE pattern (escape character `!`) finding it anywhere.
fn like_anywhere(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '!' | '%' | '_') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// What `request_retry` did.
#[derive(Debug)]
pub enum RetryOutcome {
    Requested,
    NotFound,
    /// Not `failed`; nothing changed.
    WrongState(MachineRow),
}

const COLUMNS: &str =
    "mac, hostname, role, layout, wipe, state, error, current_attempt, updated_at, last_seen";

fn from_row(r: &Row) -> Result<MachineRow> {
    Ok(MachineRow {
        mac: r.get(0)?,
        hostname: r.get(1)?,
        role: r.get(2)?,
        layout: r.get(3)?,
        wipe: wipe_parse(&r.get::<String>(4)?),
        state: MachineState::parse(&r.get::<String>(5)?),
        error: r.get(6)?,
        current_attempt: r.get(7)?,
        updated_at: r.get(8)?,
        last_seen: r.get(9)?,
    })
}

impl Tx<'_> {
    pub fn machine(&mut self, mac: &str) -> Result<Option<MachineRow>> {
        self.query_opt(
            &format!("SELECT {COLUMNS} FROM machines WHERE mac = ?1"),
            params![mac],
        )?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    /// Find a machine by MAC (any accepted spelling) or hostname.
    pub fn find_machine(&mut self, key: &str) -> Result<Option<MachineRow>> {
        if let Some(mac) = landfall_proto::names::normalize_mac(key) {
            return self.machine(&mac);
        }
        self.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM machines WHERE hostname = ?1 ORDER BY updated_at DESC LIMIT 1"
            ),
            params![key],
        )?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    /// The MAC of the machine stored with `hostname`, if any.
    pub fn hostname_owner(&mut self, hostname: &str) -> Result<Option<String>> {
        self.value(
            "SELECT mac FROM machines WHERE hostname = ?1 LIMIT 1",
            params![hostname],
        )
    }

    /// Record a boot.ipxe hit: create the machine (assigned when an assignment is
    /// known, else discovered), refresh last_seen, and apply the assignment.
    /// A new discovered machine is recorded only under `cap`'s rate (`None`:
    /// not recorded), and the least recently seen discovered machines past
    /// `cap.max` are deleted.
    pub fn record_boot(
        &mut self,
        mac: &str,
        assignment: Option<&Assignment>,
        arch: Option<&str>,
        platform: Option<&str>,
        now: i64,
        cap: DiscoveredCap,
    ) -> Result<Option<MachineRow>> {
        match self.machine(mac)? {
            None => {
                let discovered = state_str(MachineState::Discovered);
                if assignment.is_none() {
                    let recent: i64 = self
                        .value(
                            "SELECT COUNT(*) FROM machines WHERE state = ?1 AND created_at > ?2",
                            params![discovered, now - 60],
                        )?
                        .unwrap_or(0);
                    if recent as u64 >= cap.per_minute {
                        return Ok(None);
                    }
                }
                let state = if assignment.is_some() {
                    MachineState::Assigned
                } else {
                    MachineState::Discovered
                };
                self.exec(
                    "INSERT INTO machines (mac, hostname, role, layout, wipe, state, arch, platform,
                                           created_at, updated_at, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9)",
                    params![
                        mac,
                        assignment.map(|a| &a.hostname),
                        assignment.map(|a| &a.role),
                        assignment.and_then(|a| a.layout.as_ref()),
                        wipe_str(assignment.map(|a| a.wipe).unwrap_or_default()),
                        state_str(state),
                        arch,
                        platform,
                        now
                    ],
                )?;
                if assignment.is_none() {
                    self.exec(
                        "DELETE FROM machines WHERE mac IN (
                           SELECT mac FROM machines WHERE state = ?1
                            ORDER BY last_seen DESC, rowid DESC
                            LIMIT 9223372036854775807 OFFSET ?2)",
                        params![discovered, cap.max.min(i64::MAX as u64)],
                    )?;
                }
            }
            Some(row) => {
                self.exec(
                    "UPDATE machines SET last_seen = ?2, arch = COALESCE(?3, arch),
                            platform = COALESCE(?4, platform) WHERE mac = ?1",
                    params![mac, now, arch, platform],
                )?;
                if let Some(a) = assignment {
                    let changed = row.hostname.as_deref() != Some(&a.hostname)
                        || row.role.as_deref() != Some(&a.role)
                        || row.layout != a.layout
                        || row.wipe != a.wipe;
                    if changed {
                        self.exec(
                            "UPDATE machines SET hostname = ?2, role = ?3, layout = ?4, wipe = ?5,
                                    updated_at = ?6 WHERE mac = ?1",
                            params![mac, a.hostname, a.role, a.layout, wipe_str(a.wipe), now],
                        )?;
                    }
                    if row.state == MachineState::Discovered {
                        self.exec(
                            "UPDATE machines SET state = ?2, updated_at = ?3 WHERE mac = ?1",
                            params![mac, state_str(MachineState::Assigned), now],
                        )?;
                    }
                }
            }
        }
        let row = self
            .machine(mac)?
            .ok_or_else(|| anyhow::anyhow!("machine {mac} vanished"))?;
        Ok(Some(row))
    }

    /// Approve a machine held for its identity: the presented facts become
    /// the pinned ones and the machine installs at its next PXE boot
    /// (`reinstall_requested`). False (nothing changed) unless it was
    /// `identity_held`.
    pub fn approve_identity(&mut self, mac: &str, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE machines SET pinned_identity = COALESCE(presented_identity, pinned_identity),
                    presented_identity = NULL, state = ?2, error = NULL, updated_at = ?3
              WHERE mac = ?1 AND state = ?4",
            params![
                mac,
                state_str(MachineState::ReinstallRequested),
                now,
                state_str(MachineState::IdentityHeld)
            ],
        )?;
        Ok(n == 1)
    }

    /// Ask for a reinstall: the next PXE boot installs again.
    pub fn request_reinstall(&mut self, mac: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE machines SET state = ?2, error = NULL, updated_at = ?3 WHERE mac = ?1",
            params![mac, state_str(MachineState::ReinstallRequested), now],
        )?;
        self.wake_waiters();
        Ok(())
    }

    /// Ask the agent of a failed install, still waiting on `POST /agent/wait`,
    /// to run again from the failed step: `failed` -> `retry_requested` (the
    /// error is kept until the agent picks the retry up). Any other state is
    /// refused and returned.
    pub fn request_retry(&mut self, mac: &str, now: i64) -> Result<RetryOutcome> {
        let Some(row) = self.machine(mac)? else {
            return Ok(RetryOutcome::NotFound);
        };
        if row.state != MachineState::Failed {
            return Ok(RetryOutcome::WrongState(row));
        }
        self.exec(
            "UPDATE machines SET state = ?2, updated_at = ?3 WHERE mac = ?1",
            params![mac, state_str(MachineState::RetryRequested), now],
        )?;
        self.wake_waiters();
        Ok(RetryOutcome::Requested)
    }

    /// One page of the stored machines passing `filter`, in the list's order
    /// ([`ListKey`]), those after `after`; at most `limit`. Portable SQL:
    /// LOWER and LIKE with an explicit escape read alike on SQLite and
    /// PostgreSQL.
    pub fn machine_page(
        &mut self,
        filter: &MachineFilter,
        after: Option<&ListKey>,
        limit: u64,
    ) -> Result<Vec<MachineSummary>> {
        let mut sql = format!("SELECT {COLUMNS} FROM machines WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        // The next placeholder, bound to `v`.
        let arg = |args: &mut Vec<Value>, v: &str| {
            args.push(Value::Text(v.to_owned()));
            format!("?{}", args.len())
        };
        if let Some(state) = filter.state {
            sql += &format!(" AND state = {}", arg(&mut args, state_str(state)));
        }
        if let Some(role) = &filter.role {
            sql += &format!(" AND role = {}", arg(&mut args, role));
        }
        if let Some(text) = &filter.text {
            let p = arg(&mut args, &like_anywhere(&text.to_lowercase()));
            sql += &format!(
                " AND (LOWER(hostname) LIKE {p} ESCAPE '!' OR LOWER(mac) LIKE {p} ESCAPE '!'
                       OR LOWER(role) LIKE {p} ESCAPE '!')"
            );
        }
        match after {
            None => {}
            Some(k) if k.unnamed => {
                sql += &format!(" AND hostname IS NULL AND mac > {}", arg(&mut args, &k.mac));
            }
            Some(k) => {
                let (h, m) = (arg(&mut args, &k.hostname), arg(&mut args, &k.mac));
                sql += &format!(
                    " AND (hostname IS NULL OR hostname > {h} OR (hostname = {h} AND mac > {m}))"
                );
            }
        }
        args.push(Value::Int(limit.min(i64::MAX as u64) as i64));
        sql += &format!(
            " ORDER BY hostname IS NULL, hostname, mac LIMIT ?{}",
            args.len()
        );
        let rows = self.query(&sql, &args)?;
        let rows = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        rows.iter().map(|r| self.summary(r)).collect()
    }

    /// Which of `macs` the database stores.
    pub fn stored_macs(&mut self, macs: &[String]) -> Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        // At most 500 parameters a statement (SQLite's old limit is 999).
        for chunk in macs.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("?{i}")).collect();
            let args: Vec<Value> = chunk.iter().map(|m| Value::Text(m.clone())).collect();
            for r in self.query(
                &format!(
                    "SELECT mac FROM machines WHERE mac IN ({})",
                    marks.join(", ")
                ),
                &args,
            )? {
                out.insert(r.get::<String>(0)?);
            }
        }
        Ok(out)
    }

    /// A machine with its inventory, attempts and one page of their events
    /// ([`EventPage`]): never every event at once.
    pub fn detail(&mut self, mac: &str, page: &EventPage) -> Result<Option<MachineDetail>> {
        let Some(row) = self.machine(mac)? else {
            return Ok(None);
        };
        let summary = self.summary(&row)?;
        let inventory: Option<String> = self
            .value(
                "SELECT inventory FROM machines WHERE mac = ?1",
                params![mac],
            )?
            .flatten();
        let inventory: Option<Inventory> = inventory.and_then(|s| serde_json::from_str(&s).ok());
        let attempts = self.query(
            "SELECT id, started_at, acked_seq, last_wait_at, events_pruned_at FROM attempts
              WHERE mac = ?1 ORDER BY started_at, rowid",
            params![mac],
        )?;
        let mut out = Vec::new();
        let limit = page.limit.min(i64::MAX as u64 - 1) as i64;
        for a in attempts {
            let (id, started, acked, last_wait): (String, i64, u64, Option<i64>) =
                (a.get(0)?, a.get(1)?, a.get(2)?, a.get(3)?);
            let pruned: Option<i64> = a.get(4)?;
            if page.attempt.as_ref().is_some_and(|a| *a != id) {
                continue;
            }
            let after = if page.attempt.is_some() {
                page.after
            } else {
                0
            };
            let mut bodies = self
                .query(
                    "SELECT body FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    params![&id, after.min(i64::MAX as u64), limit + 1],
                )?
                .iter()
                .map(|r| r.get::<String>(0))
                .collect::<Result<Vec<_>>>()?;
            let more_events = bodies.len() as i64 > limit;
            bodies.truncate(limit as usize);
            let events = bodies
                .iter()
                .filter_map(|b| serde_json::from_str::<Event>(b).ok())
                .collect();
            out.push(AttemptDetail {
                attempt_id: id,
                started_at: rfc3339(started),
                acked_seq: acked,
                events,
                more_events,
                last_wait_at: last_wait.map(rfc3339),
                events_pruned_at: pruned.map(rfc3339),
            });
        }
        let verify = self.last_verify(mac)?;
        let ids = self.query_one(
            "SELECT pinned_identity, presented_identity FROM machines WHERE mac = ?1",
            params![mac],
        )?;
        let (pinned, presented): (Option<String>, Option<String>) = (ids.get(0)?, ids.get(1)?);
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let identity = IdentityCheck {
            pinned: parse(pinned),
            presented: parse(presented),
        };
        Ok(Some(MachineDetail {
            summary,
            inventory,
            attempts: out,
            verify,
            identity: (identity != IdentityCheck::default()).then_some(identity),
        }))
    }

    fn summary(&mut self, row: &MachineRow) -> Result<MachineSummary> {
        let last_event = match &row.current_attempt {
            None => None,
            Some(a) => self
                .value::<String>(
                    "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq DESC LIMIT 1",
                    params![a],
                )?
                .and_then(|b| serde_json::from_str::<Event>(&b).ok()),
        };
        Ok(MachineSummary {
            mac: row.mac.clone(),
            hostname: row.hostname.clone(),
            role: row.role.clone(),
            state: row.state,
            error: row.error.clone(),
            last_event,
            updated_at: rfc3339(row.updated_at),
        })
    }
}
