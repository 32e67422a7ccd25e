//! Connections (issue 14): the accept loops of the plain-HTTP and HTTPS
//! listeners, what bounds a connection, and a shutdown that ends.
//!
//! - Every connection holds a permit of one semaphore, both listeners
//!   together: at most [`Limits::max_connections`], kept below the descriptor
//!   limit (`RLIMIT_NOFILE`, whose soft limit is raised to the hard one at
//!   start). With none left the accept loops wait, so new clients queue in
//!   the kernel's listen queue instead of the process running out of
//!   descriptors; the log says so, at most once every 10 s.
//! - A connection has `header_timeout` to send its first request's head
//!   (after `tls_handshake_timeout` for its handshake), `idle_timeout` after
//!   each response for the next request's head, and `send_timeout` for a
//!   write to make progress.
//! - [`run`] returns after a stop: the listeners close at once; requests in
//!   flight get `shutdown_grace`, then their connections are dropped.
//!
//! The plain listener reads requests itself ([`front`]) so that artifacts go
//! out by sendfile(2); HTTPS and whatever the front hands over are served by
//! hyper ([`hyper_conn`]).

pub mod front;
mod hyper_conn;
mod io;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpSettings;

/// Descriptors kept for everything that is not a client connection: the
/// database and its journal files, DHCP and TFTP sockets, Vault clients,
/// the log, the runtime's own.
const RESERVED_FDS: u64 = 128;

/// Default connection cap when the descriptor limit allows more.
const DEFAULT_MAX_CONNECTIONS: u64 = 16_384;

/// How often a repeated warning (cap reached, accept errors, failed
/// handshakes) is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// [`HttpSettings`] with the connection cap resolved against the
/// descriptor limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub http: HttpSettings,
    pub max_connections: usize,
}

impl Limits {
    /// Raise the soft `RLIMIT_NOFILE` to the hard one and fit
    /// `max_connections` below it: each connection may hold two descriptors
    /// (its socket and an artifact being sent), [`RESERVED_FDS`] stay for the
    /// rest. A configured cap above that is lowered, with a warning.
    pub fn resolve(http: HttpSettings) -> Self {
        let nofile = raise_nofile();
        let budget = (nofile.saturating_sub(RESERVED_FDS) / 2).max(16);
        let max = match http.max_connections {
            Some(m) if m > budget => {
                tracing::warn!(
                    "server.http.max_connections = {m} is more than the descriptor limit \
                     ({nofile}, RLIMIT_NOFILE) allows: using {budget}; raise the limit \
                     (LimitNOFILE= in the systemd unit, ulimit -n) for more"
                );
                budget
            }
            Some(m) => m,
            None => budget.min(DEFAULT_MAX_CONNECTIONS),
        };
        tracing::info!(
            "connections: at most {max} open (descriptor limit {nofile}); header timeout {}s, \
             idle timeout {}s",
            http.header_timeout.as_secs(),
            http.idle_timeout.as_secs()
        );
        Self {
            http,
            max_connections: max as usize,
        }
    }
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (1024, the
/// usual default, when it cannot be read).
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    // Equal (systemd's LimitNOFILE= sets both): nothing to call, which the
    // unit's system call filter (@resources denied) would refuse anyway.
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}");
            soft
        }
    }
}

/// What one listener serves.
pub enum Serve {
    /// Plain HTTP: the [`front`] reader (sendfile for artifacts), or hyper
    /// alone with `[server.http] sendfile = false`.
    Plain(Router),
    /// HTTPS: the handshake, then hyper.
    Tls(tokio_rustls::TlsAcceptor, Router),
}

