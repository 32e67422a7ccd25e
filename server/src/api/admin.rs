//! The admin API (Bearer admin token): list, detail, reinstall, retry,
//! approve. The actions' logic and the texts the CLI prints for their
//! answers are here once: the dashboard calls the same functions.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use landfall_proto::admin::{
    MachineDetail, MachineListQuery, MachineSummary, RetryResponse, DEFAULT_MACHINES_PAGE,
    MAX_MACHINES_PAGE,
};

use super::{AdminAuth, ApiError, App, AppState, Json};
use landfall_proto::names::normalize_mac;
use landfall_proto::{ErrorCode, MachineState};

use crate::store::{now, EventPage, ListKey, MachineFilter, MachineRow, RetryOutcome};

/// `GET /api/v1/machines?limit=N&cursor=C&state=S&role=R&q=TEXT`: one page
/// of the machines the database knows and the `[[machines]]` entries that
/// never booted (as `expected`), filtered, in the list's order
/// ([`ListKey`]). More after it: `Link: <...>; rel="next"`.
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    query: Result<Query<MachineListQuery>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<MachineSummary>>), ApiError> {
    let Query(q) = query.map_err(ApiError::from_rejection)?;
    let (filter, after, limit) = list_params(&q)?;
    // One more than the page: whether a next page exists.
    let want = limit as usize + 1;
    let (f, a) = (filter.clone(), after.clone());
    let stored = app
        .store
        .read(move |tx| tx.machine_page(&f, a.as_ref(), want as u64))
        .await?;
    let expected = expected_page(&app, &filter, after.as_ref(), want).await?;
    let mut page: Vec<(ListKey, MachineSummary)> = stored
        .into_iter()
        .chain(expected)
        .map(|s| (ListKey::new(s.hostname.as_deref(), &s.mac), s))
        .collect();
    page.sort_by(|a, b| a.0.cmp(&b.0));
    let mut headers = HeaderMap::new();
    if page.len() > limit as usize {
        page.truncate(limit as usize);
        let last = &page.last().expect("limit is at least 1").0;
        let next = MachineListQuery {
            limit: Some(limit),
            cursor: Some(last.cursor()),
            ..q
        };
        let link = format!("</api/v1/machines?{}>; rel=\"next\"", query_string(&next));
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    Ok((headers, Json(page.into_iter().map(|(_, s)| s).collect())))
}

/// The list's parameters checked: a 400 naming the parameter and the fix.
fn list_params(q: &MachineListQuery) -> Result<(MachineFilter, Option<ListKey>, u64), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let limit = q.limit.unwrap_or(DEFAULT_MACHINES_PAGE);
    if !(1..=MAX_MACHINES_PAGE).contains(&limit) {
        return Err(bad(format!(
            "limit={limit}: ask for 1 to {MAX_MACHINES_PAGE} machines per page \
             (default {DEFAULT_MACHINES_PAGE}); follow the Link rel=\"next\" header for more"
        )));
    }
    let state = match given(&q.state) {
        None => None,
        Some(s) => match MachineState::parse(&s) {
            MachineState::Unknown => {
                let names: Vec<&str> = crate::dashboard::fleet::STATE_ORDER
                    .iter()
                    .filter(|s| **s != MachineState::Unknown)
                    .map(|s| s.as_str())
                    .collect();
                return Err(bad(format!(
                    "state={s:?} is not a machine state; use one of {}",
                    names.join(", ")
                )));
            }
            st => Some(st),
        },
    };
    let role = given(&q.role);
    if let Some(r) = &role {
        landfall_proto::names::check_simple_name("role", r)
            .map_err(|e| bad(format!("role={r:?}: {e}")))?;
    }
    let text = given(&q.q).map(|t| t.to_lowercase());
    if let Some(t) = &text {
        if t.chars().count() > 100 || t.chars().any(char::is_control) {
            return Err(bad(
                "q: the search text must be at most 100 characters without control characters"
                    .into(),
            ));
        }
    }
    let after = match given(&q.cursor) {
        None => None,
        Some(c) => Some(ListKey::parse(&c).ok_or_else(|| {
            bad(format!(
                "cursor={c:?} is not a cursor this server gave out; start without `cursor` \
                 and follow the Link rel=\"next\" header of each answer"
            ))
        })?),
    };
    Ok((MachineFilter { state, role, text }, after, limit))
}

