//! The technicians' web dashboard under `/ui/`: the fleet, each machine
//! live (server-sent events), and the actions retry, reinstall and approve
//! through the admin API's own functions (`api::admin`). Server-side pages
//! from compile-time templates (maud, `views`); the style and the small
//! live script are embedded in the binary; the read-only pages work
//! without JavaScript.
//!
//! Served by `api::router` (the HTTPS listener when TLS is on). Module
//! direction: dashboard -> api::admin, store, app; `feed` is a leaf the
//! `App` holds and the agent API publishes into.

pub mod auth;
pub mod feed;
pub mod fleet;
pub mod live;
mod pages;
pub mod panel;
pub mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, OriginalUri, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::api::ApiError;
use crate::app::AppState;
use auth::{LoginLimiter, Session, Sessions, SESSION_COOKIE};

/// The dashboard's state: the server's, and the logins.
pub struct Dash {
    pub app: AppState,
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    /// One live-update hub per watched machine (`live`).
    pub hubs: live::Hubs,
    /// Cookies carry `Secure`: the dashboard is served over TLS.
    pub secure: bool,
}

pub type DashState = Arc<Dash>;

/// The dashboard's router, nested at `/ui` by `api::router`.
pub fn router(app: AppState) -> Router {
    let s = &app.settings.dashboard;
    if !s.enabled {
        return Router::new().fallback(|| async {
            page_error(
                StatusCode::NOT_FOUND,
                "the dashboard is off ([dashboard] enabled = false in landfall.toml)",
            )
        });
    }
    let dash = Arc::new(Dash {
        sessions: Sessions::new(s.session_ttl),
        limiter: LoginLimiter::new(s.max_failed_logins, s.login_window),
        hubs: live::Hubs::default(),
        secure: app.tls_port.is_some(),
        app,
    });
    Router::new()
        .route("/", get(pages::fleet))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", axum::routing::post(pages::logout))
        .route("/machines/{key}", get(pages::machine))
        .route("/machines/{key}/live", get(live::stream))
        .route(
            "/machines/{key}/{action}",
            get(pages::confirm).post(pages::act),
        )
        .route("/static/{file}", get(static_file))
        .fallback(|uri: axum::http::Uri| async move {
            page_error(
                StatusCode::NOT_FOUND,
                &format!("no such page: {}{}", views::ROOT, uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(dash)
}

/// The plain-HTTP listener's `/ui` when TLS is on: a redirect to the same
/// page over HTTPS (nothing of the dashboard is served in clear).
pub fn https_redirect(app: AppState) -> Router {
    Router::new().fallback(
        move |OriginalUri(uri): OriginalUri, headers: axum::http::HeaderMap| async move {
            let base = app
                .base_url(&headers)
                .and_then(|b| app.agent_base(&b))
                .filter(|b| b.starts_with("https://"));
            match base {
                Some(b) => Redirect::permanent(&format!(
                    "{b}{}",
                    uri.path_and_query().map_or("/ui/", |p| p.as_str())
                ))
                .into_response(),
                None => page_error(
                    StatusCode::FORBIDDEN,
                    "the dashboard is served over HTTPS only (server.listen_tls)",
                ),
            }
        },
    )
}

/// What every answer of the dashboard carries: no framing, no sniffing, no
/// referrer off the site, only our own script and style, and no caching of
/// pages (they hold the CSRF token).
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    r
}

const STYLE: &str = include_str!("static/style.css");
const SCRIPT: &str = include_str!("static/live.js");

async fn static_file(Path(file): Path<String>) -> Response {
    let (body, mime) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return page_error(StatusCode::NOT_FOUND, "no such file"),
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An HTML error page.
pub fn page_error(status: StatusCode, text: &str) -> Response {
    (
        status,
        Html(views::page("Error", None, views::error_page(status.as_u16(), text)).into_string()),
    )
        .into_response()
}

/// A handler's error: an HTML page with the status and the message (the
/// admin API's own message for its refusals). Boxed: a `Response` is too
/// large for every `Result` to carry.
pub struct PageError(Box<Response>);

impl From<Response> for PageError {
    fn from(r: Response) -> Self {
        PageError(Box::new(r))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        page_error(e.status, &e.message).into()
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e).into()
    }
}

/// A logged-in request: its cookie and session. Without one, a GET is sent
/// to the login page (and back after it); anything else is refused.
pub struct User {
    pub cookie: String,
    pub session: Session,
}

impl FromRequestParts<DashState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, d: &DashState) -> Result<Self, Response> {
        if let Some(cookie) = auth::cookie(&parts.headers, SESSION_COOKIE) {
            if let Some(session) = d.sessions.get(cookie) {
                return Ok(User {
                    cookie: cookie.to_owned(),
                    session,
                });
            }
        }
        if parts.method == Method::GET {
            let path = parts
                .extensions
                .get::<OriginalUri>()
                .map_or_else(|| parts.uri.to_string(), |u| u.0.to_string());
            return Err(Redirect::to(&format!(
                "{}/login?next={}",
                views::ROOT,
                pages::encode(&path)
            ))
            .into_response());
        }
        Err(page_error(
            StatusCode::UNAUTHORIZED,
            "not logged in, or the session ended: log in again",
        ))
    }
}
