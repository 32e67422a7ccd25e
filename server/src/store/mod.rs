//! The server's state: machines, boot tokens, attempts and events, in
//! embedded SQLite (the default) or PostgreSQL (several servers, one state).
//!
//! The store never blocks the async runtime: one writer thread owns the
//! write connection and runs queued write closures together in one
//! transaction (group commit; each closure under its own savepoint), and a
//! few reader threads own read connections. Handlers hand closures over and
//! await the answer:
//!
//! ```ignore
//! let row = app.store.read(move |tx| tx.machine(&mac)).await?;
//! app.store.write(move |tx| tx.request_reinstall(&mac, now)).await?;
//! ```
//!
//! Store functions are `impl Tx<'_>` methods written once in portable SQL
//! ([`sql`]). Tokens are never stored, only their SHA-256 (hex). Times are
//! unix seconds.

mod agent;
mod fleet;
mod leases;
mod machines;
mod outbox;
pub mod postgres;
mod retention;
pub mod sql;
mod sqlite;
mod stats;
mod verify;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use landfall_proto::{MachineState, WipePolicy};
use prometheus_client::metrics::histogram::Histogram;

pub use agent::{
    Alarm, AlarmKind, AttemptRow, EventQuota, HelloInput, HelloOutcome, OverQuota, StoredEvents,
    VaultMint, WaitCheck,
};
pub use fleet::{FleetRow, LastEvent};
pub use leases::Lease;
pub use machines::{DiscoveredCap, EventPage, ListKey, MachineFilter, MachineRow, RetryOutcome};
pub use outbox::{DeliveryFilter, DueDelivery, SendResult, WebhookTarget};
pub use retention::Pruned;
pub use sql::{Dialect, FromValue, Row, ToValue, Tx, Value};
pub use stats::MachineCount;
pub use verify::{VerifyAuth, VerifyOutcome};

/// Reader threads (each with its own connection).
const READERS: usize = 4;
/// Most write closures committed together.
const GROUP_MAX: usize = 128;
/// How long the writer keeps trying to begin a transaction while the
/// database is locked (another process holds the write lock) before the
/// queued writes fail.
const BEGIN_PATIENCE: Duration = Duration::from_secs(60);

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// Embedded SQLite in this file (the default: `DATA/landfall.sqlite`).
    Sqlite(std::path::PathBuf),
    /// PostgreSQL at this URL (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl Database {
    /// A `--database` / `[server] database` value: a `postgres://` URL.
    pub fn parse(field: &str, url: &str) -> Result<Self> {
        let url = url.trim();
        if postgres::is_postgres_url(url) {
            return Ok(Self::Postgres(url.to_owned()));
        }
        anyhow::bail!(
            "{field} = {:?} is not a PostgreSQL URL; write postgres://USER:PASSWORD@HOST:PORT/DATABASE \
             (leave it unset for the embedded SQLite database in the data directory)",
            postgres::redacted(url)
        )
    }

    /// For messages (no password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("SQLite {}", p.display()),
            Self::Postgres(u) => format!("PostgreSQL {}", postgres::redacted(u)),
        }
    }
}

/// The store: a handle to its threads (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Observes each call's latency (`/metrics`), when set.
    latency: Option<Histogram>,
}

struct Inner {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: mpsc::Sender<Box<dyn ReadJob>>,
    dialect: Dialect,
    /// Woken after a committed write that asked to wake waiting agents
    /// ([`Tx::wake_waiters`]), here or (PostgreSQL) on another server.
    changes: Arc<tokio::sync::Notify>,
    /// Set when the last handle goes: the listener thread ends.
    closed: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// A connection of a store thread.
type Conn = Box<dyn sql::Backend + Send>;
/// Opens a new connection when one is lost.
type Connect = Arc<dyn Fn() -> Result<Conn> + Send + Sync>;

impl Store {
    /// Open (creating if needed) the SQLite database at `path`, bring its
    /// schema up to date and start the store's threads.
    pub fn open(path: &Path) -> Result<Self> {
        Self::connect(&Database::Sqlite(path.to_owned()))
    }

