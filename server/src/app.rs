//! The server's shared state and the token helpers every part uses. Below
//! both `api` (the HTTP handlers) and `boot` (the iPXE decision): they import
//! from here, never from each other's state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::Settings;
use crate::store::Store;

/// Shared state of every handler.
pub struct App {
    pub store: Store,
    pub settings: Settings,
    pub artifacts: PathBuf,
    /// SHA-256 of the admin token.
    pub admin_token_hash: String,
    /// Mints wrapped Vault `secret_id`s when `[vault]` is configured.
    pub orchestrator: Option<crate::orchestrator::Orchestrator>,
    /// Woken when a machine's state changes in a way a waiting agent
    /// (`POST /agent/wait`) must see: retry, reinstall, a new attempt.
    pub changes: Notify,
    /// Set at shutdown: pending waits answer `wait` at once.
    pub stopping: AtomicBool,
    /// Serialises granting retries (mint tokens, then move the machine), so
    /// two waits of one attempt cannot both mint.
    pub retry_lock: tokio::sync::Mutex<()>,
    /// The bound port of the HTTPS listener, when TLS is on.
    pub tls_port: Option<u16>,
    /// What `/metrics` answers (the store observes its latency into it).
    pub metrics: crate::metrics::Metrics,
    /// What the dashboard's live viewers are told (events as they are
    /// stored, state changes).
    pub feed: std::sync::Arc<crate::dashboard::feed::Feed>,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        store: Store,
        settings: Settings,
        artifacts: PathBuf,
        admin_token_hash: String,
        orchestrator: Option<crate::orchestrator::Orchestrator>,
    ) -> Self {
        let metrics = crate::metrics::Metrics::new();
        let store = store.with_latency(metrics.store_latency());
        Self {
            metrics,
            store,
            settings,
            artifacts,
            admin_token_hash,
            orchestrator,
            changes: Notify::new(),
            stopping: AtomicBool::new(false),
            retry_lock: tokio::sync::Mutex::new(()),
            tls_port: None,
            feed: Default::default(),
        }
    }

    /// With TLS on: the agent API is at this port ([`App::agent_base`]).
    pub fn with_tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// The base URL the agent talks to (`landfall.server=`), from the base
    /// the machine booted from: the same with TLS off; with TLS on,
    /// `server.public_tls_url`, else `https://` + its host + the HTTPS port.
    pub fn agent_base(&self, http_base: &str) -> Option<String> {
        let Some(port) = self.tls_port else {
            return Some(http_base.to_owned());
        };
        if let Some(u) = self
            .settings
            .tls
            .as_ref()
            .and_then(|t| t.public_url.clone())
        {
            return Some(u);
        }
        let host = crate::config::url_host(http_base)?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(format!("https://{host}:{port}"))
    }

    /// Wake the waiting agents to look at their machines again.
    pub fn machines_changed(&self) {
        self.changes.notify_waiters();
        self.feed.changed();
    }

    /// The server is stopping: pending waits answer now.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.changes.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The base URL machines reach us at: `server.public_url`, else `http://` + Host.
    pub fn base_url(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(u) = &self.settings.public_url {
            return Some(u.clone());
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(base_from_host)
    }
}

/// `http://` + a Host header, if the header is a plain host[:port].
pub fn base_from_host(host: &str) -> Option<String> {
    let ok = !host.is_empty()
        && host.len() <= 261
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("http://{host}"))
}

/// SHA-256 of a token, lower-case hex: what the database stores.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> anyhow::Result<String> {
    random_hex(32)
}

pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    Ok(hex(&buf))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The client's address (`ip:port`) from axum's `ConnectInfo`, for the log
/// and the record; `unknown` when the server runs without it (a router
/// driven in-process).
pub struct Peer(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_of(parts)))
    }
}

/// The TCP peer of a connection, plain or TLS: what the connection layer
/// (`crate::conn`) puts into each request as `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The client's address of a request, as [`Peer`] has it.
pub fn peer_of(parts: &axum::http::request::Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<PeerAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}