/// The first `want` `[[machines]]` entries that never booted (`expected`),
/// passing `filter`, after `after`, in the list's order.
async fn expected_page(
    app: &App,
    filter: &MachineFilter,
    after: Option<&ListKey>,
    want: usize,
) -> Result<Vec<MachineSummary>, ApiError> {
    let mut candidates: Vec<(ListKey, String)> = app
        .settings
        .machines
        .iter()
        .filter(|(mac, m)| {
            filter.matches(
                mac,
                Some(&m.hostname),
                Some(&m.role),
                MachineState::Expected,
            )
        })
        .map(|(mac, m)| (ListKey::new(Some(&m.hostname), mac), mac.clone()))
        .filter(|(k, _)| after.is_none_or(|a| k > a))
        .collect();
    candidates.sort();
    let mut out = Vec::new();
    // Those the database stores are not expected: asked a chunk at a time
    // until the page is full.
    for chunk in candidates.chunks(want.max(64)) {
        let macs: Vec<String> = chunk.iter().map(|(_, m)| m.clone()).collect();
        let stored = app.store.read(move |tx| tx.stored_macs(&macs)).await?;
        out.extend(
            chunk
                .iter()
                .filter(|(_, m)| !stored.contains(m))
                .filter_map(|(_, m)| expected(app, m)),
        );
        if out.len() >= want {
            out.truncate(want);
            break;
        }
    }
    Ok(out)
}

/// `q` as a URL query string (each value percent-encoded).
fn query_string(q: &MachineListQuery) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let mut parts = Vec::new();
    if let Some(l) = q.limit {
        parts.push(format!("limit={l}"));
    }
    for (k, v) in [
        ("state", &q.state),
        ("role", &q.role),
        ("q", &q.q),
        ("cursor", &q.cursor),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    parts.join("&")
}

/// A `[[machines]]` entry the database does not know yet, by MAC or hostname.
pub fn configured_mac(app: &App, key: &str) -> Option<String> {
    let s = &app.settings;
    let mac = match normalize_mac(key) {
        Some(mac) => s.machines.contains_key(&mac).then_some(mac)?,
        None => s.machines.values().find(|m| m.hostname == key)?.mac.clone(),
    };
    normalize_mac(&mac)
}

/// The summary of a configured machine that never booted.
pub fn expected(app: &App, mac: &str) -> Option<MachineSummary> {
    let m = app.settings.machines.get(mac)?;
    Some(MachineSummary {
        mac: mac.to_owned(),
        hostname: Some(m.hostname.clone()),
        role: Some(m.role.clone()),
        state: MachineState::Expected,
        error: None,
        last_event: None,
        updated_at: String::new(),
    })
}

/// The stored machine `key` names (MAC or hostname); 409 for a configured
/// one that never booted, 404 for none.
pub async fn find_key(app: &App, key: &str) -> Result<MachineRow, ApiError> {
    let k = key.to_owned();
    if let Some(row) = app.store.read(move |tx| tx.find_machine(&k)).await? {
        return Ok(row);
    }
    if let Some(mac) = configured_mac(app, key) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "machine {key} ({mac}) is listed in [[machines]] but has not PXE-booted yet: \
                 it installs on its first PXE boot, there is nothing to change"
            ),
        ));
    }
    Err(not_found(key))
}

async fn find(app: &App, key: Result<Path<String>, PathRejection>) -> Result<MachineRow, ApiError> {
    let Path(key) = key.map_err(ApiError::from_rejection)?;
    find_key(app, &key).await
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no machine with MAC or hostname {key:?}"),
    )
}