    /// Open `db`, bring its schema up to date and start the store's threads.
    pub fn connect(db: &Database) -> Result<Self> {
        match db {
            Database::Sqlite(path) => {
                let mut conn = sqlite::connect(path, false)?;
                sqlite::migrate(&mut conn)
                    .with_context(|| format!("migrating database {}", path.display()))?;
                let p = path.clone();
                let reader: Connect =
                    Arc::new(move || Ok(Box::new(sqlite::connect(&p, true)?) as Conn));
                let p = path.clone();
                let writer: Connect =
                    Arc::new(move || Ok(Box::new(sqlite::connect(&p, false)?) as Conn));
                Self::start(Box::new(conn), writer, reader, Dialect::Sqlite, None)
            }
            // The sync client runs its own runtime: never on an async
            // worker's thread (startup is called from async code).
            Database::Postgres(url) => std::thread::scope(|s| {
                s.spawn(|| Self::connect_postgres(url))
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("connecting to PostgreSQL panicked")))
            }),
        }
    }

    fn connect_postgres(url: &str) -> Result<Self> {
        let mut conn = postgres::connect(url)?;
        postgres::migrate(&mut conn)
            .with_context(|| format!("migrating database {}", postgres::redacted(url)))?;
        let u = url.to_owned();
        let connect: Connect =
            Arc::new(move || Ok(Box::new(postgres::Conn::new(postgres::connect(&u)?)) as Conn));
        Self::start(
            Box::new(postgres::Conn::new(conn)),
            connect.clone(),
            connect,
            Dialect::Postgres,
            Some(url.to_owned()),
        )
    }

    fn start(
        writer: Conn,
        connect_writer: Connect,
        connect_reader: Connect,
        dialect: Dialect,
        listen: Option<String>,
    ) -> Result<Self> {
        let changes = Arc::new(tokio::sync::Notify::new());
        let closed = Arc::new(AtomicBool::new(false));
        let (wtx, wrx) = mpsc::channel::<Box<dyn WriteJob>>();
        let woken = changes.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(writer, connect_writer, wrx, woken))
            .context("spawning the store writer thread")?;
        let (rtx, rrx) = mpsc::channel::<Box<dyn ReadJob>>();
        let rrx = Arc::new(Mutex::new(rrx));
        for i in 0..READERS {
            let conn = connect_reader()?;
            let (rrx, connect) = (rrx.clone(), connect_reader.clone());
            std::thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn(move || read_loop(conn, connect, rrx))
                .context("spawning a store reader thread")?;
        }
        if let Some(url) = listen {
            let mut first = postgres::connect(&url)?;
            first.batch_execute(&format!("LISTEN {}", postgres::CHANNEL))?;
            let (woken, closed) = (changes.clone(), closed.clone());
            std::thread::Builder::new()
                .name("store-listener".into())
                .spawn(move || listen_loop(first, &url, &woken, &closed))
                .context("spawning the store listener thread")?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                writer: wtx,
                readers: rtx,
                dialect,
                changes,
                closed,
            }),
            latency: None,
        })
    }

    /// Woken (`notify_one`) after a committed write that wakes waiting
    /// agents, made by this server or (PostgreSQL) another one.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.inner.changes.clone()
    }

    /// Observe every call's latency (queued and run) into `h`.
    pub fn with_latency(mut self, h: Histogram) -> Self {
        self.latency = Some(h);
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Run `f` in a read transaction on a reader thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let since = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_read(f, move |r| drop(tx.send(r)))?;
        let r = rx
            .await
            .unwrap_or_else(|_| Err(anyhow!("a store read panicked")));
        self.observe(since);
        r
    }

    /// Run `f` in the writer's transaction (with the writes queued beside
    /// it); answers once committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let since = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A caller that stopped waiting (boot.ipxe answered "busy", the
        // client went away, shutdown) had its answer already: its queued
        // write is skipped rather than done late, so an overloaded store
        // does not also work through what nobody waits for.
        let gone = Arc::new(AtomicBool::new(false));
        let _abandon = Abandon(gone.clone());
        let f = move |t: &mut Tx<'_>| {
            if gone.load(Ordering::Acquire) {
                anyhow::bail!("{ABANDONED}");
            }
            f(t)
        };
        self.submit_write(f, move |r| drop(tx.send(r)))?;
        let r = rx
            .await
            .unwrap_or_else(|_| Err(anyhow!("a store write panicked")));
        self.observe(since);
        r
    }

    /// [`Store::read`] for threads that are not async (CLI, DHCP, tests).
    /// Never call it on an async worker.
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let since = Instant::now();
        let (tx, rx) = mpsc::channel();
        self.submit_read(f, move |r| drop(tx.send(r)))?;
        let r = rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("a store read panicked")));
        self.observe(since);
        r
    }

    /// [`Store::write`] for threads that are not async (CLI, DHCP, tests).
    /// Never call it on an async worker.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let since = Instant::now();
        let (tx, rx) = mpsc::channel();
        self.submit_write(f, move |r| drop(tx.send(r)))?;
        let r = rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("a store write panicked")));
        self.observe(since);
        r
    }

    /// Queue a write nobody awaits (a `Drop`, a best-effort note); its
    /// error is logged with `what`.
    pub fn write_detached<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&mut Tx<'_>) -> Result<()> + Send + 'static,
    {
        let logged = move |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!("{what}: {e:#}");
            }
        };
        if let Err(e) = self.submit_write(f, logged) {
            tracing::warn!("{what}: {e:#}");
        }
    }

    fn observe(&self, since: Instant) {
        if let Some(h) = &self.latency {
            h.observe(since.elapsed().as_secs_f64());
        }
    }

    fn submit_read<T, F, R>(&self, f: F, reply: R) -> Result<()>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
        R: FnOnce(Result<T>) + Send + 'static,
    {
        self.inner
            .readers
            .send(Box::new(Job { f, reply }))
            .map_err(|_| anyhow!("the store's reader threads are gone"))
    }

    fn submit_write<T, F, R>(&self, f: F, reply: R) -> Result<()>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
        R: FnOnce(Result<T>) + Send + 'static,
    {
        self.inner
            .writer
            .send(Box::new(Job { f, reply }))
            .map_err(|_| anyhow!("the store's writer thread is gone"))
    }
}

