//! The server's state in SQLite (rusqlite, bundled): machines, boot tokens,
//! attempts and events. One connection behind a std `Mutex`, held briefly.
//!
//! Tokens are never stored, only their SHA-256 (hex). Times are unix seconds.

mod agent;
mod fleet;
mod latency;
mod leases;
mod machines;
mod outbox;
mod stats;
mod verify;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use landfall_proto::{MachineState, WipePolicy};
use rusqlite::Connection;

pub use agent::{
    Alarm, AlarmKind, AttemptRow, EventQuota, HelloInput, HelloOutcome, OverQuota, StoredEvents,
    VaultMint, WaitCheck,
};
pub use fleet::{FleetRow, LastEvent};
pub use leases::Lease;
pub use machines::{DiscoveredCap, EventPage, MachineRow, RetryOutcome};
pub use outbox::{DeliveryFilter, DueDelivery, SendResult, WebhookTarget};
pub use stats::MachineCount;
pub use verify::{VerifyAuth, VerifyOutcome};

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE machines (
        mac             TEXT PRIMARY KEY,
        hostname        TEXT,
        role            TEXT,
        layout          TEXT,
        wipe            TEXT NOT NULL DEFAULT 'never',
        state           TEXT NOT NULL,
        error           TEXT,
        current_attempt TEXT,
        inventory       TEXT,
        arch            TEXT,
        platform        TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        last_seen       INTEGER NOT NULL
    );
    CREATE INDEX machines_hostname ON machines(hostname);
    CREATE TABLE boot_tokens (
        hash        TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        attempt_id  TEXT
    );
    CREATE INDEX boot_tokens_mac ON boot_tokens(mac);
    CREATE TABLE attempts (
        id               TEXT PRIMARY KEY,
        mac              TEXT NOT NULL,
        agent_token_hash TEXT NOT NULL UNIQUE,
        agent_version    TEXT NOT NULL,
        protocol         INTEGER NOT NULL,
        started_at       INTEGER NOT NULL,
        acked_seq        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_mac ON attempts(mac);
    CREATE TABLE events (
        attempt_id  TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        mac         TEXT NOT NULL,
        body        TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (attempt_id, seq)
    );
    "#,
    // 2: first-boot verification: a verify token per attempt (its hash), and
    // every verification a machine reported.
    r#"
    ALTER TABLE attempts ADD COLUMN verify_token_hash TEXT;
    CREATE UNIQUE INDEX attempts_verify_token ON attempts(verify_token_hash);
    CREATE TABLE verifications (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        mac         TEXT NOT NULL,
        attempt_id  TEXT NOT NULL,
        hostname    TEXT NOT NULL,
        ok          INTEGER NOT NULL,
        checks      TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX verifications_mac ON verifications(mac);
    "#,
    // 3: when the agent of an attempt last asked `POST /agent/wait`, and
    // until when its open wait is held (`landfall retry` tells whether
    // anybody is waiting).
    r#"
    ALTER TABLE attempts ADD COLUMN last_wait_at INTEGER;
    ALTER TABLE attempts ADD COLUMN wait_ends_at INTEGER;
    "#,
    // 4: install identity (issue 12): the hash of the nonce the first
    // claimant of a boot token sent, the client address of each attempt's
    // first hello, when its agent was last heard from, when a newer attempt
    // superseded it (its agent token died then), the identity pinned at a
    // machine's first install and the one a held hello presented, and the accessors
    // (not secrets) of every Vault mint, so an alarm can revoke them all.
    r#"
    ALTER TABLE boot_tokens ADD COLUMN nonce_hash TEXT;
    ALTER TABLE attempts ADD COLUMN client_addr TEXT;
    ALTER TABLE attempts ADD COLUMN last_seen_at INTEGER;
    ALTER TABLE attempts ADD COLUMN superseded_at INTEGER;
    ALTER TABLE machines ADD COLUMN pinned_identity TEXT;
    ALTER TABLE machines ADD COLUMN presented_identity TEXT;
    CREATE TABLE vault_mints (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        attempt_id         TEXT NOT NULL,
        approle            TEXT NOT NULL,
        wrap_accessor      TEXT NOT NULL,
        secret_id_accessor TEXT NOT NULL,
        minted_at          INTEGER NOT NULL,
        revoked_at         INTEGER
    );
    CREATE INDEX vault_mints_attempt ON vault_mints(attempt_id);
    "#,
    // 5: caps (issue 12 item 6): new discovered machines per minute, and an
    // attempt's stored events and their bytes, counted as they are stored.
    r#"
    CREATE INDEX machines_state_created ON machines(state, created_at);
    ALTER TABLE attempts ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN event_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE attempts SET
        event_count = (SELECT COUNT(*) FROM events e WHERE e.attempt_id = attempts.id),
        event_bytes = (SELECT COALESCE(SUM(LENGTH(e.body)), 0) FROM events e
                        WHERE e.attempt_id = attempts.id);
    "#,
    // 6: the addresses `[netboot] dhcp = "full"` handed out (issue 13).
    r#"
    CREATE TABLE dhcp_leases (
        mac        TEXT PRIMARY KEY,
        ip         TEXT NOT NULL UNIQUE,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 7: notifications (issue 15): every change of a machine's state is
    // journaled by a trigger, in the transaction that made it, whichever
    // statement made it; the notifier fans each change out into one
    // delivery per matching `[[webhooks]]` entry, sent from this outbox with
    // backoff until the receiver takes it (store/outbox.rs).
    r#"
    CREATE TABLE state_changes (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        mac         TEXT NOT NULL,
        hostname    TEXT,
        role        TEXT,
        state       TEXT NOT NULL,
        previous    TEXT,
        error       TEXT,
        attempt_id  TEXT,
        at          INTEGER NOT NULL
    );
    CREATE TRIGGER machines_state_inserted AFTER INSERT ON machines
    BEGIN
        INSERT INTO state_changes (mac, hostname, role, state, previous, error, attempt_id, at)
        VALUES (NEW.mac, NEW.hostname, NEW.role, NEW.state, NULL, NEW.error,
                NEW.current_attempt, NEW.updated_at);
    END;
    CREATE TRIGGER machines_state_changed AFTER UPDATE OF state ON machines
    WHEN NEW.state IS NOT OLD.state
    BEGIN
        INSERT INTO state_changes (mac, hostname, role, state, previous, error, attempt_id, at)
        VALUES (NEW.mac, NEW.hostname, NEW.role, NEW.state, OLD.state, NEW.error,
                NEW.current_attempt, NEW.updated_at);
    END;
    CREATE TABLE webhook_deliveries (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        change_id     INTEGER NOT NULL,
        url           TEXT NOT NULL,
        mac           TEXT NOT NULL,
        hostname      TEXT,
        state         TEXT NOT NULL,
        body          TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_at       INTEGER NOT NULL,
        claimed_until INTEGER NOT NULL DEFAULT 0,
        last_status   INTEGER,
        last_error    TEXT,
        delivered_at  INTEGER,
        failed_at     INTEGER,
        UNIQUE (change_id, url)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_at)
        WHERE delivered_at IS NULL AND failed_at IS NULL;
    "#,
    // 8: when a machine entered its state (the dashboard's "time in state"),
    // kept by a trigger so no writer has to; NULL: since created_at.
    r#"
    ALTER TABLE machines ADD COLUMN state_since INTEGER;
    UPDATE machines SET state_since = updated_at;
    CREATE TRIGGER machines_state_since AFTER UPDATE OF state ON machines
      FOR EACH ROW WHEN NEW.state IS NOT OLD.state
      BEGIN
        UPDATE machines SET state_since = NEW.updated_at WHERE mac = NEW.mac;
      END;
    "#,
];

pub struct Store {
    conn: Mutex<Connection>,
    /// Observes each call's latency (`/metrics`), when set.
    latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .context("enabling WAL mode")?;
        tracing::debug!(journal_mode = %mode, "database opened");
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        migrate(&conn).with_context(|| format!("migrating database {}", path.display()))?;
        Ok(Self {
            conn: Mutex::new(conn),
            latency: None,
        })
    }

    /// Observe every call's latency (waiting for the connection and using
    /// it) into `h`.
    pub fn with_latency(mut self, h: prometheus_client::metrics::histogram::Histogram) -> Self {
        self.latency = Some(h);
        self
    }

    fn lock(&self) -> latency::Timed<'_> {
        let since = Instant::now();
        // A panic while holding the lock cannot leave SQLite inconsistent (each
        // change is a transaction), so a poisoned lock is still usable.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        latency::Timed {
            conn,
            since,
            latency: self.latency.as_ref(),
        }
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "database schema version {version} is newer than this landfall ({}); upgrade landfall",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC rendering of a unix time.
pub fn rfc3339(t: i64) -> String {
    let st = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

fn wipe_str(w: WipePolicy) -> &'static str {
    match w {
        WipePolicy::Always => "always",
        _ => "never",
    }
}

fn wipe_parse(s: &str) -> WipePolicy {
    match s {
        "always" => WipePolicy::Always,
        _ => WipePolicy::Never,
    }
}

fn state_str(s: MachineState) -> &'static str {
    s.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::admin;

    #[test]
    fn open_twice_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        drop(Store::open(&p).unwrap());
        let s = Store::open(&p).unwrap();
        let v: i64 = s
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        let mode: String = s
            .lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_installer_waits_while_its_wait_is_open_and_for_the_grace_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        s.lock()
            .execute_batch(
                "INSERT INTO machines (mac, state, current_attempt, created_at, updated_at, last_seen)
                   VALUES ('52:54:00:00:00:01', 'failed', 'a1', 0, 0, 0);
                 INSERT INTO attempts (id, mac, agent_token_hash, agent_version, protocol, started_at)
                   VALUES ('a1', '52:54:00:00:00:01', 'h', 'v', 1, 0);",
            )
            .unwrap();
        let mac = "52:54:00:00:00:01";
        let w = |now| s.installer_wait(mac, now, 30).unwrap();
        assert_eq!(w(100), admin::InstallerWait::default(), "never asked");
        // A wait opened at 100, held until 160 at most.
        s.note_wait("a1", 100, 160).unwrap();
        assert!(w(150).waiting);
        assert!(w(190).waiting, "the grace after the latest end");
        assert!(!w(191).waiting);
        // It ended (answered or dropped) at 120.
        s.note_wait("a1", 120, 120).unwrap();
        assert!(w(150).waiting);
        assert!(!w(151).waiting);
        assert_eq!(w(151).last_wait_at.as_deref(), Some("1970-01-01T00:02:00Z"));
        assert!(
            !s.installer_wait("52:54:00:00:00:09", 0, 30)
                .unwrap()
                .waiting
        );
    }

    #[test]
    fn rfc3339_renders_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
