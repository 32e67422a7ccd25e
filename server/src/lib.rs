//! landfall: the provisioning server and its admin CLI.
//!
//! [`serve`] starts the HTTP server in-process and returns a handle with the
//! bound address; `main.rs` and the integration tests both use it.

pub mod api;
pub mod app;
pub mod artifacts;
pub mod boot;
pub mod cli;
pub mod config;
pub mod netboot;
pub mod orchestrator;
pub mod store;

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
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// TFTP and DHCP of `[netboot]`, when on.
    netboot: Option<netboot::Netboot>,
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
    // A flat directory, or per-architecture ones (`x86_64/`, `arm64/`).
    let per_arch = artifacts::ARCH_DIRS
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
    let app = Arc::new(App::new(
        store,
        settings,
        artifacts,
        admin_token_hash,
        orchestrator,
    ));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!("landfall listening on http://{addr}");

    let (tx, rx) = oneshot::channel::<()>();
    let router = api::router(app.clone()).merge(netboot::http_router(ipxe.clone()));
    let netboot = if netboot_settings.tftp || netboot_settings.dhcp != config::DhcpMode::Off {
        Some(
            netboot::Netboot::start(
                &netboot_settings,
                ipxe,
                public_url.as_deref(),
                addr,
                Store::open(&opts.data.join(DB_FILE))?,
            )
            .await?,
        )
    } else {
        None
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
                // Long-polling agents answer now instead of holding the shutdown.
                app.begin_shutdown();
            })
            .await
    });
    Ok(ServerHandle {
        addr,
        shutdown: Some(tx),
        task,
        netboot,
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