/// A queued closure and where its answer goes.
/// The error a skipped write answers (to nobody: its caller is gone).
const ABANDONED: &str = "the caller stopped waiting before the write ran: skipped";

/// Marks a [`Store::write`] abandoned when its future is dropped unfinished.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Job<F, R> {
    f: F,
    reply: R,
}

/// What the writer calls once the batch committed (or failed to).
type Deliver = Box<dyn FnOnce(Option<&anyhow::Error>) + Send>;

trait WriteJob: Send {
    /// Run inside the batch's transaction: whether to keep its work, and
    /// how to deliver the answer after the commit.
    fn run(self: Box<Self>, tx: &mut Tx<'_>) -> (bool, Deliver);
    /// The batch never began: answer `e`.
    fn fail(self: Box<Self>, e: &anyhow::Error);
}

trait ReadJob: Send {
    fn run(self: Box<Self>, conn: &mut dyn sql::Backend);
}

fn run_guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(anyhow!("a store call panicked")))
}

impl<T, F, R> WriteJob for Job<F, R>
where
    F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    T: Send + 'static,
    R: FnOnce(Result<T>) + Send + 'static,
{
    fn run(self: Box<Self>, tx: &mut Tx<'_>) -> (bool, Deliver) {
        let Job { f, reply } = *self;
        let r = run_guarded(|| f(tx));
        let keep = r.is_ok() && !tx.rollback;
        let deliver = move |commit: Option<&anyhow::Error>| {
            reply(match commit {
                Some(e) => Err(anyhow!("committing: {e:#}")),
                None => r,
            })
        };
        (keep, Box::new(deliver))
    }

    fn fail(self: Box<Self>, e: &anyhow::Error) {
        (self.reply)(Err(anyhow!("{e:#}")))
    }
}

impl<T, F, R> ReadJob for Job<F, R>
where
    F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    T: Send + 'static,
    R: FnOnce(Result<T>) + Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut dyn sql::Backend) {
        let Job { f, reply } = *self;
        let begin = match conn.dialect() {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN READ ONLY",
        };
        if let Err(e) = conn.batch(begin) {
            return reply(Err(e.context("beginning a read transaction")));
        }
        let r = run_guarded(|| f(&mut Tx::new(conn)));
        // Nothing to keep: ROLLBACK ends a read as well as COMMIT does.
        if let Err(e) = conn.batch("ROLLBACK") {
            tracing::warn!("ending a read transaction: {e:#}");
        }
        reply(r)
    }
}

fn read_loop(mut conn: Conn, connect: Connect, jobs: Arc<Mutex<mpsc::Receiver<Box<dyn ReadJob>>>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        reconnect_if_broken(&mut conn, &connect);
        job.run(conn.as_mut());
    }
}

/// A lost connection (PostgreSQL restarted) is replaced before the next use.
fn reconnect_if_broken(conn: &mut Conn, connect: &Connect) {
    if conn.is_broken() {
        match connect() {
            Ok(c) => {
                tracing::info!("store: reconnected to the database");
                *conn = c;
            }
            Err(e) => tracing::warn!("store: reconnecting: {e:#}"),
        }
    }
}

