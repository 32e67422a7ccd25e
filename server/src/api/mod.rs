//! The HTTP surface: router, JSON errors, auth extractors (the shared state
//! is [`crate::app`]).

pub mod admin;
pub mod agent;
pub mod artifacts;
pub mod metrics;
pub mod notifications;
pub mod verify;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use landfall_proto::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

pub use crate::app::{new_token, random_hex, token_hash, App, AppState, Peer};
use crate::store::AttemptRow;

/// Largest request body accepted (an events batch or a hello with its inventory).
pub const MAX_BODY: usize = 1024 * 1024;

pub fn router(app: AppState) -> Router {
    boot_routes()
        .route("/api/v1/agent/hello", post(agent::hello))
        .route("/api/v1/agent/events", post(agent::events))
        .route("/api/v1/agent/wait", post(agent::wait))
        .route("/api/v1/agent/verify", post(verify::verify))
        .route("/api/v1/machines", get(admin::list))
        .route("/api/v1/machines/{key}", get(admin::detail))
        .route("/api/v1/machines/{key}/reinstall", post(admin::reinstall))
        .route("/api/v1/machines/{key}/retry", post(admin::retry))
        .route("/api/v1/machines/{key}/approve", post(admin::approve))
        .route("/api/v1/notifications", get(notifications::list))
        .route("/metrics", get(metrics::metrics))
        .nest_service("/ui", crate::dashboard::router(app.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::count_answers,
        ))
        .with_state(app)
}

/// What iPXE fetches: served on the plain-HTTP listener too, since the
/// firmware's iPXE may lack HTTPS (docs/security.md says what that exposes).
fn boot_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/boot.ipxe", get(crate::boot::boot_ipxe))
        .route("/chain.ipxe", get(crate::boot::chain_ipxe))
        .route("/artifacts/{name}", get(artifact))
        .route("/artifacts/{arch}/{name}", get(arch_artifact))
}

/// The plain-HTTP listener's router when TLS is on: the boot routes, and a
/// 403 `https_required` naming the HTTPS port for everything else (the
/// agent and admin API never answer in clear).
pub fn http_boot_router(app: AppState, tls_port: u16) -> Router {
    boot_routes()
        .merge(metrics::plain_routes(&app))
        .nest_service("/ui", crate::dashboard::https_redirect(app.clone()))
        .fallback(move |uri: axum::http::Uri| async move {
            ApiError::coded(
                ErrorCode::HttpsRequired,
                StatusCode::FORBIDDEN,
                format!(
                    "{} is served over HTTPS only (port {tls_port}); this plain-HTTP \
                     listener serves boot.ipxe, chain.ipxe and /artifacts/",
                    uri.path()
                ),
            )
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        concat!(
            "landfall ",
            env!("CARGO_PKG_VERSION"),
            ": zero-touch NixOS provisioning server\n\n",
            "GET  /boot.ipxe?mac=..&arch=..&platform=..  iPXE script for a machine\n",
            "GET  /chain.ipxe                           generic script to embed in iPXE\n",
            "GET  /artifacts/{name}                     boot files (Range supported)\n",
            "POST /api/v1/agent/hello, /api/v1/agent/events, /api/v1/agent/wait   installer agent API\n",
            "POST /api/v1/agent/verify                  first-boot verification (Bearer verify token)\n",
            "GET  /api/v1/machines                      admin API (Bearer admin token)\n",
            "GET  /api/v1/notifications                 webhook deliveries (Bearer admin token)\n",
            "GET  /metrics                              Prometheus metrics\n",
        ),
    )
}

async fn artifact(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(ApiError::from_rejection)?;
    artifacts::serve_file(&app.artifacts, &name, &method, &headers).await
}

/// `GET /artifacts/{x86_64|arm64}/{name}`: a per-architecture image's files.
async fn arch_artifact(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((arch, name)) = path.map_err(ApiError::from_rejection)?;
    if !crate::artifact_dir::ARCH_DIRS.contains(&arch.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no artifacts for architecture {arch:?}"),
        ));
    }
    artifacts::serve_file(&app.artifacts.join(&arch), &name, &method, &headers).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Every error answer: a status and `{"error": "...", "code": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The stable code beside the message ([`ErrorCode`]).
    pub code: ErrorCode,
}

impl ApiError {
    /// An error with the status's generic code ([`ErrorCode::from_status`]).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: ErrorCode::from_status(status.as_u16()),
        }
    }

    /// An error with its own code.
    pub fn coded(code: ErrorCode, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            ..Self::new(status, message)
        }
    }

    /// A 500 whose detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error (details are in the server log)",
        )
    }

    pub fn from_rejection<R: IntoResponse + std::fmt::Display>(rej: R) -> Self {
        let message = rej.to_string();
        let status = rej.into_response().status();
        Self::new(status, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
                code: self.code,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// `axum::Json` whose rejections are JSON `ErrorBody`s with axum's 4xx status.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => Err(ApiError::new(rej.status(), rej.body_text())),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Compare two equal-length strings without an early exit.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The request carries the admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(t) if same(&token_hash(t), &app.admin_token_hash) => Ok(AdminAuth),
            Some(_) => Err(ApiError::coded(
                ErrorCode::AdminTokenInvalid,
                StatusCode::UNAUTHORIZED,
                "wrong admin token; use the token in the server's DATA/admin.token",
            )),
            None => Err(ApiError::coded(
                ErrorCode::AdminTokenMissing,
                StatusCode::UNAUTHORIZED,
                "missing admin token: send Authorization: Bearer <token from DATA/admin.token>",
            )),
        }
    }
}

/// The request carries a live agent token; holds its attempt.
pub struct AgentAuth(pub AttemptRow);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(t) = bearer(parts) else {
            return Err(ApiError::coded(
                ErrorCode::AgentTokenMissing,
                StatusCode::UNAUTHORIZED,
                "missing agent token: send Authorization: Bearer <agent_token from hello>",
            ));
        };
        let invalid = |why: &str| {
            ApiError::coded(
                ErrorCode::AgentTokenInvalid,
                StatusCode::UNAUTHORIZED,
                format!("agent token {why}; say hello again with the boot token"),
            )
        };
        let hash = token_hash(t);
        let found = app
            .store
            .read(move |tx| tx.attempt_by_agent_token(&hash))
            .await?;
        let Some(a) = found else {
            return Err(invalid("unknown or revoked"));
        };
        let now = crate::store::now();
        if a.superseded {
            let client = crate::app::peer_of(parts);
            let alarm = {
                let (a, client) = (a.clone(), client.clone());
                app.store
                    .write(move |tx| tx.superseded_use(&a, &client, now))
                    .await?
            };
            if let Some(alarm) = alarm {
                return Err(agent::sound_alarm(app, alarm, &client).await);
            }
            return Err(invalid(
                "expired: a newer install attempt of the machine began",
            ));
        }
        let idle = i64::try_from(app.settings.agent_token_idle_secs).unwrap_or(i64::MAX);
        if a.last_seen_at.is_some_and(|t| now.saturating_sub(t) > idle) {
            return Err(invalid(
                "expired: unused for longer than server.agent_token_idle_secs",
            ));
        }
        Ok(AgentAuth(a))
    }
}
