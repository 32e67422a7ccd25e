//! `POST /api/v1/agent/hello`, `POST /api/v1/agent/events` and
//! `POST /api/v1/agent/wait`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use landfall_proto::event::MAX_SEQ;
use landfall_proto::{
    Assignment, ErrorCode, EventsRequest, EventsResponse, HelloRequest, HelloResponse, WaitAction,
    WaitRequest, WaitResponse, PROTOCOL_VERSION,
};

use super::{new_token, random_hex, token_hash, AgentAuth, ApiError, App, AppState, Json};
use crate::store::{now, AttemptRow, EventQuota, HelloInput, HelloOutcome, WaitCheck};
use crate::text::Untrusted;

/// Most events accepted in one request.
pub const MAX_EVENTS: usize = 1000;

/// Longest a `wait` is held before it answers `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Seconds after its last wait ended that an agent still counts as waiting:
/// it asks again at once, or after a short back-off when the server was away.
pub const WAIT_GRACE_SECS: i64 = 30;

/// How often a held `wait` looks at the database even when nothing in this
/// process said a machine changed (a change made by another server process
/// on the same database).
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Exchange the one-time boot token for an attempt and an agent token.
pub async fn hello(
    State(app): State<AppState>,
    Json(req): Json<HelloRequest>,
) -> Result<Json<HelloResponse>, ApiError> {
    let agent_token = new_token()?;
    let new_attempt_id = random_hex(16)?;
    let outcome = app.store.hello(&HelloInput {
        boot_token_hash: &token_hash(req.boot_token.trim()),
        agent_token_hash: &token_hash(&agent_token),
        new_attempt_id: &new_attempt_id,
        agent_version: &req.agent_version,
        protocol: req.protocol,
        inventory: &req.inventory,
        now: now(),
    })?;
    match outcome {
        HelloOutcome::BadToken => Err(ApiError::coded(
            ErrorCode::BootTokenInvalid,
            StatusCode::UNAUTHORIZED,
            "boot token unknown or expired; PXE-boot the machine again to get a fresh one",
        )),
        HelloOutcome::MacMismatch { token_mac } => Err(ApiError::coded(
            ErrorCode::BootTokenMacMismatch,
            StatusCode::FORBIDDEN,
            format!(
                "this boot token was issued to MAC {token_mac}, which is not among the NICs in the inventory"
            ),
        )),
        HelloOutcome::NoAssignment { mac } => Err(ApiError::coded(
            ErrorCode::NoAssignment,
            StatusCode::CONFLICT,
            format!("machine {mac} has no hostname and role; list it in [[machines]] of landfall.toml"),
        )),
        HelloOutcome::Ok {
            attempt_id,
            mac,
            mut assignment,
            retried,
            next_seq,
        } => {
            if next_seq > MAX_SEQ {
                return Err(ApiError::coded(
                    ErrorCode::SeqOutOfRange,
                    StatusCode::CONFLICT,
                    format!(
                        "attempt {attempt_id} has stored its last event seq ({MAX_SEQ}); \
                         PXE-boot the machine again for a new attempt"
                    ),
                ));
            }
            issue_assignment(&app, &attempt_id, &mac, &mut assignment).await?;
            if !retried {
                // A waiting agent of the previous attempt must stop.
                app.machines_changed();
            }
            if req.protocol > PROTOCOL_VERSION {
                tracing::warn!(
                    %mac,
                    protocol = req.protocol,
                    "agent speaks a newer protocol than this server ({PROTOCOL_VERSION}); answering in v{PROTOCOL_VERSION}"
                );
            }
            tracing::info!(
                %mac,
                attempt = %attempt_id,
                hostname = %assignment.hostname,
                role = %assignment.role,
                agent_version = %Untrusted(&req.agent_version),
                retried,
                "agent hello"
            );
            Ok(Json(HelloResponse {
                attempt_id,
                agent_token,
                assignment: *assignment,
                next_seq,
            }))
        }
    }
}

/// Make a stored assignment the one an agent gets (hello, and a granted
/// retry): fill it from the current config (`Settings::complete`), mint the
/// attempt's verify token (replacing the previous one) and, with Vault, a
/// fresh wrapped `secret_id`.
async fn issue_assignment(
    app: &AppState,
    attempt_id: &str,
    mac: &str,
    assignment: &mut landfall_proto::Assignment,
) -> Result<(), ApiError> {
    app.settings.complete(assignment, mac);
    super::verify::mint_token(app, attempt_id, assignment)?;
    mint_vault(app, attempt_id, mac, assignment).await
}

