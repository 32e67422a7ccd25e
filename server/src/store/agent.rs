//! Boot tokens, attempts and events: the agent side of the store.

use anyhow::Result;
use landfall_proto::admin::InstallerWait;
use landfall_proto::{Assignment, Event, EventKind, FailureData, Inventory, MachineState};
use rusqlite::{params, OptionalExtension};

use super::{machines, state_str, MachineRow, Store};

/// What `hello` found for a boot token.
#[derive(Debug)]
pub enum HelloOutcome {
    /// Unknown or expired token.
    BadToken,
    /// The inventory has no NIC with the MAC the token was minted for.
    MacMismatch { token_mac: String },
    /// The machine has no hostname/role (any more).
    NoAssignment { mac: String },
    Ok {
        attempt_id: String,
        mac: String,
        assignment: Box<Assignment>,
        /// True when this token was already exchanged (a retried hello).
        retried: bool,
        /// One past the highest seq stored for the attempt (1 when none).
        next_seq: u64,
    },
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub id: String,
    pub mac: String,
    pub acked_seq: u64,
}

/// Everything `hello` needs from the request, already hashed.
pub struct HelloInput<'a> {
    pub boot_token_hash: &'a str,
    pub agent_token_hash: &'a str,
    pub new_attempt_id: &'a str,
    pub agent_version: &'a str,
    pub protocol: u32,
    pub inventory: &'a Inventory,
    pub now: i64,
}

/// Result of storing a batch of events.
#[derive(Debug)]
pub struct StoredEvents {
    pub acked_seq: u64,
    pub inserted: usize,
    /// The state the machine moved to because of a terminal event, if any.
    pub new_state: Option<MachineState>,
}

/// The caps on what one attempt stores (`[server] max_events_per_attempt`,
/// `max_event_bytes_per_attempt`).
#[derive(Debug, Clone, Copy)]
pub struct EventQuota {
    pub max_events: u64,
    /// Bytes of the events as stored (their JSON).
    pub max_bytes: u64,
}

/// A batch refused because it would take its attempt past its
/// [`EventQuota`]; nothing of it was stored. What the attempt holds.
#[derive(Debug)]
pub struct OverQuota {
    pub events: u64,
    pub bytes: u64,
}

