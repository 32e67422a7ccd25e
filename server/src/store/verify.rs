//! First-boot verification: verify tokens (hash per attempt) and the
//! verifications machines report.

use super::{rfc3339, state_str, Tx};
use crate::params;
use anyhow::Result;
use landfall_proto::verify::{CheckResult, VerifySummary};
use landfall_proto::MachineState;

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

impl Tx<'_> {
    /// Replace the verify token of an attempt (every hello mints a new one).
    pub fn set_verify_token(&mut self, attempt_id: &str, hash: &str) -> Result<()> {
        self.exec(
            "UPDATE attempts SET verify_token_hash = ?2 WHERE id = ?1",
            params![attempt_id, hash],
        )?;
        Ok(())
    }

    pub fn attempt_by_verify_token(&mut self, hash: &str) -> Result<Option<VerifyAuth>> {
        self.query_opt(
            "SELECT id, mac FROM attempts WHERE verify_token_hash = ?1",
            params![hash],
        )?
        .map(|r| {
            Ok(VerifyAuth {
                attempt_id: r.get(0)?,
                mac: r.get(1)?,
            })
        })
        .transpose()
    }

    /// Store a verification and move the machine: `installed`, `ready` or
    /// `degraded` -> `ready` when every check passed, else `degraded` with
    /// `error` naming the failed checks. Repeated reports are allowed; the
    /// state follows the latest.
    pub fn record_verify(
        &mut self,
        auth: &VerifyAuth,
        hostname: &str,
        checks: &[CheckResult],
        now: i64,
    ) -> Result<VerifyOutcome> {
        let Some(m) = self.machine(&auth.mac)? else {
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
        self.exec(
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
        self.exec(
            "UPDATE machines SET state = ?2, error = ?3, updated_at = ?4 WHERE mac = ?1",
            params![auth.mac, state_str(state), error, now],
        )?;
        Ok(VerifyOutcome::Done(state))
    }

    /// The machine's last verification, for the admin detail.
    pub(super) fn last_verify(&mut self, mac: &str) -> Result<Option<VerifySummary>> {
        let Some(r) = self.query_opt(
            "SELECT attempt_id, received_at, hostname, ok, checks FROM verifications
             WHERE mac = ?1 ORDER BY id DESC LIMIT 1",
            params![mac],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(VerifySummary {
            attempt_id: r.get(0)?,
            received_at: rfc3339(r.get(1)?),
            hostname: r.get(2)?,
            ok: r.get(3)?,
            checks: serde_json::from_str(&r.get::<String>(4)?).unwrap_or_default(),
        }))
    }
}
