//! `GET /metrics` (Prometheus text format), with the optional bearer token
//! of `[metrics] token_file`, and the counting of hello and verify answers.
//! What is counted is [`crate::metrics`]'s.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use landfall_proto::{Event, MachineState};

use super::{same, token_hash, ApiError, AppState};

pub async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(want) = &app.settings.metrics.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let ok = given.is_some_and(|t| same(&token_hash(t), &token_hash(want.expose())));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "/metrics needs Authorization: Bearer <the token in [metrics] token_file>",
            ));
        }
    }
    let text = app.metrics.render(&app.store, &app.settings).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `/metrics` on the plain-HTTP listener when TLS is on and
/// `[metrics] plain_http` says so; nothing otherwise.
pub(super) fn plain_routes(app: &AppState) -> Router<AppState> {
    if app.settings.metrics.plain_http {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new()
    }
}

/// Middleware: count the answers to hello and verify by status.
pub async fn count_answers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let verify = match req.uri().path() {
        "/api/v1/agent/hello" => Some(false),
        "/api/v1/agent/verify" => Some(true),
        _ => None,
    };
    let r = next.run(req).await;
    if let Some(verify) = verify {
        app.metrics.answered(verify, r.status().as_u16());
    }
    r
}

/// An install attempt of `mac` ended in `state` with these events: count it
/// under the machine's role.
pub async fn install_ended(app: &AppState, mac: &str, state: MachineState, events: &[Event]) {
    let mac_owned = mac.to_owned();
    let role = match app.store.read(move |tx| tx.machine(&mac_owned)).await {
        Ok(m) => m.and_then(|m| m.role),
        Err(e) => {
            tracing::warn!(%mac, "reading the role for the metrics: {e:#}");
            None
        }
    };
    app.metrics.install_ended(role.as_deref(), state, events);
}