/// PostgreSQL: wake this server's waiting agents when another server (or
/// this one) sends `NOTIFY landfall_changes`.
fn listen_loop(
    mut conn: ::postgres::Client,
    url: &str,
    woken: &tokio::sync::Notify,
    closed: &AtomicBool,
) {
    while !closed.load(Ordering::SeqCst) {
        let got = {
            let mut n = conn.notifications();
            let mut it = n.timeout_iter(Duration::from_secs(1));
            use ::postgres::fallible_iterator::FallibleIterator;
            match it.next() {
                Ok(Some(_)) => Ok(true),
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            }
        };
        match got {
            Ok(true) => woken.notify_one(),
            Ok(false) if !conn.is_closed() => {}
            r => {
                if let Err(e) = r {
                    tracing::warn!("store: listening for changes: {e}");
                }
                std::thread::sleep(Duration::from_secs(1));
                match postgres::connect(url).and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN {}", postgres::CHANNEL))?;
                    Ok(c)
                }) {
                    Ok(c) => {
                        conn = c;
                        // Something may have changed while we were away.
                        woken.notify_one();
                    }
                    Err(e) => tracing::warn!("store: listening for changes: {e:#}"),
                }
            }
        }
    }
}

/// The writer: take every queued write (up to [`GROUP_MAX`]), run them in
/// one transaction, each under a savepoint, commit once, then answer each.
fn write_loop(
    mut conn: Conn,
    connect: Connect,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    woken: Arc<tokio::sync::Notify>,
) {
    while let Ok(first) = jobs.recv() {
        reconnect_if_broken(&mut conn, &connect);
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = begin_write(conn.as_mut()) {
            tracing::error!(writes = batch.len(), "store: {e:#}");
            for j in batch {
                j.fail(&e);
            }
            continue;
        }
        let mut delivers = Vec::with_capacity(batch.len());
        let mut broken = None;
        let mut wake = false;
        for j in batch {
            if let Some(e) = &broken {
                j.fail(e);
                continue;
            }
            if let Err(e) = conn.batch("SAVEPOINT w") {
                let e = e.context("opening a savepoint");
                j.fail(&e);
                broken = Some(e);
                continue;
            }
            let mut tx = Tx::new(conn.as_mut());
            let (keep, deliver) = j.run(&mut tx);
            wake |= keep && tx.wake;
            let end = if keep {
                "RELEASE w"
            } else {
                "ROLLBACK TO w; RELEASE w"
            };
            if let Err(e) = conn.batch(end) {
                broken = Some(e.context("closing a savepoint"));
            }
            delivers.push(deliver);
        }
        if wake && broken.is_none() && conn.dialect() == Dialect::Postgres {
            // Delivered to every listening server when (and if) this commits.
            if let Err(e) = conn.batch(&format!("NOTIFY {}", postgres::CHANNEL)) {
                broken = Some(e.context("NOTIFY"));
            }
        }
        let commit = match broken {
            Some(e) => Err(e),
            None => conn.batch("COMMIT").context("COMMIT"),
        };
        match commit {
            Ok(()) => {
                if wake {
                    woken.notify_one();
                }
                delivers.into_iter().for_each(|d| d(None))
            }
            Err(e) => {
                tracing::error!("store: {e:#}");
                let _ = conn.batch("ROLLBACK");
                delivers.into_iter().for_each(|d| d(Some(&e)));
            }
        }
    }
}

