//! The webhook outbox (issue 15). Migration 7's triggers journal every
//! change of a machine's state into `state_changes`, inside the
//! transaction that made it. [`Store::fan_out`] turns each journaled change
//! into one delivery per matching webhook (and drops it from the journal) in
//! one transaction; the notifier ([`crate::notify`]) claims due deliveries,
//! sends them and records each result. A delivery whose success is recorded
//! is never claimed again; one claimed by a server that died is claimable
//! again when its lease ends.

use super::{rfc3339, Tx};
use crate::params;
use anyhow::Result;
use landfall_proto::notify::{Delivery, DeliveryStatus, NotifiedMachine, StateChange};
use landfall_proto::MachineState;

/// A configured webhook, as the fan-out matches changes against it.
#[derive(Debug, Clone, Copy)]
pub struct WebhookTarget<'a> {
    pub url: &'a str,
    /// The states it is told about.
    pub states: &'a [MachineState],
    /// The roles it is told about; empty: every machine.
    pub roles: &'a [String],
}

impl WebhookTarget<'_> {
    fn wants(&self, c: &StateChange) -> bool {
        self.states.contains(&c.state)
            && (self.roles.is_empty()
                || c.machine
                    .role
                    .as_ref()
                    .is_some_and(|r| self.roles.contains(r)))
    }
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: u64,
    pub url: String,
    pub body: String,
    /// Sends tried before this one.
    pub attempts: u32,
    /// When it was queued (unix seconds).
    pub created_at: i64,
}

/// What one send came to.
#[derive(Debug, Clone)]
pub enum SendResult {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Try again at `next_at` (unix seconds).
    Retry {
        status: Option<u16>,
        error: String,
        next_at: i64,
    },
    /// Stop trying: the delivery is `failed`.
    GiveUp { status: Option<u16>, error: String },
}

/// Which deliveries `GET /api/v1/notifications` lists: newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub limit: u64,
}

const STATUS_SQL: &str = "CASE WHEN delivered_at IS NOT NULL THEN 'delivered'
                               WHEN failed_at IS NOT NULL THEN 'failed' ELSE 'pending' END";

