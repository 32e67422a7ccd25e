//! The PostgreSQL backend (the `postgres` sync client, driven from the
//! store's own threads): several landfall servers, one state. The schema
//! is the same numbered list as SQLite's, in PostgreSQL's words; migrations
//! run under an advisory lock, so servers starting together apply each once.
//! `NOTIFY landfall_changes` after a write that must wake waiting agents;
//! every server `LISTEN`s.

use std::error::Error;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls};

use super::sql::{dollar_placeholders, Backend, Dialect, Row, Value};

/// The channel servers wake each other's waiting agents on.
pub const CHANNEL: &str = "landfall_changes";
/// `pg_advisory_xact_lock` key every write transaction takes first: one
/// writer at a time across servers.
pub const WRITE_LOCK: i64 = 7_346_001;
/// `pg_advisory_lock` key held while migrating.
const MIGRATION_LOCK: i64 = 7_346_002;

/// The connection URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open one connection, with `statement_timeout` off and UTC.
pub fn connect(url: &str) -> Result<Client> {
    let mut c = Client::connect(url, NoTls)
        .with_context(|| format!("connecting to PostgreSQL at {}", redacted(url)))?;
    c.batch_execute("SET TIME ZONE 'UTC'")?;
    Ok(c)
}

struct Param<'a>(&'a Value);

impl std::fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    i.to_string().to_sql(ty, out)
                }
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                _ => Param(&Value::Int(*b as i64)).to_sql(ty, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn column(row: &postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into())),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        }
        other => bail!(
            "column {i} is of type {other}, which the store does not read; CAST it to BIGINT or TEXT"
        ),
    }
    .unwrap_or(Value::Null))
}

/// A store thread's connection: the client and its prepared statements
/// (one round trip per statement after the first, as rusqlite's cache).
pub struct Conn {
    client: Client,
    prepared: std::collections::HashMap<String, postgres::Statement>,
}

impl Conn {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prepared: Default::default(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(&dollar_placeholders(sql))?;
        self.prepared.insert(sql.to_owned(), st.clone());
        Ok(st)
    }
}

impl Backend for Conn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let st = self.statement(sql)?;
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(self.client.execute(&st, &refs)?)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.client.query(&st, &refs)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<_>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }
}

/// Bring the schema up to date under an advisory lock: `landfall_schema`
/// holds the number of [`MIGRATIONS`] applied.
pub fn migrate(c: &mut Client) -> Result<()> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .context("taking the migration lock")?;
    let r = migrate_locked(c);
    let unlocked = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    r?;
    unlocked.context("releasing the migration lock")?;
    Ok(())
}

