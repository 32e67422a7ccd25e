//! landfall: the provisioning server and its admin CLI.
//!
//! [`serve`] starts the HTTP server in-process and returns a handle with the
//! bound address; `main.rs` and the integration tests both use it.

pub mod api;
pub mod app;
pub mod boot;
pub mod cli;
pub mod config;
pub mod orchestrator;
pub mod store;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
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
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ca_file: Option<PathBuf>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
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

    /// Stop accepting, finish in-flight requests, close the database.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Wait until the server stops.
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .context("server task panicked")?
            .context("serving HTTP")
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
    let settings = load_settings(opts.config.as_deref())?;
    if opts.config.is_none() {
        tracing::warn!(
            "no --config given: demo mode, every machine that PXE-boots is installed with role `demo`"
        );
    }
    prepare_data_dir(&opts.data)?;
    let admin_token_hash = api::token_hash(&admin_token(&opts.data)?);
    let store = Store::open(&opts.data.join(DB_FILE))?;

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
    for f in ["vmlinuz", "initrd"] {
        if !artifacts.join(f).is_file() {
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
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let tls = match &settings.tls {
        None => None,
        Some(t) => {
            let identity = tls::load_identity(&opts.data, &t.cert)?;
            let tcp = tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("listening on {} (server.listen_tls)", t.listen))?;
            Some((
                tls::TlsListener::new(tcp, identity.config)?,
                identity.ca_file,
            ))
        }
    };
    let tls_addr = tls
        .as_ref()
        .map(|(l, _)| axum::serve::Listener::local_addr(l))
        .transpose()?;
    let ca_file = tls.as_ref().and_then(|(_, f)| f.clone());

    let mut app = App::new(store, settings, artifacts, admin_token_hash, orchestrator);
    if let Some(a) = tls_addr {
        app = app.with_tls_port(a.port());
    }
    let app = Arc::new(app);
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let task = match tls {
        None => {
            let router = api::router(app.clone());
            let stop = stopped(stop_rx);
            tokio::spawn(async move {
                // The peer address reaches handlers as `ConnectInfo` (api::Peer):
                // boot tokens and hellos are logged with it, alarms record it.
                let serving = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<app::PeerAddr>(),
                )
                .with_graceful_shutdown(stop);
                let (r, ()) = tokio::join!(serving, async move {
                    let _ = rx.await;
                    // Long-polling agents answer now instead of holding the shutdown.
                    app.begin_shutdown();
                    let _ = stop_tx.send(true);
                });
                r
            })
        }
        Some((tls_listener, _)) => {
            let port = tls_addr.expect("bound").port();
            let http = axum::serve(
                listener,
                api::http_boot_router(app.clone(), port)
                    .into_make_service_with_connect_info::<app::PeerAddr>(),
            )
            .with_graceful_shutdown(stopped(stop_rx.clone()));
            let https = axum::serve(
                tls_listener,
                api::router(app.clone()).into_make_service_with_connect_info::<app::PeerAddr>(),
            )
            .with_graceful_shutdown(stopped(stop_rx));
            tokio::spawn(async move {
                let (a, b, ()) = tokio::join!(http, https, async move {
                    let _ = rx.await;
                    app.begin_shutdown();
                    let _ = stop_tx.send(true);
                });
                a.and(b)
            })
        }
    };
    Ok(ServerHandle {
        addr,
        tls_addr,
        ca_file,
        shutdown: Some(tx),
        task,
    })
}

fn prepare_data_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    }
    Ok(())
}

/// Read `DATA/admin.token`, creating it (mode 0600) on first start.
fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = t.trim().to_owned();
            if t.is_empty() {
                bail!(
                    "admin token file {} is empty; delete it and restart to generate a new one",
                    path.display()
                );
            }
            tracing::info!("admin token is in {}", path.display());
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = api::new_token()?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{token}").with_context(|| format!("writing {}", path.display()))?;
            tracing::info!("admin token written to {} (mode 0600)", path.display());
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
