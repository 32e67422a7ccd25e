//! Boot tokens, attempts and events: the agent side of the store.

use super::{state_str, MachineRow, Tx};
use crate::params;
use anyhow::Result;
use landfall_proto::admin::{IdentityFacts, InstallerWait};
use landfall_proto::{Assignment, Event, EventKind, FailureData, Inventory, MachineState, Step};

/// What `hello` found for a boot token.
#[derive(Debug)]
pub enum HelloOutcome {
    /// Unknown or expired token, or an exchanged one whose attempt is over
    /// (no longer current, or the machine left `installing`).
    BadToken,
    /// The inventory has no NIC with the MAC the token was minted for.
    MacMismatch { token_mac: String },
    /// The machine has no hostname/role (any more).
    NoAssignment { mac: String },
    /// A second claimant: the machine is now `compromised`; nothing is served.
    Alarm(Alarm),
    /// The presented identity differs from the pinned one: the machine is
    /// now `identity_held`; `differences` says how.
    IdentityHeld { mac: String, differences: String },
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

/// Which second claimant raised an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    /// An exchanged boot token presented with another nonce, or none.
    TokenClaimed,
    /// A fresh boot token for a MAC whose installing attempt is alive.
    AttemptAlive,
    /// The first claimant of an attempt (its nonce) is alive, but a newer
    /// attempt took the machine over.
    TakenOver,
}

/// A security alarm raised by `hello`: the machine is `compromised`, the
/// attempts' agent, verify and boot tokens are dead, an event says what
/// happened in each attempt, and `revoke` lists the Vault mints the caller
/// must revoke (already marked revoked in the store).
#[derive(Debug)]
pub struct Alarm {
    pub kind: AlarmKind,
    pub mac: String,
    pub attempts: Vec<String>,
    /// Client address of the attempt's first claimant, when recorded.
    pub first_client: Option<String>,
    pub message: String,
    pub revoke: Vec<VaultMint>,
}

/// The accessors of one Vault mint (they can look up and revoke, nothing else).
#[derive(Debug, Clone)]
pub struct VaultMint {
    pub attempt_id: String,
    pub approle: String,
    pub wrap_accessor: String,
    pub secret_id_accessor: String,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub id: String,
    pub mac: String,
    pub acked_seq: u64,
    /// A newer attempt became the machine's current one: the agent token
    /// is dead (its use is refused, or an alarm, see [`Store::superseded_use`]).
    pub superseded: bool,
    /// When its agent was last heard from (hello, events, wait).
    pub last_seen_at: Option<i64>,
}

/// Everything `hello` needs from the request, already hashed.
pub struct HelloInput<'a> {
    pub boot_token_hash: &'a str,
    pub agent_token_hash: &'a str,
    pub new_attempt_id: &'a str,
    pub agent_version: &'a str,
    pub protocol: u32,
    pub inventory: &'a Inventory,
    /// SHA-256 of the request's nonce, when it sent one.
    pub nonce_hash: Option<&'a str>,
    /// The client's address (for the record and the alarm).
    pub client: &'a str,
    /// `server.agent_alive_secs`.
    pub alive_secs: i64,
    /// Whether the machine's role checks the pinned identity (by role name).
    pub pin_identity: &'a dyn Fn(&str) -> bool,
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