fn migrate_locked(c: &mut Client) -> Result<()> {
    c.batch_execute("CREATE TABLE IF NOT EXISTS landfall_schema (version BIGINT NOT NULL)")?;
    let version: i64 = match c.query_opt("SELECT version FROM landfall_schema", &[])? {
        Some(r) => r.get(0),
        None => {
            c.execute("INSERT INTO landfall_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    let version = version.max(0) as usize;
    if version > MIGRATIONS.len() {
        bail!(
            "database schema version {version} is newer than this landfall ({}); upgrade landfall",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut tx = c.transaction()?;
        tx.batch_execute(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
        tx.execute(
            "UPDATE landfall_schema SET version = $1",
            &[&((i + 1) as i64)],
        )?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

/// The schema: the same numbered list as `sqlite::MIGRATIONS`, in
/// PostgreSQL's words (BIGINT for every integer, BIGSERIAL for SQLite's
/// AUTOINCREMENT and for the implicit `rowid` of `machines` and
/// `attempts`, PL/pgSQL for the triggers).
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
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        last_seen       BIGINT NOT NULL,
        rowid           BIGSERIAL
    );
    CREATE INDEX machines_hostname ON machines(hostname);
    CREATE TABLE boot_tokens (
        hash        TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        attempt_id  TEXT
    );
    CREATE INDEX boot_tokens_mac ON boot_tokens(mac);
    CREATE TABLE attempts (
        id               TEXT PRIMARY KEY,
        mac              TEXT NOT NULL,
        agent_token_hash TEXT NOT NULL UNIQUE,
        agent_version    TEXT NOT NULL,
        protocol         BIGINT NOT NULL,
        started_at       BIGINT NOT NULL,
        acked_seq        BIGINT NOT NULL DEFAULT 0,
        rowid            BIGSERIAL
    );
    CREATE INDEX attempts_mac ON attempts(mac);
    CREATE TABLE events (
        attempt_id  TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        mac         TEXT NOT NULL,
        body        TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (attempt_id, seq)
    );
    "#,
    // 2: first-boot verification.
    r#"
    ALTER TABLE attempts ADD COLUMN verify_token_hash TEXT;
    CREATE UNIQUE INDEX attempts_verify_token ON attempts(verify_token_hash);
    CREATE TABLE verifications (
        id          BIGSERIAL PRIMARY KEY,
        mac         TEXT NOT NULL,
        attempt_id  TEXT NOT NULL,
        hostname    TEXT NOT NULL,
        ok          BIGINT NOT NULL,
        checks      TEXT NOT NULL,
        received_at BIGINT NOT NULL
    );
    CREATE INDEX verifications_mac ON verifications(mac);
    "#,
    // 3: waits.
    r#"
    ALTER TABLE attempts ADD COLUMN last_wait_at BIGINT;
    ALTER TABLE attempts ADD COLUMN wait_ends_at BIGINT;
    "#,
    // 4: install identity.
    r#"
    ALTER TABLE boot_tokens ADD COLUMN nonce_hash TEXT;
    ALTER TABLE attempts ADD COLUMN client_addr TEXT;
    ALTER TABLE attempts ADD COLUMN last_seen_at BIGINT;
    ALTER TABLE attempts ADD COLUMN superseded_at BIGINT;
    ALTER TABLE machines ADD COLUMN pinned_identity TEXT;
    ALTER TABLE machines ADD COLUMN presented_identity TEXT;
    CREATE TABLE vault_mints (
        id                 BIGSERIAL PRIMARY KEY,
        attempt_id         TEXT NOT NULL,
        approle            TEXT NOT NULL,
        wrap_accessor      TEXT NOT NULL,
        secret_id_accessor TEXT NOT NULL,
        minted_at          BIGINT NOT NULL,
        revoked_at         BIGINT
    );
    CREATE INDEX vault_mints_attempt ON vault_mints(attempt_id);
    "#,
    // 5: caps.
    r#"
    CREATE INDEX machines_state_created ON machines(state, created_at);
    ALTER TABLE attempts ADD COLUMN event_count BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN event_bytes BIGINT NOT NULL DEFAULT 0;
    UPDATE attempts SET
        event_count = (SELECT COUNT(*) FROM events e WHERE e.attempt_id = attempts.id),
        event_bytes = (SELECT CAST(COALESCE(SUM(LENGTH(e.body)), 0) AS BIGINT) FROM events e
                        WHERE e.attempt_id = attempts.id);
    "#,
    // 6: DHCP leases.
    r#"
    CREATE TABLE dhcp_leases (
        mac        TEXT PRIMARY KEY,
        ip         TEXT NOT NULL UNIQUE,
        expires_at BIGINT NOT NULL
    );
    "#,
    // 7: notifications: the state-change journal, kept by triggers.
    r#"
    CREATE TABLE state_changes (
        id          BIGSERIAL PRIMARY KEY,
        mac         TEXT NOT NULL,
        hostname    TEXT,
        role        TEXT,
        state       TEXT NOT NULL,
        previous    TEXT,
        error       TEXT,
        attempt_id  TEXT,
        at          BIGINT NOT NULL
    );
    CREATE FUNCTION landfall_state_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO state_changes (mac, hostname, role, state, previous, error, attempt_id, at)
        VALUES (NEW.mac, NEW.hostname, NEW.role, NEW.state, NULL, NEW.error,
                NEW.current_attempt, NEW.updated_at);
        RETURN NULL;
    END $$;
    CREATE FUNCTION landfall_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO state_changes (mac, hostname, role, state, previous, error, attempt_id, at)
        VALUES (NEW.mac, NEW.hostname, NEW.role, NEW.state, OLD.state, NEW.error,
                NEW.current_attempt, NEW.updated_at);
        RETURN NULL;
    END $$;
    CREATE TRIGGER machines_state_inserted AFTER INSERT ON machines
        FOR EACH ROW EXECUTE FUNCTION landfall_state_inserted();
    CREATE TRIGGER machines_state_changed AFTER UPDATE OF state ON machines
        FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
        EXECUTE FUNCTION landfall_state_changed();
    CREATE TABLE webhook_deliveries (
        id            BIGSERIAL PRIMARY KEY,
        change_id     BIGINT NOT NULL,
        url           TEXT NOT NULL,
        mac           TEXT NOT NULL,
        hostname      TEXT,
        state         TEXT NOT NULL,
        body          TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        attempts      BIGINT NOT NULL DEFAULT 0,
        next_at       BIGINT NOT NULL,
        claimed_until BIGINT NOT NULL DEFAULT 0,
        last_status   BIGINT,
        last_error    TEXT,
        delivered_at  BIGINT,
        failed_at     BIGINT,
        UNIQUE (change_id, url)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_at)
        WHERE delivered_at IS NULL AND failed_at IS NULL;
    "#,
    // 8: when a machine entered its state, kept by a trigger.
    r#"
    ALTER TABLE machines ADD COLUMN state_since BIGINT;
    UPDATE machines SET state_since = updated_at;
    CREATE FUNCTION landfall_state_since() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.state_since := NEW.updated_at;
        RETURN NEW;
    END $$;
    CREATE TRIGGER machines_state_since BEFORE UPDATE OF state ON machines
        FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
        EXECUTE FUNCTION landfall_state_since();
    "#,
    // 9: event retention (issue 14): when an attempt's events were deleted;
    // machines found by their current attempt.
    r#"
    ALTER TABLE attempts ADD COLUMN events_pruned_at BIGINT;
    CREATE INDEX machines_current_attempt ON machines(current_attempt);
    "#,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_every_migration() {
        assert_eq!(MIGRATIONS.len(), super::super::sqlite::MIGRATIONS.len());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("postgres://landfall:s3cret@db.lan:5432/landfall"),
            "postgres://landfall@db.lan:5432/landfall"
        );
        assert_eq!(redacted("postgres://db.lan/x"), "postgres://db.lan/x");
    }
}
