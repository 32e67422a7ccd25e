//! The SQLite backend (rusqlite, bundled): WAL, a busy timeout on every
//! connection, the schema as SQLite text.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::sql::{Backend, Dialect, Row, Value};

/// How long a statement waits for another connection's lock (another
/// server process on the same file, an outside `BEGIN EXCLUSIVE`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(*b as i64)),
        })
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

impl Backend for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut st = self.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut st = self.prepare_cached(sql)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(value(r.get_ref(i)?));
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.execute_batch(sql)?)
    }
}

/// Open one connection to the database file: WAL, the busy timeout;
/// `read_only` connections refuse writes (`PRAGMA query_only`).
pub fn connect(path: &Path, read_only: bool) -> Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Every statement of the store stays prepared (rusqlite keeps 16 by
    // default, fewer than the store uses: re-preparing cost CPU per request).
    conn.set_prepared_statement_cache_capacity(256);
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .context("enabling WAL mode")?;
    tracing::debug!(journal_mode = %mode, "database opened");
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(conn)
}

/// Bring the schema up to date: `PRAGMA user_version` is the number of
/// [`MIGRATIONS`] applied. Each runs in an IMMEDIATE transaction that
/// re-reads the version, so two servers starting together apply it once.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: usize =
            tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            anyhow::bail!(
                "database schema version {version} is newer than this landfall ({}); upgrade landfall",
                MIGRATIONS.len()
            );
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", version + 1))?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "database schema migrated");
    }
}

/// Schema migrations; `PRAGMA user_version` is the number applied.
pub const MIGRATIONS: &[&str] = &[
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
    // 9: event retention (issue 14): when an attempt's events were deleted
    // for `[server] event_retention`; machines found by their current
    // attempt (which attempts are over).
    r#"
    ALTER TABLE attempts ADD COLUMN events_pruned_at INTEGER;
    CREATE INDEX machines_current_attempt ON machines(current_attempt);
    "#,
];