impl Tx<'_> {
    /// Turn up to `limit` journaled state changes, oldest first, into one
    /// delivery each per target that wants it, the body a [`StateChange`]
    /// with `link`'s dashboard URL. The changes leave the journal in the
    /// same transaction. Answers how many changes were taken.
    pub fn fan_out(
        &mut self,
        targets: &[WebhookTarget<'_>],
        link: &dyn Fn(&NotifiedMachine) -> Option<String>,
        limit: u64,
    ) -> Result<usize> {
        let rows = self.query(
            "SELECT id, mac, hostname, role, state, previous, error, attempt_id, at
               FROM state_changes ORDER BY id LIMIT ?1",
            params![limit.min(i64::MAX as u64)],
        )?;
        let mut changes = Vec::with_capacity(rows.len());
        for r in &rows {
            let machine = NotifiedMachine {
                mac: r.get(1)?,
                hostname: r.get(2)?,
                role: r.get(3)?,
            };
            let at: i64 = r.get(8)?;
            changes.push((
                at,
                StateChange {
                    id: r.get(0)?,
                    time: rfc3339(at),
                    dashboard_url: link(&machine),
                    machine,
                    state: MachineState::parse(&r.get::<String>(4)?),
                    previous_state: r.get::<Option<String>>(5)?.map(|s| MachineState::parse(&s)),
                    error: r.get(6)?,
                    attempt_id: r.get(7)?,
                },
            ));
        }
        for (at, c) in &changes {
            let body = serde_json::to_string(c)?;
            for t in targets.iter().filter(|t| t.wants(c)) {
                self.exec(
                    "INSERT INTO webhook_deliveries
                       (change_id, url, mac, hostname, state, body, created_at, next_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                     ON CONFLICT DO NOTHING",
                    params![
                        c.id,
                        t.url,
                        c.machine.mac,
                        c.machine.hostname,
                        c.state.as_str(),
                        body,
                        at
                    ],
                )?;
            }
            self.exec("DELETE FROM state_changes WHERE id = ?1", params![c.id])?;
        }
        Ok(changes.len())
    }

    /// Claim up to `limit` deliveries due at `now` (pending, their time
    /// come, not claimed by a live lease) for `lease` seconds.
    pub fn claim_due(&mut self, now: i64, lease: i64, limit: u64) -> Result<Vec<DueDelivery>> {
        let rows = self.query(
            "UPDATE webhook_deliveries SET claimed_until = ?2
              WHERE id IN (SELECT id FROM webhook_deliveries
                            WHERE delivered_at IS NULL AND failed_at IS NULL
                              AND next_at <= ?1 AND claimed_until <= ?1
                            ORDER BY id LIMIT ?3)
              RETURNING id, url, body, attempts, created_at",
            params![now, now.saturating_add(lease), limit.min(i64::MAX as u64)],
        )?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok(DueDelivery {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    body: r.get(2)?,
                    attempts: r.get::<u64>(3)?.min(u32::MAX as u64) as u32,
                    created_at: r.get(4)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        due.sort_by_key(|d| d.id);
        Ok(due)
    }

    /// Record the result of sending delivery `id` and end its claim. A
    /// delivery already recorded delivered or failed is left as it is.
    pub fn record_send(&mut self, id: u64, result: &SendResult, now: i64) -> Result<()> {
        let (status, error, next_at, delivered, failed) = match result {
            SendResult::Delivered { status } => (Some(*status), None, None, Some(now), None),
            SendResult::Retry {
                status,
                error,
                next_at,
            } => (*status, Some(error.as_str()), Some(*next_at), None, None),
            SendResult::GiveUp { status, error } => {
                (*status, Some(error.as_str()), None, None, Some(now))
            }
        };
        self.exec(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, claimed_until = 0,
                    last_status = ?2, last_error = ?3, next_at = COALESCE(?4, next_at),
                    delivered_at = ?5, failed_at = ?6
              WHERE id = ?1 AND delivered_at IS NULL AND failed_at IS NULL",
            params![id, status, error, next_at, delivered, failed],
        )?;
        Ok(())
    }

    /// The deliveries, newest first.
    pub fn deliveries(&mut self, f: &DeliveryFilter) -> Result<Vec<Delivery>> {
        let limit = f.limit.min(i64::MAX as u64);
        let rows = match f.status {
            None => self.query(
                &format!(
                    "SELECT id, change_id, url, mac, hostname, state, created_at, attempts, next_at,
                            delivered_at, last_status, last_error, {STATUS_SQL}
                       FROM webhook_deliveries ORDER BY id DESC LIMIT ?1"
                ),
                params![limit],
            )?,
            Some(st) => self.query(
                &format!(
                    "SELECT id, change_id, url, mac, hostname, state, created_at, attempts, next_at,
                            delivered_at, last_status, last_error, {STATUS_SQL}
                       FROM webhook_deliveries WHERE {STATUS_SQL} = ?1
                      ORDER BY id DESC LIMIT ?2"
                ),
                params![st.as_str(), limit],
            )?,
        };
        rows.iter()
            .map(|r| {
                let status = status_parse(&r.get::<String>(12)?);
                Ok(Delivery {
                    id: r.get(0)?,
                    change_id: r.get(1)?,
                    url: r.get(2)?,
                    mac: r.get(3)?,
                    hostname: r.get(4)?,
                    state: MachineState::parse(&r.get::<String>(5)?),
                    created_at: rfc3339(r.get(6)?),
                    attempts: r.get::<u64>(7)?.min(u32::MAX as u64) as u32,
                    next_attempt_at: (status == DeliveryStatus::Pending)
                        .then(|| r.get::<i64>(8).map(rfc3339))
                        .transpose()?,
                    delivered_at: r.get::<Option<i64>>(9)?.map(rfc3339),
                    last_status: r
                        .get::<Option<i64>>(10)?
                        .and_then(|s| u16::try_from(s).ok()),
                    last_error: r.get(11)?,
                    status,
                })
            })
            .collect()
    }

    /// How many deliveries are pending, delivered and failed.
    pub fn delivery_counts(&mut self) -> Result<Vec<(DeliveryStatus, u64)>> {
        self.query(
            &format!("SELECT {STATUS_SQL}, COUNT(*) FROM webhook_deliveries GROUP BY 1"),
            params![],
        )?
        .iter()
        .map(|r| Ok((status_parse(&r.get::<String>(0)?), r.get(1)?)))
        .collect()
    }

    /// Forget the deliveries that ended (delivered or failed) before `before`.
    pub fn prune_deliveries(&mut self, before: i64) -> Result<usize> {
        Ok(self.exec(
            "DELETE FROM webhook_deliveries
              WHERE COALESCE(delivered_at, failed_at) < ?1",
            params![before],
        )? as usize)
    }
}

fn status_parse(s: &str) -> DeliveryStatus {
    match s {
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_conn;

    fn set_state(s: &mut Tx<'_>, mac: &str, state: &str, at: i64) {
        s.exec(
            "UPDATE machines SET state = ?2, updated_at = ?3 WHERE mac = ?1",
            params![mac, state, at],
        )
        .unwrap();
    }

    /// Every change of state is journaled by the database itself, a repeated
    /// state is not; the fan-out matches states and roles, and empties the
    /// journal.
    #[test]
    fn changes_fan_out_to_the_webhooks_that_want_them() {
        let (_d, mut c) = test_conn();
        let s = &mut Tx::new(&mut c);
        s.batch(
            "INSERT INTO machines (mac, hostname, role, state, created_at, updated_at, last_seen)
                   VALUES ('52:54:00:00:00:01', 'ws-01', 'workstation', 'assigned', 10, 10, 10),
                          ('52:54:00:00:00:02', 'srv-01', 'server', 'assigned', 10, 10, 10);",
        )
        .unwrap();
        set_state(s, "52:54:00:00:00:01", "installing", 11);
        set_state(s, "52:54:00:00:00:01", "failed", 12);
        set_state(s, "52:54:00:00:00:01", "failed", 13);
        set_state(s, "52:54:00:00:00:02", "installing", 11);
        set_state(s, "52:54:00:00:00:02", "installed", 14);
        let failed = [MachineState::Failed, MachineState::Installed];
        let ws = ["workstation".to_owned()];
        let targets = [
            WebhookTarget {
                url: "http://a/",
                states: &failed,
                roles: &[],
            },
            WebhookTarget {
                url: "http://b/",
                states: &failed,
                roles: &ws,
            },
        ];
        let link = |m: &NotifiedMachine| Some(format!("http://x/ui/machines/{}", m.mac));
        // 2 inserts + 4 changes; the repeated `failed` is none.
        assert_eq!(s.fan_out(&targets, &link, 100).unwrap(), 6);
        assert_eq!(s.fan_out(&targets, &link, 100).unwrap(), 0);
        let all = s
            .deliveries(&DeliveryFilter {
                status: None,
                limit: 100,
            })
            .unwrap();
        let got: Vec<(&str, &str, MachineState)> = all
            .iter()
            .map(|d| (d.url.as_str(), d.mac.as_str(), d.state))
            .collect();
        assert_eq!(
            got,
            [
                ("http://a/", "52:54:00:00:00:02", MachineState::Installed),
                ("http://b/", "52:54:00:00:00:01", MachineState::Failed),
                ("http://a/", "52:54:00:00:00:01", MachineState::Failed),
            ]
        );
        let due = s.claim_due(100, 60, 10).unwrap();
        let body: StateChange = serde_json::from_str(&due[0].body).unwrap();
        assert_eq!(body.state, MachineState::Failed);
        assert_eq!(body.previous_state, Some(MachineState::Installing));
        assert_eq!(body.time, "1970-01-01T00:00:12Z");
        assert_eq!(
            body.dashboard_url.as_deref(),
            Some("http://x/ui/machines/52:54:00:00:00:01")
        );
        assert_eq!(due[0].body, due[1].body, "one body for every webhook");
    }

    /// A claim hides a delivery until its lease ends; a recorded success is
    /// final; a retry waits for its time.
    #[test]
    fn claims_leases_and_results() {
        let (_d, mut c) = test_conn();
        let s = &mut Tx::new(&mut c);
        s.batch(
            "INSERT INTO machines (mac, role, state, created_at, updated_at, last_seen)
                   VALUES ('52:54:00:00:00:01', 'r', 'failed', 10, 10, 10),
                          ('52:54:00:00:00:02', 'r', 'failed', 10, 10, 10);",
        )
        .unwrap();
        let states = [MachineState::Failed];
        let t = [WebhookTarget {
            url: "http://a/",
            states: &states,
            roles: &[],
        }];
        s.fan_out(&t, &|_| None, 100).unwrap();
        let due = s.claim_due(20, 60, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert!(s.claim_due(21, 60, 10).unwrap().is_empty(), "claimed");
        s.record_send(due[0].id, &SendResult::Delivered { status: 204 }, 22)
            .unwrap();
        s.record_send(
            due[1].id,
            &SendResult::Retry {
                status: Some(500),
                error: "HTTP 500".into(),
                next_at: 30,
            },
            22,
        )
        .unwrap();
        assert!(s.claim_due(29, 60, 10).unwrap().is_empty(), "not yet due");
        let again = s.claim_due(30, 60, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (due[1].id, 1));
        // The server died holding the claim: claimable when the lease ends.
        assert!(s.claim_due(89, 60, 10).unwrap().is_empty());
        assert_eq!(s.claim_due(90, 60, 10).unwrap().len(), 1);
        // A late result for a delivered one changes nothing.
        s.record_send(
            due[0].id,
            &SendResult::GiveUp {
                status: None,
                error: "x".into(),
            },
            95,
        )
        .unwrap();
        let mut counts = s.delivery_counts().unwrap();
        counts.sort_by_key(|(st, _)| st.as_str());
        assert_eq!(
            counts,
            [(DeliveryStatus::Delivered, 1), (DeliveryStatus::Pending, 1)]
        );
        let delivered = s
            .deliveries(&DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                limit: 10,
            })
            .unwrap();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].last_status, Some(204));
        assert_eq!(delivered[0].next_attempt_at, None);
        assert_eq!(s.prune_deliveries(23).unwrap(), 1);
        assert_eq!(s.prune_deliveries(1000).unwrap(), 0, "pending stays");
    }
}
