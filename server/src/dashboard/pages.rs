//! The dashboard's handlers: log in and out, the fleet, a machine, and the
//! actions with their confirmation.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use landfall_proto::admin::AttemptDetail;
use landfall_proto::MachineState;

use super::auth::{self, Credentials, Flash, LOGIN_COOKIE, SESSION_COOKIE};
use super::fleet::{self, FleetQuery, FleetView};
use super::panel::{is_output, Panel};
use super::views::{self, machine_url, Ctx, Head, MachinePage};
use super::{page_error, DashState, PageError, User};
use crate::api::admin;
use crate::app::{random_hex, App, Peer};
use crate::store::{now, EventPage, MachineRow};

/// Output lines shown when the page loads (the live stream adds more).
pub const OUTPUT_LINES: usize = 200;
/// Events per page of an attempt's history.
pub const EVENTS_PAGE: u64 = 100;

fn html(title: &str, ctx: Option<&Ctx<'_>>, body: maud::Markup) -> Response {
    Html(views::page(title, ctx, body).into_string()).into_response()
}

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after logging in: a dashboard path only (never elsewhere).
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        next
    } else {
        "/ui/"
    }
}

fn check_csrf(session: &auth::Session, sent: &str) -> Result<(), PageError> {
    if !sent.is_empty() && crate::api::same(sent, &session.csrf) {
        return Ok(());
    }
    Err(PageError::from(page_error(
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or stale; go back, reload the page and try again",
    )))
}

