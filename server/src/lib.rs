//! landfall: the provisioning server and its admin CLI.
//!
//! [`serve`] starts the HTTP server in-process and returns a handle with the
//! bound address; `main.rs` and the integration tests both use it.

pub mod api;
pub mod app;
pub mod artifact_dir;
pub mod boot;
pub mod cli;
pub mod config;
pub mod conn;
pub mod dashboard;
pub mod metrics;
pub mod netboot;
pub mod notify;
pub mod orchestrator;
pub mod retention;
pub mod store;
pub mod text;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{Config, Settings};
use crate::store::Store;

/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "landfall.sqlite";
/// File name of the admin token inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `landfall.toml`; `None` runs the demo default (install everything as `demo`).
    pub config: Option<PathBuf>,
    /// Data directory: database, admin token, default artifacts dir.
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// Overrides `server.artifacts` and the default `DATA/artifacts`.
    pub artifacts: Option<PathBuf>,
    /// `--database`: a PostgreSQL URL; overrides `server.database`. Neither:
    /// SQLite in the data directory.
    pub database: Option<String>,
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ca_file: Option<PathBuf>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// TFTP and DHCP of `[netboot]`, when on.
    netboot: Option<netboot::Netboot>,
    /// The webhook notifier (it stops with the server).
    notifier: Option<JoinHandle<()>>,
    /// The event retention task (`[server] event_retention`).
    retention: Option<JoinHandle<()>>,
}

/// What `landfall serve`'s options change in `[netboot]`.
#[derive(Debug, Clone, Default)]
pub struct NetbootOverrides {
    /// `--dhcp off|proxy|full` over `[netboot] dhcp`.
    pub dhcp: Option<config::DhcpMode>,
}

impl ServerHandle {
    /// The address actually bound (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTPS address actually bound, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The generated CA's PEM file (what the installer image pins), when
    /// TLS is on with a generated certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The TFTP and DHCP servers, when `[netboot]` runs them.
    pub fn netboot(&self) -> Option<&netboot::Netboot> {
        self.netboot.as_ref()
    }

    /// Stop accepting, finish in-flight requests, close the database.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Wait until the server stops; the TFTP and DHCP listeners stop with it.
    pub async fn wait(mut self) -> Result<()> {
        let r = (&mut self.task).await;
        if let Some(n) = self.netboot.take() {
            n.shutdown().await;
        }
        if let Some(n) = self.notifier.take() {
            let _ = n.await;
        }
        if let Some(r) = self.retention.take() {
            let _ = r.await;
        }
        r.context("server task panicked")?.context("serving HTTP")
    }
}

/// Load and validate the configuration (or the demo default).
pub fn load_settings(config: Option<&Path>) -> Result<Settings> {
    match config {
        Some(p) => Config::load(p),
        None => Config::demo().validate(Path::new(".")),
    }
}

/// Start the server: open the data dir, bind, and serve in a background task.
pub async fn serve(opts: ServeOptions) -> Result<ServerHandle> {
    serve_with(opts, NetbootOverrides::default()).await
}

