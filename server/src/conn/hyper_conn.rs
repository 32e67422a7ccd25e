//! A connection served by hyper: HTTPS, the plain listener with
//! `sendfile = false`, and what the [`super::front`] hands over (requests
//! with a body).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::io::SendTimeout;
use crate::app::PeerAddr;
use crate::config::HttpSettings;

/// Serve `io` until the client closes, a timeout ends it, or a stop lets
/// its request in flight finish. `fresh`: no request has come yet, so the
/// first one's head must be in within `header_timeout`; later heads get
/// `idle_timeout` from the end of the response before (hyper's header-read
/// timer, which starts when the connection is idle again).
pub(super) async fn serve<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    http: &HttpSettings,
    stop: &CancellationToken,
    fresh: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(AtomicBool::new(!fresh));
    let service = {
        let seen = seen.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            router.clone().call(req)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.idle_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(
        TokioIo::new(SendTimeout::new(io, http.send_timeout)),
        service,
    );
    tokio::pin!(conn);
    let first_head = tokio::time::sleep(http.header_timeout);
    tokio::pin!(first_head);
    let (mut stopping, mut first_checked) = (false, !fresh);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                // Idle: closes now; busy: after the response in flight.
                conn.as_mut().graceful_shutdown();
            }
            () = &mut first_head, if !first_checked => {
                first_checked = true;
                if !seen.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request head within the header timeout: closed");
                    return;
                }
            }
        }
    }
}