pub async fn fleet(
    State(d): State<DashState>,
    user: User,
    query: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(q) =
        query.map_err(|e| PageError::from(page_error(StatusCode::BAD_REQUEST, &e.to_string())))?;
    let mut session = user.session;
    session.flash = d.sessions.take_flash(&user.cookie);
    let app = &d.app;
    let mut rows = fleet::rows(app).await?;
    let total = rows.len();
    let counts = fleet::counts(&rows);
    let mut roles: Vec<String> = app.settings.roles.keys().cloned().collect();
    for r in rows.iter().filter_map(|r| r.role.as_ref()) {
        if !roles.contains(r) {
            roles.push(r.clone());
        }
    }
    roles.sort();
    fleet::select(&mut rows, &q);
    let (page, pages, per, shown) = fleet::paginate(&rows, &q);
    let attempts: Vec<String> = shown
        .iter()
        .filter_map(|r| r.current_attempt.clone())
        .collect();
    let last = app.store.read(move |tx| tx.last_events(&attempts)).await?;
    let ctx = Ctx { session: &session };
    let body = fleet::view(
        &ctx,
        &FleetView {
            query: &q,
            total,
            counts,
            roles,
            matching: rows.len(),
            page,
            pages,
            per,
            rows: shown,
            last: &last,
            now: now(),
        },
    );
    Ok(html("Fleet", Some(&ctx), body))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

pub async fn login_form(
    State(d): State<DashState>,
    Query(q): Query<NextQuery>,
) -> Result<Response, PageError> {
    login_page(&d, safe_next(&q.next), None, StatusCode::OK)
}

/// The login page with a fresh CSRF token, also set as a cookie the form's
/// POST must match (there is no session yet to hold it).
fn login_page(
    d: &DashState,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let csrf = random_hex(32)?;
    let body = views::login(
        &csrf,
        next,
        error,
        !d.app.settings.dashboard.users.is_empty(),
    );
    let mut r = html("Log in", None, body);
    *r.status_mut() = status;
    r.headers_mut().append(
        header::SET_COOKIE,
        auth::set_cookie(
            LOGIN_COOKIE,
            &csrf,
            "/ui/login",
            std::time::Duration::from_secs(3600),
            d.secure,
        )
        .parse()
        .map_err(anyhow::Error::from)?,
    );
    Ok(r)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

pub async fn login(
    State(d): State<DashState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(f) =
        form.map_err(|e| PageError::from(page_error(StatusCode::BAD_REQUEST, &e.body_text())))?;
    let next = safe_next(&f.next).to_owned();
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if f.csrf.is_empty() || !crate::api::same(&f.csrf, expected) {
        return login_page(
            &d,
            &next,
            Some("the login form expired or lacks its CSRF token; try again"),
            StatusCode::FORBIDDEN,
        );
    }
    let ip = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    let (name, creds) = if !f.token.is_empty() {
        (
            auth::ADMIN_USER.to_owned(),
            Credentials::AdminToken(f.token),
        )
    } else {
        (
            f.user.clone(),
            Credentials::Password {
                user: f.user,
                password: f.password,
            },
        )
    };
    if let Some(wait) = d.limiter.blocked(ip, &name) {
        tracing::warn!(client = %peer, user = %crate::text::Untrusted(&name), "dashboard login refused: too many failed logins");
        return login_page(
            &d,
            &next,
            Some(&format!(
                "too many failed logins from this address or for this user; try again in {wait} s"
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let settings = &d.app.settings.dashboard;
    let Some((user, role)) = auth::check(settings, &d.app.admin_token_hash, creds).await? else {
        d.limiter.failed(ip, &name);
        tracing::warn!(client = %peer, user = %crate::text::Untrusted(&name), "dashboard login failed");
        return login_page(
            &d,
            &next,
            Some("wrong user name, password or token"),
            StatusCode::UNAUTHORIZED,
        );
    };
    d.limiter.succeeded(ip, &name);
    let cookie = d.sessions.create(&user, role)?;
    tracing::info!(client = %peer, %user, role = role.as_str(), "dashboard login");
    let mut r = Redirect::to(&next).into_response();
    let h = r.headers_mut();
    for c in [
        auth::set_cookie(SESSION_COOKIE, &cookie, "/ui", d.sessions.ttl(), d.secure),
        auth::set_cookie(
            LOGIN_COOKIE,
            "",
            "/ui/login",
            std::time::Duration::ZERO,
            d.secure,
        ),
    ] {
        h.append(header::SET_COOKIE, c.parse().map_err(anyhow::Error::from)?);
    }
    Ok(r)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(d): State<DashState>,
    user: User,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    check_csrf(&user.session, &csrf)?;
    d.sessions.remove(&user.cookie);
    tracing::info!(user = %user.session.user, "dashboard logout");
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        auth::set_cookie(
            SESSION_COOKIE,
            "",
            "/ui",
            std::time::Duration::ZERO,
            d.secure,
        )
        .parse()
        .map_err(anyhow::Error::from)?,
    );
    Ok(r)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct MachineQuery {
    attempt: Option<String>,
    #[serde(default)]
    after: u64,
}

/// What the top of a machine's page shows, from its row.
pub async fn head<'a>(app: &App, row: &'a MachineRow) -> anyhow::Result<Head<'a>> {
    let mac = row.mac.clone();
    let state_since = app.store.read(move |tx| tx.state_since(&mac)).await?;
    Ok(Head {
        mac: &row.mac,
        hostname: row.hostname.as_deref(),
        state: row.state,
        error: row.error.as_deref(),
        state_since,
        now: now(),
        assigned: row.assignment().is_some(),
        stored: true,
    })
}

/// The step panel and the output tail of an attempt, from the store.
pub async fn load_attempt(
    app: &App,
    attempt: Option<&str>,
) -> anyhow::Result<(Panel, Vec<landfall_proto::Event>)> {
    let mut panel = Panel::new(attempt.map(str::to_owned));
    let Some(a) = attempt else {
        return Ok((panel, Vec::new()));
    };
    let a = a.to_owned();
    let (milestones, tail) = app
        .store
        .read(move |tx| {
            Ok((
                tx.attempt_milestones(&a)?,
                tx.attempt_tail(&a, 0, 2 * OUTPUT_LINES as u64)?,
            ))
        })
        .await?;
    for e in milestones {
        panel.apply(&e);
    }
    if let Some(last) = tail.last() {
        panel.last_seq = panel.last_seq.max(last.seq);
    }
    let mut out: Vec<_> = tail.into_iter().filter(is_output).collect();
    let extra = out.len().saturating_sub(OUTPUT_LINES);
    out.drain(..extra);
    Ok((panel, out))
}

pub async fn machine(
    State(d): State<DashState>,
    user: User,
    Path(key): Path<String>,
    Query(q): Query<MachineQuery>,
) -> Result<Response, PageError> {
    let app = &d.app;
    let mut session = user.session;
    let flash = d.sessions.take_flash(&user.cookie);
    session.flash = None;
    let ctx = Ctx { session: &session };
    let found = {
        let key = key.clone();
        app.store.read(move |tx| tx.find_machine(&key)).await?
    };
    let Some(row) = found else {
        // A `[[machines]]` entry that never booted: what is known of it.
        let summary = admin::configured_mac(app, &key)
            .and_then(|mac| admin::expected(app, &mac))
            .ok_or_else(|| {
                PageError::from(page_error(
                    StatusCode::NOT_FOUND,
                    &format!("no machine with MAC or hostname {key:?}"),
                ))
            })?;
        let detail = landfall_proto::admin::MachineDetail {
            summary,
            inventory: None,
            attempts: Vec::new(),
            verify: None,
            identity: None,
        };
        let panel = Panel::new(None);
        let page = MachinePage {
            head: Head {
                mac: &detail.summary.mac,
                hostname: detail.summary.hostname.as_deref(),
                state: MachineState::Expected,
                error: None,
                state_since: None,
                now: now(),
                assigned: false,
                stored: false,
            },
            detail: &detail,
            panel: &panel,
            output: Vec::new(),
            selected: None,
            after: 0,
            flash,
        };
        let title = detail.summary.hostname.clone().unwrap_or_default();
        return Ok(html(&title, Some(&ctx), views::machine(&ctx, &page)));
    };
    let no_events = EventPage {
        attempt: None,
        after: 0,
        limit: 0,
    };
    let m = row.mac.clone();
    let detail = app
        .store
        .read(move |tx| tx.detail(&m, &no_events))
        .await?
        .ok_or_else(|| {
            PageError::from(page_error(StatusCode::NOT_FOUND, "the machine vanished"))
        })?;
    let (panel, output) = load_attempt(app, row.current_attempt.as_deref()).await?;
    let selected_id = q
        .attempt
        .clone()
        .or_else(|| row.current_attempt.clone())
        .or_else(|| detail.attempts.last().map(|a| a.attempt_id.clone()));
    let selected: Option<AttemptDetail> = match &selected_id {
        Some(id) => {
            let m = row.mac.clone();
            let page = EventPage {
                attempt: Some(id.clone()),
                after: q.after,
                limit: EVENTS_PAGE,
            };
            app.store
                .read(move |tx| tx.detail(&m, &page))
                .await?
                .and_then(|d| d.attempts.into_iter().next())
        }
        None => None,
    };
    let page = MachinePage {
        head: head(app, &row).await?,
        detail: &detail,
        panel: &panel,
        output: output.iter().collect(),
        selected: selected.as_ref(),
        after: q.after,
        flash,
    };
    let title = row.hostname.clone().unwrap_or_else(|| row.mac.clone());
    Ok(html(&title, Some(&ctx), views::machine(&ctx, &page)))
}

/// The three actions: what each does, in words for the confirmation.
#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Reinstall,
    Approve,
}

impl Action {
    fn parse(s: &str) -> Result<Self, PageError> {
        match s {
            "retry" => Ok(Self::Retry),
            "reinstall" => Ok(Self::Reinstall),
            "approve" => Ok(Self::Approve),
            _ => Err(PageError::from(page_error(
                StatusCode::NOT_FOUND,
                &format!("no such action {s:?}; the actions are retry, reinstall and approve"),
            ))),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Retry => "Retry",
            Self::Reinstall => "Reinstall",
            Self::Approve => "Approve",
        }
    }

    fn what(self, name: &str, row: &MachineRow) -> String {
        let state = row.state;
        match self {
            Self::Retry => format!(
                "{name} ({}) is {state}. Its installer, still waiting on the failed attempt, \
                 runs again from the failed step; the disks and the work done before that step \
                 are kept. If no installer is waiting, the retry stays requested.",
                row.mac
            ),
            Self::Reinstall => format!(
                "{name} ({}) is {state}. At its next PXE boot it is installed from scratch as \
                 role {}: its disks are partitioned and formatted again under the role's wipe \
                 policy ({}). Until then it keeps running what it has.",
                row.mac,
                row.role.as_deref().unwrap_or("-"),
                match row.wipe {
                    landfall_proto::WipePolicy::Always => "always wipe",
                    _ => "never wipe a disk that holds data",
                }
            ),
            Self::Approve => format!(
                "{name} ({}) is {state}: its hardware identity differs from the one pinned at \
                 its first install. Approving pins the presented identity and installs it at \
                 its next PXE boot. Check the machine first.",
                row.mac
            ),
        }
    }
}

fn operator_only(user: &User) -> Result<(), PageError> {
    if user.session.role >= crate::config::Role::Operator {
        return Ok(());
    }
    Err(PageError::from(page_error(
        StatusCode::FORBIDDEN,
        &format!(
            "{} is a viewer: retry, reinstall and approve need an operator login",
            user.session.user
        ),
    )))
}

pub async fn confirm(
    State(d): State<DashState>,
    user: User,
    Path((key, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let action = Action::parse(&action)?;
    operator_only(&user)?;
    let row = admin::find_key(&d.app, &key).await?;
    let name = row.hostname.clone().unwrap_or_else(|| row.mac.clone());
    let ctx = Ctx {
        session: &user.session,
    };
    let body = views::confirm(
        &ctx,
        &row.mac,
        &name,
        action.verb(),
        &action.what(&name, &row),
        &key_action(action),
    );
    Ok(html(&format!("{} {name}", action.verb()), Some(&ctx), body))
}

fn key_action(a: Action) -> String {
    a.verb().to_lowercase()
}

/// Run an action through the admin API's functions and show its answer
/// (the CLI's words) on the machine's page.
pub async fn act(
    State(d): State<DashState>,
    user: User,
    Path((key, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let action = Action::parse(&action)?;
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    check_csrf(&user.session, &csrf)?;
    operator_only(&user)?;
    let app = &d.app;
    let row = admin::find_key(app, &key).await?;
    let mac = row.mac.clone();
    let result = match action {
        Action::Retry => admin::retry_machine(app, row)
            .await
            .map(|r| admin::retry_text(&r)),
        Action::Reinstall => admin::reinstall_machine(app, row)
            .await
            .map(|s| admin::reinstall_text(&s)),
        Action::Approve => admin::approve_machine(app, row)
            .await
            .map(|s| admin::approve_text(&s)),
    };
    tracing::info!(
        user = %user.session.user,
        %mac,
        action = action.verb(),
        ok = result.is_ok(),
        "dashboard action"
    );
    let flash = match result {
        Ok(text) => Flash { ok: true, text },
        Err(e) => Flash {
            ok: false,
            text: e.message,
        },
    };
    d.sessions.set_flash(&user.cookie, flash);
    Ok(Redirect::to(&machine_url(&mac)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next("/ui/machines/x"), "/ui/machines/x");
        assert_eq!(safe_next("https://evil/"), "/ui/");
        assert_eq!(safe_next("/ui//evil.example"), "/ui/");
        assert_eq!(safe_next("/ui/\\x"), "/ui/");
        assert_eq!(safe_next(""), "/ui/");
    }
}