impl Tx<'_> {
    /// Store a freshly minted boot token for `mac`. Unexchanged tokens minted
    /// earlier for the same MAC are revoked (only the newest script boots), and
    /// expired tokens of every machine are swept.
    pub fn add_boot_token(&mut self, mac: &str, hash: &str, now: i64, ttl: u64) -> Result<()> {
        self.exec(
            "DELETE FROM boot_tokens WHERE expires_at <= ?1",
            params![now],
        )?;
        self.exec(
            "DELETE FROM boot_tokens WHERE mac = ?1 AND attempt_id IS NULL",
            params![mac],
        )?;
        self.exec(
            "INSERT INTO boot_tokens (hash, mac, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, mac, now, now.saturating_add(ttl as i64)],
        )?;
        Ok(())
    }

    /// Exchange a boot token for an attempt. The first claimant wins: a
    /// token already exchanged is served again (its attempt, with the agent
    /// token replaced by the new one) only with the first claimant's nonce,
    /// and only while its attempt is current and the machine `installing`.
    /// Any other claimant raises an [`Alarm`] (docs/security.md).
    pub fn hello(&mut self, h: &HelloInput<'_>) -> Result<HelloOutcome> {
        let Some(token) = self.query_opt(
            "SELECT mac, attempt_id, nonce_hash FROM boot_tokens
              WHERE hash = ?1 AND expires_at > ?2",
            params![h.boot_token_hash, h.now],
        )?
        else {
            return Ok(HelloOutcome::BadToken);
        };
        let (mac, exchanged, first_nonce): (String, Option<String>, Option<String>) =
            (token.get(0)?, token.get(1)?, token.get(2)?);
        if h.inventory.nic_by_mac(&mac).is_none() {
            return Ok(HelloOutcome::MacMismatch { token_mac: mac });
        }
        let Some(machine) = self.machine(&mac)? else {
            return Ok(HelloOutcome::NoAssignment { mac });
        };
        let Some(assignment) = machine.assignment() else {
            return Ok(HelloOutcome::NoAssignment { mac });
        };
        let inventory = serde_json::to_string(h.inventory)?;

        if let Some(attempt_id) = exchanged {
            let first = self.attempt_client(&attempt_id)?;
            let same_claimant = first_nonce.is_some() && first_nonce.as_deref() == h.nonce_hash;
            if !same_claimant {
                let message = format!(
                    "security alarm: boot token of attempt {attempt_id} presented again by {} \
                     ({}); it was first exchanged by {}",
                    h.client,
                    if h.nonce_hash.is_some() {
                        "another nonce"
                    } else {
                        "no nonce"
                    },
                    or_unrecorded(&first),
                );
                return self.alarm_outcome(
                    AlarmKind::TokenClaimed,
                    &mac,
                    vec![attempt_id],
                    first,
                    message,
                    h,
                );
            }
            let current = machine.current_attempt.as_deref() == Some(&attempt_id);
            if !current && machine.state == MachineState::Installing {
                // Our first claimant is alive, yet another attempt took over.
                let newer = machine.current_attempt.clone().unwrap_or_default();
                let message = format!(
                    "security alarm: the agent of attempt {attempt_id} ({}) is alive at {}, \
                     but attempt {newer} (from {}) took the machine over",
                    or_unrecorded(&first),
                    h.client,
                    or_unrecorded(&self.attempt_client(&newer)?),
                );
                return self.alarm_outcome(
                    AlarmKind::TakenOver,
                    &mac,
                    vec![attempt_id, newer],
                    first,
                    message,
                    h,
                );
            }
            if !current || machine.state != MachineState::Installing {
                // The exchanged token died with its attempt.
                return Ok(HelloOutcome::BadToken);
            }
            self.exec(
                "UPDATE attempts SET agent_token_hash = ?2, last_seen_at = ?3 WHERE id = ?1",
                params![attempt_id, h.agent_token_hash, h.now],
            )?;
            self.exec(
                "UPDATE machines SET inventory = ?2 WHERE mac = ?1",
                params![mac, inventory],
            )?;
            let max_seq: i64 = self
                .value(
                    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE attempt_id = ?1",
                    params![attempt_id],
                )?
                .unwrap_or(0);
            return Ok(HelloOutcome::Ok {
                attempt_id,
                mac,
                assignment: Box::new(assignment),
                retried: true,
                next_seq: max_seq.max(0) as u64 + 1,
            });
        }

        // A fresh token while the current attempt's agent is alive: not a
        // reboot (the agent spoke moments ago), a second claimant.
        if let (MachineState::Installing, Some(live)) = (machine.state, &machine.current_attempt) {
            let last: Option<i64> =
                self.nullable("SELECT last_seen_at FROM attempts WHERE id = ?1", live)?;
            if last.is_some_and(|t| h.now - t < h.alive_secs) {
                let first = self.attempt_client(live)?;
                let message = format!(
                    "security alarm: {} said hello for {mac} with a new boot token while \
                     attempt {live} (from {}) is installing and its agent was heard from {}s ago",
                    h.client,
                    or_unrecorded(&first),
                    h.now - last.unwrap_or(h.now),
                );
                self.exec(
                    "DELETE FROM boot_tokens WHERE hash = ?1",
                    params![h.boot_token_hash],
                )?;
                return self.alarm_outcome(
                    AlarmKind::AttemptAlive,
                    &mac,
                    vec![live.clone()],
                    first,
                    message,
                    h,
                );
            }
        }

        // A new attempt of a machine installed before: the same machine?
        if (h.pin_identity)(&assignment.role) {
            let pinned: Option<String> =
                self.nullable("SELECT pinned_identity FROM machines WHERE mac = ?1", &mac)?;
            if let Some(pinned) =
                pinned.and_then(|p| serde_json::from_str::<IdentityFacts>(&p).ok())
            {
                let presented = IdentityFacts::from_inventory(h.inventory);
                let differences = presented.differences(&pinned);
                if !differences.is_empty() {
                    let differences = differences.join("; ");
                    self.exec(
                        "UPDATE machines SET state = ?2, error = ?3, presented_identity = ?4,
                                updated_at = ?5 WHERE mac = ?1",
                        params![
                            mac,
                            state_str(MachineState::IdentityHeld),
                            format!(
                                "identity differs from the one pinned at the first install ({differences}), \
                                 presented by {}; check the machine, then run: landfall approve {}",
                                h.client, assignment.hostname
                            ),
                            serde_json::to_string(&presented)?,
                            h.now
                        ],
                    )?;
                    return Ok(HelloOutcome::IdentityHeld { mac, differences });
                }
            }
        }

        // A reboot: the previous attempt is superseded, its agent token dies.
        if let Some(old) = &machine.current_attempt {
            self.exec(
                "UPDATE attempts SET superseded_at = ?2 WHERE id = ?1 AND superseded_at IS NULL",
                params![old, h.now],
            )?;
        }
        self.exec(
            "INSERT INTO attempts (id, mac, agent_token_hash, agent_version, protocol, started_at,
                                   client_addr, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
            params![
                h.new_attempt_id,
                mac,
                h.agent_token_hash,
                h.agent_version,
                h.protocol,
                h.now,
                h.client,
            ],
        )?;
        self.exec(
            "UPDATE boot_tokens SET attempt_id = ?2, nonce_hash = ?3 WHERE hash = ?1",
            params![h.boot_token_hash, h.new_attempt_id, h.nonce_hash],
        )?;
        self.exec(
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
        // A waiting agent of the previous attempt must stop.
        self.wake_waiters();
        Ok(HelloOutcome::Ok {
            attempt_id: h.new_attempt_id.to_owned(),
            mac,
            assignment: Box::new(assignment),
            retried: false,
            next_seq: 1,
        })
    }

    /// Record the accessors of a Vault mint for an attempt. False when an
    /// alarm killed the attempt meanwhile (the mint raced it): then the mint
    /// is stored as revoked, and the caller must revoke it in Vault.
    pub fn add_vault_mint(&mut self, m: &VaultMint, now: i64) -> Result<bool> {
        let alive: bool = self
            .value(
                "SELECT agent_token_hash NOT LIKE 'revoked:%' FROM attempts WHERE id = ?1",
                params![m.attempt_id],
            )?
            .unwrap_or(false);
        self.exec(
            "INSERT INTO vault_mints (attempt_id, approle, wrap_accessor, secret_id_accessor,
                                      minted_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?6 = 1 THEN NULL ELSE CAST(?5 AS BIGINT) END)",
            params![
                m.attempt_id,
                m.approle,
                m.wrap_accessor,
                m.secret_id_accessor,
                now,
                alive
            ],
        )?;
        Ok(alive)
    }

    /// The attempt's Vault mints not yet revoked, now marked revoked: a new
    /// mint (retried hello, granted retry) replaces them.
    pub fn take_vault_mints(&mut self, attempt_id: &str, now: i64) -> Result<Vec<VaultMint>> {
        let mints = self.unrevoked_mints(attempt_id)?;
        self.exec(
            "UPDATE vault_mints SET revoked_at = ?2 WHERE attempt_id = ?1 AND revoked_at IS NULL",
            params![attempt_id, now],
        )?;
        Ok(mints)
    }

    /// The agent of a superseded attempt spoke (events, wait) from
    /// `client`. While the machine is installing under the newer attempt,
    /// that agent is alive, so the newer one was no reboot: an alarm over
    /// both attempts. Otherwise `None` (the caller refuses the token).
    pub fn superseded_use(
        &mut self,
        attempt: &AttemptRow,
        client: &str,
        now: i64,
    ) -> Result<Option<Alarm>> {
        let Some(machine) = self.machine(&attempt.mac)? else {
            return Ok(None);
        };
        let Some(newer) = machine.current_attempt.clone() else {
            return Ok(None);
        };
        if machine.state != MachineState::Installing || newer == attempt.id {
            return Ok(None);
        }
        let first = self.attempt_client(&attempt.id)?;
        let message = format!(
            "security alarm: the agent of superseded attempt {} ({}) still speaks, from {client}, \
             while attempt {newer} (from {}) installs the machine: that was no reboot",
            attempt.id,
            or_unrecorded(&first),
            or_unrecorded(&self.attempt_client(&newer)?),
        );
        let alarm = self.raise_alarm(
            AlarmKind::TakenOver,
            &attempt.mac,
            vec![attempt.id.clone(), newer],
            first,
            message,
            client,
            now,
        )?;
        Ok(Some(alarm))
    }

    pub fn attempt_by_agent_token(&mut self, hash: &str) -> Result<Option<AttemptRow>> {
        self.query_opt(
            "SELECT id, mac, acked_seq, superseded_at, last_seen_at FROM attempts
              WHERE agent_token_hash = ?1",
            params![hash],
        )?
        .map(|r| {
            Ok(AttemptRow {
                id: r.get(0)?,
                mac: r.get(1)?,
                acked_seq: r.get(2)?,
                superseded: r.get::<Option<i64>>(3)?.is_some(),
                last_seen_at: r.get(4)?,
            })
        })
        .transpose()
    }

    /// Store each (attempt, seq) once (the first copy wins), advance the
    /// attempt's gap-free acked_seq, and apply a terminal event to the machine
    /// when the attempt is its current one and it is installing.
    /// All of a batch or none: one that would take the attempt past `quota`
    /// stores nothing ([`OverQuota`]).
    pub fn store_events(
        &mut self,
        attempt: &AttemptRow,
        events: &[Event],
        now: i64,
        quota: EventQuota,
    ) -> Result<Result<StoredEvents, OverQuota>> {
        let mut inserted = 0;
        let mut inserted_bytes = 0;
        let mut terminal: Option<&Event> = None;
        for e in events {
            let body = serde_json::to_string(e)?;
            let n = self.exec(
                "INSERT INTO events (attempt_id, seq, mac, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![attempt.id, e.seq, attempt.mac, body, now],
            )? as usize;
            inserted += n;
            if n == 1 {
                inserted_bytes += body.len();
            }
            if n == 1 && e.is_terminal() {
                terminal = Some(e);
            }
        }
        // The gap-free acked seq, this batch's rows included.
        let mut acked = attempt.acked_seq;
        for r in self.query(
            "SELECT seq FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq",
            params![attempt.id, acked],
        )? {
            if r.get::<u64>(0)? == acked + 1 {
                acked += 1;
            } else {
                break;
            }
        }
        // One UPDATE of the attempt: its counts, acked_seq (never lowered)
        // and last_seen_at.
        let counted = self.query_one(
            "UPDATE attempts SET event_count = event_count + ?2, event_bytes = event_bytes + ?3,
                    acked_seq = CASE WHEN acked_seq < ?4 THEN ?4 ELSE acked_seq END,
                    last_seen_at = ?5
              WHERE id = ?1 RETURNING event_count, event_bytes",
            params![attempt.id, inserted, inserted_bytes, acked as i64, now],
        )?;
        let (count, bytes): (i64, i64) = (counted.get(0)?, counted.get(1)?);
        if count as u64 > quota.max_events || bytes as u64 > quota.max_bytes {
            // Nothing of the batch stays.
            self.roll_back();
            return Ok(Err(OverQuota {
                events: (count as u64).saturating_sub(inserted as u64),
                bytes: (bytes as u64).saturating_sub(inserted_bytes as u64),
            }));
        }

        let mut new_state = None;
        if inserted == 0 {
            // A resend: nothing new for the machine.
            return Ok(Ok(StoredEvents {
                acked_seq: acked,
                inserted,
                new_state,
            }));
        }
        // The machine's row changes only when this is its current attempt;
        // one statement touches it and answers its state.
        let state = self.value::<String>(
            "UPDATE machines SET updated_at = ?2 WHERE mac = ?1 AND current_attempt = ?3
              RETURNING state",
            params![attempt.mac, now, attempt.id],
        )?;
        if let (Some(e), Some(state)) = (terminal, state) {
            if state == state_str(MachineState::Installing) {
                let (state, error) = match e.kind {
                    EventKind::Finished => (MachineState::Installed, None),
                    _ if is_security_alarm(e) => (
                        MachineState::Compromised,
                        Some(format!("security alarm: {}", failure_text(e))),
                    ),
                    _ => (MachineState::Failed, Some(failure_text(e))),
                };
                self.exec(
                    "UPDATE machines SET state = ?2, error = ?3, updated_at = ?4 WHERE mac = ?1",
                    params![attempt.mac, state_str(state), error, now],
                )?;
                if state == MachineState::Installed {
                    self.pin_identity_once(&attempt.mac)?;
                }
                new_state = Some(state);
            }
        }
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

impl Tx<'_> {
    /// An agent of `attempt_id` is asking `POST /agent/wait` now, held until
    /// `ends_at` at the latest (at its end, `ends_at` is `now`).
    pub fn note_wait(&mut self, attempt_id: &str, now: i64, ends_at: i64) -> Result<()> {
        self.exec(
            "UPDATE attempts SET last_wait_at = ?2, wait_ends_at = ?3, last_seen_at = ?2
              WHERE id = ?1",
            params![attempt_id, now, ends_at],
        )?;
        Ok(())
    }

    /// Whether the agent of `mac`'s current attempt is waiting for an
    /// operator's answer at `now`: a wait is open, or ended less than
    /// `grace` seconds ago (the agent asks again at once).
    pub fn installer_wait(&mut self, mac: &str, now: i64, grace: i64) -> Result<InstallerWait> {
        let (last, ends): (Option<i64>, Option<i64>) = match self.query_opt(
            "SELECT a.last_wait_at, a.wait_ends_at FROM machines m
               JOIN attempts a ON a.id = m.current_attempt WHERE m.mac = ?1",
            params![mac],
        )? {
            Some(r) => (r.get(0)?, r.get(1)?),
            None => (None, None),
        };
        Ok(InstallerWait {
            waiting: ends.is_some_and(|e| now <= e + grace),
            last_wait_at: last.map(super::rfc3339),
        })
    }

    /// Where the machine of a waiting attempt stands.
    pub fn wait_check(&mut self, attempt: &AttemptRow) -> Result<WaitCheck> {
        let Some(m) = self.machine(&attempt.mac)? else {
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
            MachineState::Installing if self.last_event_failed_terminal(&attempt.id)? => {
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
        &mut self,
        mac: &str,
        attempt_id: &str,
        a: &Assignment,
        now: i64,
    ) -> Result<bool> {
        let n = self.exec(
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

/// A recorded client address, or what a message says without one.
fn or_unrecorded(addr: &Option<String>) -> &str {
    addr.as_deref().unwrap_or("an unrecorded address")
}

impl Tx<'_> {
    /// Pin the machine's identity from its stored inventory (the one of its
    /// current attempt's hello) unless one is pinned already.
    fn pin_identity_once(&mut self, mac: &str) -> Result<()> {
        let inventory: Option<String> = self.nullable(
            "SELECT inventory FROM machines WHERE mac = ?1 AND pinned_identity IS NULL",
            mac,
        )?;
        if let Some(inv) = inventory.and_then(|i| serde_json::from_str::<Inventory>(&i).ok()) {
            self.exec(
                "UPDATE machines SET pinned_identity = ?2 WHERE mac = ?1",
                params![
                    mac,
                    serde_json::to_string(&IdentityFacts::from_inventory(&inv))?
                ],
            )?;
        }
        Ok(())
    }

    /// The Vault mints of an attempt not yet revoked.
    fn unrevoked_mints(&mut self, attempt_id: &str) -> Result<Vec<VaultMint>> {
        self.query(
            "SELECT approle, wrap_accessor, secret_id_accessor FROM vault_mints
              WHERE attempt_id = ?1 AND revoked_at IS NULL ORDER BY id",
            params![attempt_id],
        )?
        .iter()
        .map(|r| {
            Ok(VaultMint {
                attempt_id: attempt_id.to_owned(),
                approle: r.get(0)?,
                wrap_accessor: r.get(1)?,
                secret_id_accessor: r.get(2)?,
            })
        })
        .collect()
    }

    /// The client address of an attempt's first hello, when recorded.
    fn attempt_client(&mut self, attempt_id: &str) -> Result<Option<String>> {
        self.nullable("SELECT client_addr FROM attempts WHERE id = ?1", attempt_id)
    }

    /// One nullable column of the row `sql` finds by `key`: `None` when there
    /// is no row or the column is NULL.
    fn nullable<T: super::FromValue>(&mut self, sql: &str, key: &str) -> Result<Option<T>> {
        Ok(self.value::<Option<T>>(sql, params![key])?.flatten())
    }

    /// [`Tx::raise_alarm`] for a hello: what `hello` answers.
    #[allow(clippy::too_many_arguments)]
    fn alarm_outcome(
        &mut self,
        kind: AlarmKind,
        mac: &str,
        attempts: Vec<String>,
        first_client: Option<String>,
        message: String,
        h: &HelloInput<'_>,
    ) -> Result<HelloOutcome> {
        let alarm =
            self.raise_alarm(kind, mac, attempts, first_client, message, h.client, h.now)?;
        Ok(HelloOutcome::Alarm(alarm))
    }

    /// The alarm, inside `hello`'s transaction: the machine goes `compromised`
    /// with `message` as its error; each attempt's agent and verify tokens and
    /// its exchanged boot tokens die; each attempt gets an event saying what
    /// happened (both clients' addresses); its Vault mints not yet revoked are
    /// marked revoked and returned, for the caller to revoke in Vault.
    #[allow(clippy::too_many_arguments)]
    fn raise_alarm(
        &mut self,
        kind: AlarmKind,
        mac: &str,
        attempts: Vec<String>,
        first_client: Option<String>,
        message: String,
        client: &str,
        now: i64,
    ) -> Result<Alarm> {
        self.exec(
            "UPDATE machines SET state = ?2, error = ?3, updated_at = ?4 WHERE mac = ?1",
            params![mac, state_str(MachineState::Compromised), message, now],
        )?;
        let mut revoke = Vec::new();
        for id in &attempts {
            self.exec(
                "UPDATE attempts SET agent_token_hash = 'revoked:' || id, verify_token_hash = NULL
                  WHERE id = ?1",
                params![id],
            )?;
            self.exec("DELETE FROM boot_tokens WHERE attempt_id = ?1", params![id])?;
            let seq: i64 = self
                .value(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE attempt_id = ?1",
                    params![id],
                )?
                .unwrap_or(1);
            let event = Event {
                seq: seq.max(1) as u64,
                time: super::rfc3339(now),
                step: Step::Register,
                kind: EventKind::Failed,
                progress: None,
                message: message.clone(),
                data: landfall_proto::FailureData {
                    security: true,
                    alarm: Some(format!("{kind:?}")),
                    first_client: first_client.clone(),
                    second_client: Some(client.to_owned()),
                    recorded_by: Some("server".to_owned()),
                    ..Default::default()
                }
                .to_data(),
            };
            self.exec(
                "INSERT INTO events (attempt_id, seq, mac, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![id, seq, mac, serde_json::to_string(&event)?, now],
            )?;
            revoke.extend(self.unrevoked_mints(id)?);
            self.exec(
                "UPDATE vault_mints SET revoked_at = ?2 WHERE attempt_id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )?;
        }
        Ok(Alarm {
            kind,
            mac: mac.to_owned(),
            attempts,
            first_client,
            message,
            revoke,
        })
    }

    /// The attempt's highest-seq event is a terminal failure (`done failed`).
    fn last_event_failed_terminal(&mut self, attempt_id: &str) -> Result<bool> {
        let body: Option<String> = self.value(
            "SELECT body FROM events WHERE attempt_id = ?1 ORDER BY seq DESC LIMIT 1",
            params![attempt_id],
        )?;
        Ok(body
            .and_then(|b| serde_json::from_str::<Event>(&b).ok())
            .is_some_and(|e| e.is_terminal() && e.kind == EventKind::Failed))
    }
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