/// With `[roles.NAME.vault]`: mint this attempt's wrapped `secret_id`. Every
/// hello mints a fresh one (a retried hello means the agent lost the answer,
/// and the old wrap token is revoked). Vault trouble answers 503 (unreachable)
/// or 502 (Vault refused); the agent retries hello on both.
async fn mint_vault(
    app: &AppState,
    attempt_id: &str,
    mac: &str,
    assignment: &mut landfall_proto::Assignment,
) -> Result<(), ApiError> {
    let Some(role_vault) = app
        .settings
        .roles
        .get(&assignment.role)
        .and_then(|r| r.vault.as_ref())
    else {
        return Ok(());
    };
    let Some(orch) = &app.orchestrator else {
        return Err(ApiError::internal(format!(
            "role {} has a vault section but the server has no [vault]",
            assignment.role
        )));
    };
    match orch
        .mint(
            attempt_id,
            role_vault,
            &assignment.hostname,
            &assignment.role,
        )
        .await
    {
        Ok(v) => {
            assignment.vault = Some(v);
            Ok(())
        }
        Err(e) => {
            tracing::error!(%mac, attempt = %attempt_id, error = %e, "minting the wrapped Vault secret_id failed");
            let status = if e.unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            Err(ApiError::coded(
                ErrorCode::VaultUnavailable,
                status,
                format!("cannot mint this machine's Vault secret_id: {e}"),
            ))
        }
    }
}

/// 403 unless the request names the attempt its agent token belongs to.
fn same_attempt(attempt: &crate::store::AttemptRow, attempt_id: &str) -> Result<(), ApiError> {
    if attempt_id == attempt.id {
        return Ok(());
    }
    Err(ApiError::coded(
        ErrorCode::AttemptMismatch,
        StatusCode::FORBIDDEN,
        format!(
            "this agent token belongs to attempt {}, not {attempt_id:?}",
            attempt.id
        ),
    ))
}

/// Store a batch of events; answer the highest gap-free seq.
pub async fn events(
    State(app): State<AppState>,
    AgentAuth(attempt): AgentAuth,
    Json(req): Json<EventsRequest>,
) -> Result<Json<EventsResponse>, ApiError> {
    same_attempt(&attempt, &req.attempt_id)?;
    if req.events.len() > MAX_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request; send at most {MAX_EVENTS}",
                req.events.len()
            ),
        ));
    }
    if let Some((i, _)) = req.events.iter().enumerate().find(|(_, e)| e.seq == 0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("events[{i}].seq is 0; seq starts at 1"),
        ));
    }
    if let Some((i, e)) = req.events.iter().enumerate().find(|(_, e)| e.seq > MAX_SEQ) {
        return Err(ApiError::coded(
            ErrorCode::SeqOutOfRange,
            StatusCode::BAD_REQUEST,
            format!(
                "events[{i}].seq is {}, above the highest the server accepts ({MAX_SEQ})",
                e.seq
            ),
        ));
    }
    let limits = app.settings.limits;
    let quota = EventQuota {
        max_events: limits.max_events_per_attempt,
        max_bytes: limits.max_event_bytes_per_attempt,
    };
    let stored = match app
        .store
        .store_events(&attempt, &req.events, now(), quota)?
    {
        Ok(s) => s,
        Err(over) => {
            tracing::warn!(
                mac = %attempt.mac,
                attempt = %attempt.id,
                events = over.events,
                bytes = over.bytes,
                "events refused: the attempt's event quota is used up"
            );
            return Err(ApiError::coded(
                ErrorCode::EventQuotaExceeded,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "attempt {} has stored {} events ({} bytes); the server keeps at most {} events \
                     and {} bytes per attempt ([server] max_events_per_attempt, \
                     max_event_bytes_per_attempt)",
                    attempt.id,
                    over.events,
                    over.bytes,
                    quota.max_events,
                    quota.max_bytes
                ),
            ));
        }
    };
    if let Some(state) = stored.new_state {
        tracing::info!(mac = %attempt.mac, attempt = %attempt.id, %state, "install attempt ended");
    }
    tracing::debug!(
        mac = %attempt.mac,
        attempt = %attempt.id,
        received = req.events.len(),
        inserted = stored.inserted,
        acked_seq = stored.acked_seq,
        "events"
    );
    Ok(Json(EventsResponse {
        acked_seq: stored.acked_seq,
    }))
}