/// Most events per attempt in one detail answer (and the default).
pub const MAX_EVENTS_PAGE: u64 = 1000;

/// `GET /api/v1/machines/{key}?attempt=ID&events_after=SEQ&limit=N`: the
/// detail with one page of events per attempt (or of the named attempt only,
/// those after `events_after`), at most `limit` (default and most
/// [`MAX_EVENTS_PAGE`]); `more_events` says whether to ask for the next.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    pub attempt: Option<String>,
    #[serde(default)]
    pub events_after: u64,
    pub limit: Option<u64>,
}

pub async fn detail(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<MachineDetail>, ApiError> {
    let Path(key) = key.map_err(ApiError::from_rejection)?;
    let Query(q) = query.map_err(ApiError::from_rejection)?;
    if q.events_after > 0 && q.attempt.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "events_after={} needs attempt=ID: the page of which attempt (its attempt_id \
                 from the detail's attempts)",
                q.events_after
            ),
        ));
    }
    let page = EventPage {
        attempt: q.attempt,
        after: q.events_after,
        limit: q.limit.unwrap_or(MAX_EVENTS_PAGE).min(MAX_EVENTS_PAGE),
    };
    let found = {
        let key = key.clone();
        app.store.read(move |tx| tx.find_machine(&key)).await?
    };
    let Some(row) = found else {
        let summary = configured_mac(&app, &key)
            .and_then(|mac| expected(&app, &mac))
            .ok_or_else(|| not_found(&key))?;
        return Ok(Json(MachineDetail {
            summary,
            inventory: None,
            attempts: Vec::new(),
            verify: None,
            identity: None,
        }));
    };
    let mac = row.mac.clone();
    let detail = app
        .store
        .read(move |tx| tx.detail(&mac, &page))
        .await?
        .ok_or_else(|| vanished(&row.mac))?;
    Ok(Json(detail))
}