/// A warning that is logged at most once per [`LOG_EVERY`], saying how many
/// were left out in between.
pub(crate) struct Every {
    last: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    pub(crate) const fn new() -> Self {
        Self {
            last: Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last one)` when this one is to be logged.
    pub(crate) fn due(&self) -> Option<u64> {
        let mut g = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match g.0 {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                g.1 += 1;
                None
            }
            _ => {
                let skipped = g.1;
                *g = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

/// ", and N more like it in the last 10 s" when some were left out.
fn more(skipped: u64) -> String {
    match skipped {
        0 => String::new(),
        n => format!(" (and {n} more since the last such line)"),
    }
}

/// What every connection task shares.
struct Shared {
    limits: Limits,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Graceful stop: listeners close, idle connections end, busy ones end
    /// after their response.
    stop: CancellationToken,
    /// The grace is over: every connection task ends at once.
    drop_all: CancellationToken,
    cap_log: Every,
    accept_log: Every,
    handshake_log: Every,
}

/// Serve `listeners` until `stop` is cancelled, then close them, give the
/// connections still open `shutdown_grace`, and drop what is left.
pub async fn run(
    listeners: Vec<(TcpListener, Serve)>,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        limits,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        tracker: TaskTracker::new(),
        stop: stop.clone(),
        drop_all: CancellationToken::new(),
        cap_log: Every::new(),
        accept_log: Every::new(),
        handshake_log: Every::new(),
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(l, s)| accept_loop(l, Arc::new(s), shared.clone()))
        .collect();
    let all = async move {
        let mut set = tokio::task::JoinSet::new();
        for l in loops {
            set.spawn(l);
        }
        while set.join_next().await.is_some() {}
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        () = all => {}
    }
    // The accept loops (and with them the listening sockets) are gone.
    shared.tracker.close();
    let grace = limits.http.shutdown_grace;
    if !shared.tracker.is_empty() {
        tracing::info!(
            "shutting down: {} connection(s) open, waiting up to {}s for them",
            shared.tracker.len(),
            grace.as_secs()
        );
    }
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutting down: {} connection(s) still busy after {}s (server.http.shutdown_grace_secs): dropped",
            shared.tracker.len(),
            grace.as_secs()
        );
        shared.drop_all.cancel();
        shared.tracker.wait().await;
    }
    Ok(())
}

/// Accept while a permit is free; each connection is a task holding one.
async fn accept_loop(listener: TcpListener, serve: Arc<Serve>, shared: Arc<Shared>) {
    loop {
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(skipped) = shared.cap_log.due() {
                    tracing::warn!(
                        "connection cap reached: {} connections open (server.http.max_connections); \
                         new clients wait in the listen queue until one closes{}",
                        shared.limits.max_connections,
                        more(skipped)
                    );
                }
                match shared.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = loop {
            match listener.accept().await {
                Ok(c) => break c,
                Err(e) => {
                    if let Some(skipped) = shared.accept_log.due() {
                        tracing::warn!("accepting a connection: {e}{}", more(skipped));
                    }
                    // EMFILE/ENFILE: descriptors taken outside the cap; wait
                    // for some to be freed rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // Small answers (boot scripts, JSON) go out at once.
        let _ = stream.set_nodelay(true);
        let (serve, task_shared) = (serve.clone(), shared.clone());
        shared.tracker.spawn(async move {
            let _permit = permit;
            let s = &*task_shared;
            tokio::select! {
                _ = s.drop_all.cancelled() => {}
                () = connection(stream, peer, &serve, s) => {}
            }
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, serve: &Serve, s: &Shared) {
    let http = &s.limits.http;
    match serve {
        Serve::Plain(router) if http.sendfile => {
            front::serve(stream, peer, router.clone(), http, &s.stop).await
        }
        Serve::Plain(router) => {
            hyper_conn::serve(stream, peer, router.clone(), http, &s.stop, true).await
        }
        Serve::Tls(acceptor, router) => {
            let handshake =
                tokio::time::timeout(http.tls_handshake_timeout, acceptor.accept(stream));
            let tls = tokio::select! {
                _ = s.stop.cancelled() => return,
                r = handshake => r,
            };
            let why = match tls {
                Ok(Ok(tls)) => {
                    return hyper_conn::serve(tls, peer, router.clone(), http, &s.stop, true).await
                }
                Ok(Err(e)) => format!("failed: {e}"),
                Err(_) => format!(
                    "timed out ({}s, server.http.tls_handshake_timeout_secs)",
                    http.tls_handshake_timeout.as_secs()
                ),
            };
            if let Some(skipped) = s.handshake_log.due() {
                tracing::info!(%peer, "TLS handshake {why}{}", more(skipped));
            }
        }
    }
}