/// `POST /api/v1/agent/wait`: a long poll. The agent of a failed attempt
/// asks what the operator wants; the answer comes as soon as there is one
/// (`retry` with a fresh assignment, or `stop`), else `wait` after
/// `min(timeout_secs, 60)` seconds.
pub async fn wait(
    State(app): State<AppState>,
    AgentAuth(attempt): AgentAuth,
    Json(req): Json<WaitRequest>,
) -> Result<Json<WaitResponse>, ApiError> {
    same_attempt(&attempt, &req.attempt_id)?;
    let held = Duration::from_secs(req.timeout_secs).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + held;
    let _noted = WaitNoted::begin(&app, &attempt.id, held)?;
    loop {
        // Registered before looking, so a change made while we look still wakes us.
        let changed = app.changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match app.store.wait_check(&attempt)? {
            WaitCheck::Stop => {
                tracing::info!(mac = %attempt.mac, attempt = %attempt.id, "wait: stop");
                return Ok(Json(WaitResponse {
                    action: WaitAction::Stop,
                    assignment: None,
                }));
            }
            WaitCheck::Retry(_) => {
                if let Some(assignment) = grant_retry(&app, &attempt).await? {
                    return Ok(Json(WaitResponse {
                        action: WaitAction::Retry,
                        assignment: Some(assignment),
                    }));
                }
                // The machine moved on meanwhile: look again.
                continue;
            }
            WaitCheck::Wait => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || app.is_stopping() {
            return Ok(Json(WaitResponse {
                action: WaitAction::Wait,
                assignment: None,
            }));
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep((deadline - now).min(WAIT_POLL)) => {}
        }
    }
}

/// Records in the store that an attempt's agent is waiting: at the start
/// (held until the deadline at most) and when the wait ends, answered or
/// dropped with its connection, so `landfall retry` can tell whether anybody
/// is there to pick the retry up.
struct WaitNoted<'a> {
    app: &'a App,
    attempt_id: &'a str,
}

impl<'a> WaitNoted<'a> {
    fn begin(app: &'a App, attempt_id: &'a str, held: Duration) -> Result<Self, ApiError> {
        let now = now();
        app.store
            .note_wait(attempt_id, now, now + held.as_secs() as i64)?;
        Ok(Self { app, attempt_id })
    }
}

impl Drop for WaitNoted<'_> {
    fn drop(&mut self) {
        let now = now();
        if let Err(e) = self.app.store.note_wait(self.attempt_id, now, now) {
            tracing::warn!(attempt = %self.attempt_id, "recording the end of a wait: {e:#}");
        }
    }
}

/// Grant a retry to `attempt`: the assignment rebuilt from the current
/// config with fresh tokens (as hello builds it), then the machine back to
/// `installing`. `None` when the machine is no longer waiting for one.
/// Minting trouble (Vault) answers its error and leaves `retry_requested`, so
/// the agent's next wait tries again.
async fn grant_retry(app: &AppState, attempt: &AttemptRow) -> Result<Option<Assignment>, ApiError> {
    let _one_at_a_time = app.retry_lock.lock().await;
    let WaitCheck::Retry(row) = app.store.wait_check(attempt)? else {
        return Ok(None);
    };
    let from = row.state;
    let Some(mut assignment) =
        crate::boot::current_assignment(app, &attempt.mac)?.or_else(|| row.assignment())
    else {
        return Err(ApiError::coded(
            ErrorCode::NoAssignment,
            StatusCode::CONFLICT,
            format!(
                "machine {} has no hostname and role; list it in [[machines]] of landfall.toml",
                attempt.mac
            ),
        ));
    };
    issue_assignment(app, &attempt.id, &attempt.mac, &mut assignment).await?;
    if !app
        .store
        .resume_attempt(&attempt.mac, &attempt.id, &assignment, now())?
    {
        return Ok(None);
    }
    tracing::info!(
        mac = %attempt.mac,
        attempt = %attempt.id,
        hostname = %assignment.hostname,
        %from,
        "wait: retry granted, the agent runs again"
    );
    Ok(Some(assignment))
}
