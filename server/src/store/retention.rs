//! `[server] event_retention`: the events of attempts that are over are
//! deleted once they are old; the attempt keeps its row and records when.

use anyhow::Result;

use super::Tx;
use crate::params;

/// What one prune did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub attempts: u64,
    pub events: u64,
}

impl Tx<'_> {
    /// Delete the events of at most `batch` attempts that are not their
    /// machine's current one and whose agent was last heard from (and which
    /// were superseded, if they were) before `cutoff`, and record `now` on
    /// each as `events_pruned_at`. A machine's current attempt keeps its
    /// events however old. Called until it prunes nothing, one batch a
    /// transaction, so a long prune never holds the writer for long.
    pub fn prune_events(&mut self, cutoff: i64, now: i64, batch: u64) -> Result<Pruned> {
        let ids = self.query(
            "SELECT a.id FROM attempts a
              WHERE a.events_pruned_at IS NULL
                AND COALESCE(a.last_seen_at, a.started_at) < ?1
                AND (a.superseded_at IS NULL OR a.superseded_at < ?1)
                AND NOT EXISTS (SELECT 1 FROM machines m WHERE m.current_attempt = a.id)
              ORDER BY a.started_at LIMIT ?2",
            params![cutoff, batch],
        )?;
        let mut out = Pruned::default();
        for r in ids {
            let id: String = r.get(0)?;
            out.events += self.exec("DELETE FROM events WHERE attempt_id = ?1", params![id])?;
            self.exec(
                "UPDATE attempts SET events_pruned_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            out.attempts += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_attempts_that_are_over_lose_their_events() {
        let (_dir, mut c) = crate::store::test_conn();
        let tx = &mut Tx::new(&mut c);
        tx.batch(
            "INSERT INTO machines (mac, state, current_attempt, created_at, updated_at, last_seen)
               VALUES ('m1', 'installing', 'cur', 0, 0, 0);
             INSERT INTO attempts (id, mac, agent_token_hash, agent_version, protocol, started_at,
                                   last_seen_at, superseded_at)
               VALUES ('old', 'm1', 'h1', 'v', 1, 10, 20, 30),
                      ('cur', 'm1', 'h2', 'v', 1, 10, 20, NULL),
                      ('recent', 'm1', 'h3', 'v', 1, 10, 200, NULL),
                      ('late_superseded', 'm1', 'h4', 'v', 1, 10, 20, 150);
             INSERT INTO events (attempt_id, seq, mac, body, received_at)
               VALUES ('old', 1, 'm1', '{}', 20), ('old', 2, 'm1', '{}', 20),
                      ('cur', 1, 'm1', '{}', 20), ('recent', 1, 'm1', '{}', 200),
                      ('late_superseded', 1, 'm1', '{}', 20);",
        )
        .unwrap();
        // Over before 100: only `old`; one per batch.
        assert_eq!(
            tx.prune_events(100, 500, 1).unwrap(),
            Pruned {
                attempts: 1,
                events: 2
            }
        );
        assert_eq!(tx.prune_events(100, 500, 1).unwrap(), Pruned::default());
        let left: Vec<(String, Option<i64>, i64)> = tx
            .query(
                "SELECT a.id, a.events_pruned_at,
                        (SELECT COUNT(*) FROM events e WHERE e.attempt_id = a.id)
                   FROM attempts a ORDER BY a.id",
                params![],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("cur".to_owned(), None, 1),
                ("late_superseded".to_owned(), None, 1),
                ("old".to_owned(), Some(500), 0),
                ("recent".to_owned(), None, 1),
            ]
        );
    }
}