/// [`serve`], with `serve`'s command-line overrides of `[netboot]`.
pub async fn serve_with(opts: ServeOptions, ov: NetbootOverrides) -> Result<ServerHandle> {
    let mut settings = load_settings(opts.config.as_deref())?;
    if let Some(mode) = ov.dhcp {
        settings
            .netboot
            .set_mode(mode, None)
            .with_context(|| format!("--dhcp {mode}"))?;
    }
    let netboot_settings = settings.netboot.clone();
    let ipxe = Arc::new(netboot::IpxeFiles::load(&netboot_settings)?);
    let public_url = settings.public_url.clone();
    if opts.config.is_none() {
        tracing::warn!(
            "no --config given: demo mode, every machine that PXE-boots is installed with role `demo`"
        );
    }
    prepare_data_dir(&opts.data)?;
    let admin_token_hash = api::token_hash(&admin_token(&opts.data)?);
    let database = match &opts.database {
        Some(url) => store::Database::parse("--database", url)?,
        None => settings
            .database
            .clone()
            .unwrap_or_else(|| store::Database::Sqlite(opts.data.join(DB_FILE))),
    };
    if let store::Database::Sqlite(db) = &database {
        private_db_file(db)?;
    }
    let store = Store::connect(&database)?;
    tracing::info!(database = %database.describe(), "store open");
    if matches!(database, store::Database::Sqlite(_)) {
        // SQLite gives -wal and -shm the database's mode; an older landfall's may
        // be there from before, with their own.
        for f in [
            DB_FILE,
            &format!("{DB_FILE}-wal"),
            &format!("{DB_FILE}-shm"),
        ] {
            enforce_mode(&opts.data.join(f), 0o600)?;
        }
    }

    let artifacts = opts
        .artifacts
        .clone()
        .or_else(|| settings.artifacts.clone())
        .unwrap_or_else(|| opts.data.join("artifacts"));
    if !artifacts.is_dir() {
        if opts.artifacts.is_none() && settings.artifacts.is_none() {
            std::fs::create_dir_all(&artifacts)
                .with_context(|| format!("creating {}", artifacts.display()))?;
        } else {
            tracing::warn!("artifacts directory {} does not exist", artifacts.display());
        }
    }
    // A flat directory, or per-architecture ones (`x86_64/`, `arm64/`).
    let per_arch = artifact_dir::ARCH_DIRS
        .iter()
        .any(|a| artifacts.join(a).join("vmlinuz").is_file());
    for f in ["vmlinuz", "initrd"] {
        if !per_arch && !artifacts.join(f).is_file() {
            tracing::warn!(
                "{} is missing: machines told to install cannot boot the installer",
                artifacts.join(f).display()
            );
        }
    }

    let orchestrator = match &settings.vault {
        Some(v) => Some(orchestrator::Orchestrator::new(v)?),
        None => None,
    };
    let listener = listen(opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let tls = match &settings.tls {
        None => None,
        Some(t) => {
            let identity = tls::load_identity(&opts.data, &t.cert)?;
            let tcp = listen(t.listen)
                .with_context(|| format!("listening on {} (server.listen_tls)", t.listen))?;
            Some((
                tcp,
                tokio_rustls::TlsAcceptor::from(identity.config),
                identity.ca_file,
            ))
        }
    };
    let tls_addr = tls.as_ref().map(|(l, _, _)| l.local_addr()).transpose()?;
    let ca_file = tls.as_ref().and_then(|(_, _, f)| f.clone());
    let limits = conn::Limits::resolve(settings.http);

    let mut app = App::new(store, settings, artifacts, admin_token_hash, orchestrator);
    if let Some(a) = tls_addr {
        app = app.with_tls_port(a.port());
    }
    let app = Arc::new(app);
    {
        // A write that wakes waiting agents, made here or by another server
        // on the same PostgreSQL (NOTIFY): they look at their machines again.
        let changes = app.store.changes();
        let app = Arc::downgrade(&app);
        tokio::spawn(async move {
            loop {
                changes.notified().await;
                match app.upgrade() {
                    Some(a) => a.machines_changed(),
                    None => return,
                }
            }
        });
    }
    tracing::info!("landfall listening on http://{addr}");
    if let Some(a) = tls_addr {
        let fp = match &ca_file {
            Some(_) => tls::ca_fingerprint(&opts.data)?,
            None => "(the operator's certificate)".into(),
        };
        tracing::info!(
            "landfall listening on https://{a} (agent and admin API; the plain-HTTP \
             listener serves boot scripts and artifacts only); CA SHA-256 {fp}"
        );
    }

    let (tx, rx) = oneshot::channel::<()>();
    let netboot = if netboot_settings.tftp || netboot_settings.dhcp != config::DhcpMode::Off {
        Some(
            netboot::Netboot::start(
                &netboot_settings,
                ipxe.clone(),
                public_url.as_deref(),
                addr,
                app.store.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    if let Some(n) = &netboot {
        let dhcp = n.dhcp.as_ref().map(|d| d.stats());
        app.metrics
            .watch_netboot(dhcp, n.tftp.as_ref().map(|t| t.stats()));
    }
    // The iPXE binaries over HTTP (UEFI HTTP Boot) go with the plain-HTTP
    // listener: the firmware cannot do HTTPS.
    let ipxe_http = netboot::http_router(ipxe);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let retention = retention::start(app.clone(), stop_rx.clone());
    let notifier = notify::start(app.clone(), stop_rx)?;
    let listeners = match tls {
        None => vec![(
            listener,
            conn::Serve::Plain(api::router(app.clone()).merge(ipxe_http)),
        )],
        Some((tls_listener, acceptor, _)) => {
            let port = tls_addr.expect("bound").port();
            vec![
                (
                    listener,
                    conn::Serve::Plain(api::http_boot_router(app.clone(), port).merge(ipxe_http)),
                ),
                (
                    tls_listener,
                    conn::Serve::Tls(acceptor, api::router(app.clone())),
                ),
            ]
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = conn::run(listeners, limits, stop.clone());
    let task = tokio::spawn(async move {
        let (r, ()) = tokio::join!(serving, async move {
            let _ = rx.await;
            // Long-polling agents answer now instead of holding the shutdown.
            app.begin_shutdown();
            stop.cancel();
            let _ = stop_tx.send(true);
        });
        r
    });
    Ok(ServerHandle {
        addr,
        tls_addr,
        ca_file,
        shutdown: Some(tx),
        task,
        netboot,
        notifier: Some(notifier),
        retention,
    })
}

/// Create the data directory (0700), or bring an existing one back to 0700:
/// it holds the database (inventories, events) and the admin token.
fn prepare_data_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    enforce_mode(dir, 0o700)
}

/// Set `path`'s permission bits to `mode` when they differ (logging the
/// change); nothing when it does not exist.
fn enforce_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading the mode of {}", path.display())),
    };
    let old = meta.permissions().mode() & 0o7777;
    if old != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:04o} on {}", path.display()))?;
        tracing::warn!(
            "{} had mode {old:04o}; set to {mode:04o} (it is readable by no one but the server)",
            path.display()
        );
    }
    Ok(())
}

/// The database file exists, mode 0600, before SQLite opens it: SQLite
/// creates a new one with the umask's mode, and its -wal and -shm files with
/// the database's mode.
fn private_db_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating database {}", path.display()))?;
    enforce_mode(path, 0o600)
}