impl Store {
    /// Store a freshly minted boot token for `mac`. Unexchanged tokens minted
    /// earlier for the same MAC are revoked (only the newest script boots), and
    /// expired tokens of every machine are swept.
    pub fn add_boot_token(&self, mac: &str, hash: &str, now: i64, ttl: u64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM boot_tokens WHERE expires_at <= ?1", [now])?;
        tx.execute(
            "DELETE FROM boot_tokens WHERE mac = ?1 AND attempt_id IS NULL",
            [mac],
        )?;
        tx.execute(
            "INSERT INTO boot_tokens (hash, mac, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, mac, now, now.saturating_add(ttl as i64)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Exchange a boot token for an attempt. Idempotent within the token's TTL:
    /// a token already exchanged returns its attempt again, with the agent token
    /// replaced by the new one (the old one stops working).
    pub fn hello(&self, h: &HelloInput<'_>) -> Result<HelloOutcome> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let token: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT mac, attempt_id FROM boot_tokens WHERE hash = ?1 AND expires_at > ?2",
                params![h.boot_token_hash, h.now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((mac, exchanged)) = token else {
            return Ok(HelloOutcome::BadToken);
        };
        if h.inventory.nic_by_mac(&mac).is_none() {
            return Ok(HelloOutcome::MacMismatch { token_mac: mac });
        }
        let Some(machine) = machines::get(&tx, &mac)? else {
            return Ok(HelloOutcome::NoAssignment { mac });
        };
        let Some(assignment) = machine.assignment() else {
            return Ok(HelloOutcome::NoAssignment { mac });
        };
        let inventory = serde_json::to_string(h.inventory)?;

        if let Some(attempt_id) = exchanged {
            tx.execute(
                "UPDATE attempts SET agent_token_hash = ?2 WHERE id = ?1",
                params![attempt_id, h.agent_token_hash],
            )?;
            if machine.current_attempt.as_deref() == Some(&attempt_id) {
                tx.execute(
                    "UPDATE machines SET inventory = ?2 WHERE mac = ?1",
                    params![mac, inventory],
                )?;
            }
            let max_seq: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE attempt_id = ?1",
                params![attempt_id],
                |r| r.get(0),
            )?;
            tx.commit()?;
            return Ok(HelloOutcome::Ok {
                attempt_id,
                mac,
                assignment: Box::new(assignment),
                retried: true,
                next_seq: max_seq.max(0) as u64 + 1,
            });
        }

        tx.execute(
            "INSERT INTO attempts (id, mac, agent_token_hash, agent_version, protocol, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                h.new_attempt_id,
                mac,
                h.agent_token_hash,
                h.agent_version,
                h.protocol,
                h.now
            ],
        )?;
        tx.execute(
            "UPDATE boot_tokens SET attempt_id = ?2 WHERE hash = ?1",
            params![h.boot_token_hash, h.new_attempt_id],
        )?;
        tx.execute(
            "UPDATE machines SET state = ?2, error = NULL, current_attempt = ?3, inventory = ?4,
                    updated_at = ?5 WHERE mac = ?1",
            params![
                mac,
                state_str(MachineState::Installing),
                h.new_attempt_id,
                inventory,
                h.now
            ],
        )?;
        tx.commit()?;
        Ok(HelloOutcome::Ok {
            attempt_id: h.new_attempt_id.to_owned(),
            mac,
            assignment: Box::new(assignment),
            retried: false,
            next_seq: 1,
        })
    }

    pub fn attempt_by_agent_token(&self, hash: &str) -> Result<Option<AttemptRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, mac, acked_seq FROM attempts WHERE agent_token_hash = ?1",
                [hash],
                |r| {
                    Ok(AttemptRow {
                        id: r.get(0)?,
                        mac: r.get(1)?,
                        acked_seq: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .optional()?)
    }

    /// Store each (attempt, seq) once (the first copy wins), advance the
    /// attempt's gap-free acked_seq, and apply a terminal event to the machine
    /// when the attempt is its current one and it is installing.
    /// All of a batch or none: one that would take the attempt past `quota`
    /// stores nothing ([`OverQuota`]).
    pub fn store_events(
        &self,
        attempt: &AttemptRow,
        events: &[Event],
        now: i64,
        quota: EventQuota,
    ) -> Result<Result<StoredEvents, OverQuota>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut inserted = 0;
        let mut inserted_bytes = 0;
        let mut terminal: Option<&Event> = None;
        {
            let mut ins = tx.prepare(
                "INSERT OR IGNORE INTO events (attempt_id, seq, mac, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in events {
                let body = serde_json::to_string(e)?;
                let n = ins.execute(params![attempt.id, e.seq as i64, attempt.mac, body, now])?;
                inserted += n;
                if n == 1 {
                    inserted_bytes += body.len();
                }
                if n == 1 && e.is_terminal() {
                    terminal = Some(e);
                }
            }
        }
        let (count, bytes): (i64, i64) = tx.query_row(
            "UPDATE attempts SET event_count = event_count + ?2, event_bytes = event_bytes + ?3
              WHERE id = ?1 RETURNING event_count, event_bytes",
            params![attempt.id, inserted as i64, inserted_bytes as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if count as u64 > quota.max_events || bytes as u64 > quota.max_bytes {
            // Dropping `tx` rolls the batch back.
            return Ok(Err(OverQuota {
                events: (count as u64).saturating_sub(inserted as u64),
                bytes: (bytes as u64).saturating_sub(inserted_bytes as u64),
            }));
        }

        let mut acked = attempt.acked_seq;
        {
            let mut q = tx.prepare(
                "SELECT seq FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let seqs = q.query_map(params![attempt.id, acked as i64], |r| r.get::<_, i64>(0))?;
            for s in seqs {
                if s? as u64 == acked + 1 {
                    acked += 1;
                } else {
                    break;
                }
            }
        }
        tx.execute(
            "UPDATE attempts SET acked_seq = ?2 WHERE id = ?1 AND acked_seq < ?2",
            params![attempt.id, acked as i64],
        )?;

        let mut new_state = None;
        let machine = machines::get(&tx, &attempt.mac)?;
        let current = machine
            .as_ref()
            .is_some_and(|m| m.current_attempt.as_deref() == Some(&attempt.id));
        if current && inserted > 0 {
            tx.execute(
                "UPDATE machines SET updated_at = ?2 WHERE mac = ?1",
                params![attempt.mac, now],
            )?;
        }
        if let (Some(e), Some(m)) = (terminal, &machine) {
            if current && m.state == MachineState::Installing {
                let (state, error) = match e.kind {
                    EventKind::Finished => (MachineState::Installed, None),
                    _ if is_security_alarm(e) => (
                        MachineState::Compromised,
                        Some(format!("security alarm: {}", failure_text(e))),
                    ),
                    _ => (MachineState::Failed, Some(failure_text(e))),
                };
                tx.execute(
                    "UPDATE machines SET state = ?2, error = ?3, updated_at = ?4 WHERE mac = ?1",
                    params![attempt.mac, state_str(state), error, now],
                )?;
                new_state = Some(state);
            }
        }
        tx.commit()?;
        Ok(Ok(StoredEvents {
            acked_seq: acked,
            inserted,
            new_state,
        }))
    }
}

/// What a waiting agent's attempt should do now (`POST /agent/wait`).
#[derive(Debug)]
pub enum WaitCheck {
    /// Keep waiting: no operator decision yet.
    Wait,
    /// Run again: the operator asked for a retry (`retry_requested`), or one
    /// was granted and the agent, which has reported nothing since, did not
    /// get the answer. Carries the machine.
    Retry(Box<MachineRow>),
    /// Give up: reinstall requested, another attempt is current, or the
    /// machine is gone.
    Stop,
}

impl Store {
    /// An agent of `attempt_id` is asking `POST /agent/wait` now, held until
    /// `ends_at` at the latest (at its end, `ends_at` is `now`).
    pub fn note_wait(&self, attempt_id: &str, now: i64, ends_at: i64) -> Result<()> {
        self.lock().execute(
            "UPDATE attempts SET last_wait_at = ?2, wait_ends_at = ?3 WHERE id = ?1",
            params![attempt_id, now, ends_at],
        )?;
        Ok(())
    }

    /// Whether the agent of `mac`'s current attempt is waiting for an
    /// operator's answer at `now`: a wait is open, or ended less than
    /// `grace` seconds ago (the agent asks again at once).
    pub fn installer_wait(&self, mac: &str, now: i64, grace: i64) -> Result<InstallerWait> {
        let conn = self.lock();
        let row: Option<(Option<i64>, Option<i64>)> = conn
            .query_row(
                "SELECT a.last_wait_at, a.wait_ends_at FROM machines m
                   JOIN attempts a ON a.id = m.current_attempt WHERE m.mac = ?1",
                [mac],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (last, ends) = row.unwrap_or((None, None));
        Ok(InstallerWait {
            waiting: ends.is_some_and(|e| now <= e + grace),
            last_wait_at: last.map(super::rfc3339),
        })
    }

    /// Where the machine of a waiting attempt stands.
    pub fn wait_check(&self, attempt: &AttemptRow) -> Result<WaitCheck> {
        let conn = self.lock();
        let Some(m) = machines::get(&conn, &attempt.mac)? else {
            return Ok(WaitCheck::Stop);
        };
        if m.current_attempt.as_deref() != Some(attempt.id.as_str()) {
            return Ok(WaitCheck::Stop);
        }
        Ok(match m.state {
            MachineState::ReinstallRequested => WaitCheck::Stop,
            MachineState::RetryRequested => WaitCheck::Retry(Box::new(m)),
            // Installing again while the attempt's last event is still its
            // failed terminal event: a retry was granted and the agent has
            // reported nothing since, so it lost the answer.
            MachineState::Installing if last_event_failed_terminal(&conn, &attempt.id)? => {
                WaitCheck::Retry(Box::new(m))
            }
            _ => WaitCheck::Wait,
        })
    }

    /// Grant a retry: when `attempt_id` is still the machine's current
    /// attempt and the machine is `retry_requested` (or `installing`: a
    /// repeated grant, see [`WaitCheck::Retry`]), it goes back to `installing` with the error cleared
    /// and the assignment's hostname, role, layout and wipe stored. False
    /// when the machine moved on meanwhile (nothing changed).
    pub fn resume_attempt(
        &self,
        mac: &str,
        attempt_id: &str,
        a: &Assignment,
        now: i64,
    ) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE machines SET state = ?3, error = NULL, hostname = ?4, role = ?5, layout = ?6,
                    wipe = ?7, updated_at = ?8
             WHERE mac = ?1 AND current_attempt = ?2 AND state IN (?9, ?3)",
            params![
                mac,
                attempt_id,
                state_str(MachineState::Installing),
                a.hostname,
                a.role,
                a.layout,
                super::wipe_str(a.wipe),
                now,
                state_str(MachineState::RetryRequested),
            ],
        )?;
        Ok(n == 1)
    }
}

/// The attempt's highest-seq event is a terminal failure (`done failed`).
fn last_event_failed_terminal(conn: &rusqlite::Connection, attempt_id: &str) -> Result<bool> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq DESC LIMIT 1",
            [attempt_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(body
        .and_then(|b| serde_json::from_str::<Event>(&b).ok())
        .is_some_and(|e| e.is_terminal() && e.kind == EventKind::Failed))
}

/// A failure whose data says `security` (e.g. an intercepted Vault wrap
/// token): the machine is `compromised`, not merely `failed`.
fn is_security_alarm(e: &Event) -> bool {
    FailureData::from_data(e.data.as_ref()).security
}

/// "step disks: no disk matched" from a failed `done` event.
fn failure_text(e: &Event) -> String {
    match FailureData::from_data(e.data.as_ref()).step {
        Some(s) => format!("step {s}: {}", e.message),
        None => e.message.clone(),
    }
}