pub async fn reinstall(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<MachineSummary>, ApiError> {
    reinstall_machine(&app, find(&app, key).await?)
        .await
        .map(Json)
}

/// `POST .../reinstall` (the CLI's and the dashboard's): the machine
/// installs from scratch at its next PXE boot.
pub async fn reinstall_machine(app: &App, row: MachineRow) -> Result<MachineSummary, ApiError> {
    if row.assignment().is_none() {
        return Err(ApiError::coded(
            ErrorCode::NoAssignment,
            StatusCode::CONFLICT,
            format!(
                "machine {} has no hostname and role to install; list it in [[machines]] of landfall.toml",
                row.mac
            ),
        ));
    }
    let mac = row.mac.clone();
    app.store
        .write(move |tx| tx.request_reinstall(&mac, now()))
        .await?;
    app.machines_changed();
    tracing::info!(mac = %row.mac, from = %row.state, "reinstall requested");
    summary_of(app, &row.mac).await
}

/// `identity_held` -> `reinstall_requested`: the identity the held hello
/// presented becomes the pinned one; the machine installs at its next PXE
/// boot. 409 in any other state.
pub async fn approve(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<MachineSummary>, ApiError> {
    approve_machine(&app, find(&app, key).await?)
        .await
        .map(Json)
}

/// `POST .../approve` (the CLI's and the dashboard's).
pub async fn approve_machine(app: &App, row: MachineRow) -> Result<MachineSummary, ApiError> {
    let mac = row.mac.clone();
    if !app
        .store
        .write(move |tx| tx.approve_identity(&mac, now()))
        .await?
    {
        return Err(ApiError::coded(
            ErrorCode::Conflict,
            StatusCode::CONFLICT,
            format!(
                "machine {} is {}; approve applies only to a machine held for its identity \
                 (identity_held)",
                row.hostname.as_deref().unwrap_or(&row.mac),
                row.state
            ),
        ));
    }
    app.machines_changed();
    tracing::info!(mac = %row.mac, "identity approved and pinned again; it installs on its next PXE boot");
    summary_of(app, &row.mac).await
}

/// `failed` -> `retry_requested`: the agent still waiting on the failed
/// attempt runs again from the failed step. The answer says whether such an
/// agent is waiting (when none is, the request stands, and the CLI says what
/// to do instead).
pub async fn retry(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<RetryResponse>, ApiError> {
    retry_machine(&app, find(&app, key).await?).await.map(Json)
}

/// `POST .../retry` (the CLI's and the dashboard's).
pub async fn retry_machine(app: &App, row: MachineRow) -> Result<RetryResponse, ApiError> {
    let name = row.hostname.clone().unwrap_or_else(|| row.mac.clone());
    let mac = row.mac.clone();
    match app
        .store
        .write(move |tx| tx.request_retry(&mac, now()))
        .await?
    {
        RetryOutcome::Requested => {}
        RetryOutcome::NotFound => return Err(vanished(&row.mac)),
        RetryOutcome::WrongState(now_row) => {
            let message = match now_row.state {
                MachineState::Compromised => format!(
                    "machine {name} is compromised ({}): a retry would continue the same attempt; \
                     investigate, then start over with `landfall reinstall {name}`",
                    now_row.error.as_deref().unwrap_or("security alarm")
                ),
                state => format!(
                    "machine {name} is {state}; retry applies only to a failed install \
                     (to start over: `landfall reinstall {name}`)"
                ),
            };
            return Err(ApiError::new(StatusCode::CONFLICT, message));
        }
    }
    app.machines_changed();
    let mac = row.mac.clone();
    let installer = app
        .store
        .read(move |tx| tx.installer_wait(&mac, now(), super::agent::WAIT_GRACE_SECS))
        .await?;
    tracing::info!(mac = %row.mac, waiting = installer.waiting, "retry requested");
    let machine = summary_of(app, &row.mac).await?;
    Ok(RetryResponse { machine, installer })
}

/// The machine's summary after a change (404 if it was deleted meanwhile).
async fn summary_of(app: &App, mac: &str) -> Result<MachineSummary, ApiError> {
    let no_events = EventPage::default();
    let m = mac.to_owned();
    let detail = app
        .store
        .read(move |tx| tx.detail(&m, &no_events))
        .await?
        .ok_or_else(|| vanished(mac))?;
    Ok(detail.summary)
}

/// What `landfall reinstall` prints (and the dashboard shows).
pub fn reinstall_text(s: &MachineSummary) -> String {
    format!(
        "{} ({}): {}; it installs on its next PXE boot",
        s.hostname.as_deref().unwrap_or("-"),
        s.mac,
        s.state
    )
}

/// What `landfall approve` prints (and the dashboard shows).
pub fn approve_text(s: &MachineSummary) -> String {
    format!(
        "{} ({}): identity approved and pinned; {}: it installs on its next PXE boot",
        s.hostname.as_deref().unwrap_or("-"),
        s.mac,
        s.state
    )
}

/// What `landfall retry` prints (and the dashboard shows): who will run
/// the retry, or that nobody is there to, and what to do then.
pub fn retry_text(r: &RetryResponse) -> String {
    let s = &r.machine;
    let name = s.hostname.as_deref().unwrap_or(&s.mac);
    let head = format!(
        "{} ({}): {}",
        s.hostname.as_deref().unwrap_or("-"),
        s.mac,
        s.state
    );
    if r.installer.waiting {
        return format!("{head}; the waiting installer runs again from the failed step");
    }
    let last = match &r.installer.last_wait_at {
        Some(t) => format!("its installer last asked for an answer at {t}"),
        None => "its installer never asked for an answer".to_owned(),
    };
    format!(
        "{head}, but no installer is waiting for it: {last}, so the agent stopped or the \
         machine rebooted. The retry stays requested in case the agent comes back; to start \
         over run `landfall reinstall {name}` and PXE-boot the machine"
    )
}

fn vanished(mac: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("machine {mac} vanished"))
}