/// Begin a write transaction, waiting (up to [`BEGIN_PATIENCE`]) while
/// another connection holds the write lock.
fn begin_write(conn: &mut dyn sql::Backend) -> Result<()> {
    let begin = match conn.dialect() {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        // One writer at a time across servers, as SQLite has: a write that
        // reads first never races another server's.
        Dialect::Postgres => {
            const { assert!(postgres::WRITE_LOCK == 7_346_001) };
            "BEGIN; SELECT pg_advisory_xact_lock(7346001)"
        }
    };
    let since = Instant::now();
    loop {
        match conn.batch(begin) {
            Ok(()) => return Ok(()),
            Err(e) if since.elapsed() < BEGIN_PATIENCE => {
                tracing::warn!("store: beginning a write: {e:#}; trying again");
                let _ = conn.batch("ROLLBACK");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.context("beginning a write transaction")),
        }
    }
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

/// A migrated SQLite connection in a tempdir, for unit tests that drive a
/// [`Tx`] directly (each statement commits by itself).
#[cfg(test)]
pub(crate) fn test_conn() -> (tempfile::TempDir, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sqlite::connect(&dir.path().join("db.sqlite"), false).unwrap();
    sqlite::migrate(&mut c).unwrap();
    (dir, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;
    use landfall_proto::admin;

    #[test]
    fn open_twice_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        drop(Store::open(&p).unwrap());
        let s = Store::open(&p).unwrap();
        let v: i64 = s
            .read_blocking(|tx| tx.value("PRAGMA user_version", params![]))
            .unwrap()
            .unwrap();
        assert_eq!(v as usize, sqlite::MIGRATIONS.len());
        let mode: String = s
            .read_blocking(|tx| tx.value("PRAGMA journal_mode", params![]))
            .unwrap()
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// Writes queued together commit together; one that fails (or rolls
    /// back) leaves the others' work in place; readers refuse writes.
    #[tokio::test]
    async fn group_commit_isolates_each_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let mut writes = Vec::new();
        for i in 0..50u32 {
            let s = s.clone();
            writes.push(tokio::spawn(async move {
                s.write(move |tx| {
                    tx.exec(
                        "INSERT INTO dhcp_leases (mac, ip, expires_at) VALUES (?1, ?2, 0)",
                        params![format!("m{i}"), format!("10.0.0.{i}")],
                    )?;
                    match i % 10 {
                        3 => anyhow::bail!("refused {i}"),
                        7 => tx.roll_back(),
                        _ => {}
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut failed = 0;
        for w in writes {
            if w.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 5);
        let n: i64 = s
            .read(|tx| tx.value("SELECT COUNT(*) FROM dhcp_leases", params![]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 40, "the 5 failed and the 5 rolled back are gone");
        let e = s
            .read(|tx| tx.exec("DELETE FROM dhcp_leases", params![]))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("readonly"), "{e:#}");
    }

    /// A write whose caller stopped waiting before the writer reached it
    /// is skipped; one still awaited right behind it is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_nobody_waits_for_any_more_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        // Hold the writer thread busy until released.
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let blocker = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.write_blocking(move |_| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    Ok(())
                })
            })
        };
        running.recv().unwrap();
        let insert = |mac: &'static str| {
            move |tx: &mut Tx<'_>| {
                tx.exec(
                    "INSERT INTO dhcp_leases (mac, ip, expires_at) VALUES (?1, ?1, 0)",
                    params![mac],
                )
            }
        };
        let given_up =
            tokio::time::timeout(Duration::from_millis(50), s.write(insert("gone"))).await;
        assert!(
            given_up.is_err(),
            "the writer is held: the write cannot have run"
        );
        let awaited = {
            let s = s.clone();
            tokio::spawn(async move { s.write(insert("kept")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        blocker.join().unwrap().unwrap();
        assert_eq!(awaited.await.unwrap().unwrap(), 1);
        let macs: Vec<String> = s
            .read(|tx| {
                tx.query("SELECT mac FROM dhcp_leases ORDER BY mac", params![])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!(macs, ["kept"]);
    }

    #[test]
    fn an_installer_waits_while_its_wait_is_open_and_for_the_grace_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        s.write_blocking(|tx| {
            tx.batch(
                "INSERT INTO machines (mac, state, current_attempt, created_at, updated_at, last_seen)
                   VALUES ('52:54:00:00:00:01', 'failed', 'a1', 0, 0, 0);
                 INSERT INTO attempts (id, mac, agent_token_hash, agent_version, protocol, started_at)
                   VALUES ('a1', '52:54:00:00:00:01', 'h', 'v', 1, 0);",
            )
        })
        .unwrap();
        let mac = "52:54:00:00:00:01";
        let w = |now| {
            s.read_blocking(move |tx| tx.installer_wait(mac, now, 30))
                .unwrap()
        };
        assert_eq!(w(100), admin::InstallerWait::default(), "never asked");
        // A wait opened at 100, held until 160 at most.
        s.write_blocking(|tx| tx.note_wait("a1", 100, 160)).unwrap();
        assert!(w(150).waiting);
        assert!(w(190).waiting, "the grace after the latest end");
        assert!(!w(191).waiting);
        // It ended (answered or dropped) at 120.
        s.write_blocking(|tx| tx.note_wait("a1", 120, 120)).unwrap();
        assert!(w(150).waiting);
        assert!(!w(151).waiting);
        assert_eq!(w(151).last_wait_at.as_deref(), Some("1970-01-01T00:02:00Z"));
        assert!(
            !s.read_blocking(|tx| tx.installer_wait("52:54:00:00:00:09", 0, 30))
                .unwrap()
                .waiting
        );
    }

    #[test]
    fn rfc3339_renders_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