/// Shortest admin token accepted from the file: a shorter one is what a
/// write cut short left (the server writes 64 hex digits).
const MIN_ADMIN_TOKEN: usize = 32;

/// Read `DATA/admin.token`, creating it (mode 0600) on first start, or again
/// when it is empty or cut short (a full disk at the first start), saying so.
fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= MIN_ADMIN_TOKEN => {
            enforce_mode(&path, 0o600)?;
            tracing::info!("admin token is in {}", path.display());
            Ok(t.trim().to_owned())
        }
        Ok(t) => {
            tracing::warn!(
                "admin token file {} is empty or cut short ({} bytes): writing a new token",
                path.display(),
                t.len()
            );
            new_admin_token(&path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_admin_token(&path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Write a fresh admin token to `path` atomically: a temporary file (0600)
/// written and fsynced, renamed over `path`, the directory fsynced. A failed
/// write (a full disk) leaves no file behind, never an empty one.
fn new_admin_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let token = api::new_token()?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing the admin token to {}", path.display()));
    }
    tracing::info!("admin token written to {} (mode 0600)", path.display());
    Ok(token)
}

/// The accept queue of a listening socket: a boot storm's new connections
/// wait here (not in SYN retransmits, 1 s then 3 s) while the accept loop
/// catches up. The kernel caps it at net.core.somaxconn (4096 by default
/// since Linux 5.4); tokio's own `bind` asks for 1,024.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind and listen on `addr` with [`LISTEN_BACKLOG`] (SO_REUSEADDR, as
/// tokio's `TcpListener::bind` sets).
fn listen(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}
