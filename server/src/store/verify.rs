//! First-boot verification: verify tokens (hash per attempt) and the
//! verifications machines report.

use anyhow::Result;
use landfall_proto::verify::{CheckResult, VerifySummary};
use landfall_proto::MachineState;
use rusqlite::{params, Connection, OptionalExtension};

use super::{machines, rfc3339, state_str, Store};

/// The attempt a verify token belongs to.
#[derive(Debug, Clone)]
pub struct VerifyAuth {
    pub attempt_id: String,
    pub mac: String,
}

/// What a reported verification did.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Stored; the machine is now `ready` or `degraded`.
    Done(MachineState),
    /// The token's attempt is not the machine's current one (a later install began).
    NotCurrent,
    /// The machine is in a state verification does not apply to.
    WrongState(MachineState),
}

impl Store {
    /// Replace the verify token of an attempt (every hello mints a new one).
    pub fn set_verify_token(&self, attempt_id: &str, hash: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE attempts SET verify_token_hash = ?2 WHERE id = ?1",
            params![attempt_id, hash],
        )?;
        Ok(())
    }

    pub fn attempt_by_verify_token(&self, hash: &str) -> Result<Option<VerifyAuth>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, mac FROM attempts WHERE verify_token_hash = ?1",
                [hash],
                |r| {
                    Ok(VerifyAuth {
                        attempt_id: r.get(0)?,
                        mac: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Store a verification and move the machine: `installed`, `ready` or
    /// `degraded` -> `ready` when every check passed, else `degraded` with
    /// `error` naming the failed checks. Repeated reports are allowed; the
    /// state follows the latest.
    pub fn record_verify(
        &self,
        auth: &VerifyAuth,
        hostname: &str,
        checks: &[CheckResult],
        now: i64,
    ) -> Result<VerifyOutcome> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(m) = machines::get(&tx, &auth.mac)? else {
            return Ok(VerifyOutcome::NotCurrent);
        };
        if m.current_attempt.as_deref() != Some(auth.attempt_id.as_str()) {
            return Ok(VerifyOutcome::NotCurrent);
        }
        if !matches!(
            m.state,
            MachineState::Installed | MachineState::Ready | MachineState::Degraded
        ) {
            return Ok(VerifyOutcome::WrongState(m.state));
        }
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        let (state, error) = if failed.is_empty() {
            (MachineState::Ready, None)
        } else {
            (
                MachineState::Degraded,
                Some(format!("failed checks: {}", failed.join(", "))),
            )
        };
        tx.execute(
            "INSERT INTO verifications (mac, attempt_id, hostname, ok, checks, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                auth.mac,
                auth.attempt_id,
                hostname,
                failed.is_empty(),
                serde_json::to_string(checks)?,
                now
            ],
        )?;
        tx.execute(
            "UPDATE machines SET state = ?2, error = ?3, updated_at = ?4 WHERE mac = ?1",
            params![auth.mac, state_str(state), error, now],
        )?;
        tx.commit()?;
        Ok(VerifyOutcome::Done(state))
    }
}

/// The machine's last verification, for the admin detail.
pub(super) fn last(conn: &Connection, mac: &str) -> Result<Option<VerifySummary>> {
    let row = conn
        .query_row(
            "SELECT attempt_id, received_at, hostname, ok, checks FROM verifications
             WHERE mac = ?1 ORDER BY id DESC LIMIT 1",
            [mac],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?;
    Ok(
        row.map(|(attempt_id, at, hostname, ok, checks)| VerifySummary {
            attempt_id,
            received_at: rfc3339(at),
            hostname,
            ok,
            checks: serde_json::from_str(&checks).unwrap_or_default(),
        }),
    )
}
