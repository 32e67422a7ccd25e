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

use super::{new_token, random_hex, token_hash, AgentAuth, ApiError, App, AppState, Json, Peer};
use crate::orchestrator::MintAccessors;
use crate::store::{
    now, Alarm, AlarmKind, AttemptRow, EventQuota, HelloInput, HelloOutcome, VaultMint, WaitCheck,
};
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
    Peer(client): Peer,
    Json(req): Json<HelloRequest>,
) -> Result<Json<HelloResponse>, ApiError> {
    let agent_token = new_token()?;
    let new_attempt_id = random_hex(16)?;
    let nonce_hash = req
        .nonce
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(token_hash);
    let outcome = {
        let app = app.clone();
        let boot_token_hash = token_hash(req.boot_token.trim());
        let agent_token_hash = token_hash(&agent_token);
        let new_attempt_id = new_attempt_id.clone();
        let agent_version = req.agent_version.clone();
        let protocol = req.protocol;
        let inventory = req.inventory.clone();
        let client = client.clone();
        let store = app.store.clone();
        store
            .write(move |tx| {
                tx.hello(&HelloInput {
                    boot_token_hash: &boot_token_hash,
                    agent_token_hash: &agent_token_hash,
                    new_attempt_id: &new_attempt_id,
                    agent_version: &agent_version,
                    protocol,
                    inventory: &inventory,
                    nonce_hash: nonce_hash.as_deref(),
                    client: &client,
                    alive_secs: i64::try_from(app.settings.agent_alive_secs).unwrap_or(i64::MAX),
                    pin_identity: &|role| app.settings.pin_identity(role),
                    now: now(),
                })
            })
            .await?
    };
    // Every refused hello is logged with the client's address too.
    match &outcome {
        HelloOutcome::BadToken => {
            tracing::warn!(%client, "agent hello refused: boot token unknown, expired or dead");
        }
        HelloOutcome::MacMismatch { token_mac } => {
            tracing::warn!(%client, mac = %token_mac, "agent hello refused: the token's MAC is not in the inventory");
        }
        HelloOutcome::NoAssignment { mac } => {
            tracing::warn!(%client, %mac, "agent hello refused: no assignment");
        }
        _ => {}
    }
    match outcome {
        HelloOutcome::Alarm(alarm) => Err(sound_alarm(&app, alarm, &client).await),
        HelloOutcome::IdentityHeld { mac, differences } => {
            tracing::warn!(%mac, %client, %differences, "hello held: the identity differs from the pinned one");
            app.machines_changed();
            Err(ApiError::coded(
                ErrorCode::IdentityHeld,
                StatusCode::CONFLICT,
                format!(
                    "machine {mac} is held: its identity differs from the one pinned at its first \
                     install ({differences}). An operator checks it and runs: landfall approve {mac}"
                ),
            ))
        }
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
                app.metrics.install_started(&assignment.role);
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
                %client,
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

/// A second claimant (the store already made the machine `compromised`):
/// revoke the attempts' Vault mints, log the alarm with both clients'
/// addresses, wake waiting agents, and answer the claimant with the alarm's
/// code. Whoever is the real agent gets the same answer and says so on its
/// console.
pub(crate) async fn sound_alarm(app: &AppState, alarm: Alarm, client: &str) -> ApiError {
    tracing::error!(
        mac = %alarm.mac,
        attempts = ?alarm.attempts,
        first_client = %alarm.first_client.as_deref().unwrap_or("-"),
        %client,
        "{}",
        alarm.message
    );
    revoke_mints(app, &alarm.mac, &alarm.revoke, "security alarm").await;
    // A waiting agent of the attempt must stop.
    app.machines_changed();
    let (code, what) = match alarm.kind {
        AlarmKind::TokenClaimed => (
            ErrorCode::BootTokenClaimed,
            "this boot token was already exchanged by another client",
        ),
        AlarmKind::AttemptAlive => (
            ErrorCode::AttemptAlive,
            "this machine's install attempt is alive and another client said hello for its MAC",
        ),
        AlarmKind::TakenOver => (
            ErrorCode::AttemptAlive,
            "another client took this machine's install over with a newer boot token while \
             this attempt's agent is alive",
        ),
    };
    ApiError::coded(
        code,
        StatusCode::CONFLICT,
        format!(
            "security alarm: {what}; machine {} is now compromised and the attempt's secrets \
             are revoked. An operator must investigate, then run: landfall reinstall {}",
            alarm.mac, alarm.mac
        ),
    )
}

/// Revoke Vault mints in Vault (they are already marked revoked in the
/// store). Failures are logged with the accessor (not a secret) for revoking
/// by hand.
async fn revoke_mints(app: &AppState, mac: &str, mints: &[VaultMint], why: &str) {
    for m in mints {
        let Some(orch) = &app.orchestrator else {
            tracing::error!(%mac, attempt = %m.attempt_id, secret_id_accessor = %m.secret_id_accessor, "{why}: a Vault secret_id to revoke, but the server has no [vault] any more; revoke it by hand");
            continue;
        };
        let accessors = MintAccessors {
            approle: m.approle.clone(),
            wrap_accessor: m.wrap_accessor.clone(),
            secret_id_accessor: m.secret_id_accessor.clone(),
        };
        match orch.revoke(&accessors).await {
            Ok(()) => tracing::info!(
                %mac,
                attempt = %m.attempt_id,
                secret_id_accessor = %m.secret_id_accessor,
                "{why}: wrapped Vault secret_id revoked"
            ),
            Err(e) => tracing::error!(
                %mac,
                attempt = %m.attempt_id,
                secret_id_accessor = %m.secret_id_accessor,
                "{why}: revoking a Vault secret_id failed ({e}); revoke it by hand"
            ),
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
    super::verify::mint_token(app, attempt_id, assignment).await?;
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
    // A retried hello or a granted retry: the previous wrap token and its
    // secret_id are replaced.
    let previous = {
        let attempt_id = attempt_id.to_owned();
        app.store
            .write(move |tx| tx.take_vault_mints(&attempt_id, now()))
            .await?
    };
    revoke_mints(app, mac, &previous, "a new mint replaces it").await;
    match orch
        .mint(
            attempt_id,
            role_vault,
            &assignment.hostname,
            &assignment.role,
        )
        .await
    {
        Ok(minted) => {
            if let Some(a) = &minted.accessors {
                let mint = VaultMint {
                    attempt_id: attempt_id.to_owned(),
                    approle: a.approle.clone(),
                    wrap_accessor: a.wrap_accessor.clone(),
                    secret_id_accessor: a.secret_id_accessor.clone(),
                };
                let added = {
                    let mint = mint.clone();
                    app.store
                        .write(move |tx| tx.add_vault_mint(&mint, now()))
                        .await?
                };
                if !added {
                    // An alarm killed the attempt while we minted.
                    revoke_mints(app, mac, &[mint], "security alarm").await;
                    return Err(ApiError::coded(
                        ErrorCode::BootTokenClaimed,
                        StatusCode::CONFLICT,
                        format!("security alarm: machine {mac} was marked compromised while this answer was prepared"),
                    ));
                }
            }
            assignment.vault = Some(minted.assignment);
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
    Json(mut req): Json<EventsRequest>,
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
    let stored = {
        let attempt = attempt.clone();
        // The events go back to the feed after the store: shared, not copied.
        let events = std::sync::Arc::new(std::mem::take(&mut req.events));
        let stored = {
            let events = events.clone();
            app.store
                .write(move |tx| tx.store_events(&attempt, &events, now(), quota))
                .await?
        };
        req.events = std::sync::Arc::try_unwrap(events).unwrap_or_else(|a| (*a).clone());
        stored
    };
    let stored = match stored {
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
    app.metrics.events_stored(stored.inserted);
    if let Some(state) = stored.new_state {
        tracing::info!(mac = %attempt.mac, attempt = %attempt.id, %state, "install attempt ended");
        super::metrics::install_ended(&app, &attempt.mac, state, &req.events).await;
    }
    tracing::debug!(
        mac = %attempt.mac,
        attempt = %attempt.id,
        received = req.events.len(),
        inserted = stored.inserted,
        acked_seq = stored.acked_seq,
        "events"
    );
    if stored.inserted > 0 || stored.new_state.is_some() {
        app.feed.publish(
            &attempt.mac,
            &attempt.id,
            req.events,
            stored.new_state.is_some(),
        );
    }
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
    let _noted = WaitNoted::begin(&app, &attempt.id, held).await?;
    loop {
        // Registered before looking, so a change made while we look still wakes us.
        let changed = app.changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let check = {
            let attempt = attempt.clone();
            app.store.read(move |tx| tx.wait_check(&attempt)).await?
        };
        match check {
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
    async fn begin(app: &'a App, attempt_id: &'a str, held: Duration) -> Result<Self, ApiError> {
        let now = now();
        let id = attempt_id.to_owned();
        app.store
            .write(move |tx| tx.note_wait(&id, now, now + held.as_secs() as i64))
            .await?;
        Ok(Self { app, attempt_id })
    }
}

impl Drop for WaitNoted<'_> {
    fn drop(&mut self) {
        let now = now();
        let id = self.attempt_id.to_owned();
        // Not awaited (a drop cannot): the writer records it soon after.
        self.app
            .store
            .write_detached("recording the end of a wait", move |tx| {
                tx.note_wait(&id, now, now)
            });
    }
}

/// Grant a retry to `attempt`: the assignment rebuilt from the current
/// config with fresh tokens (as hello builds it), then the machine back to
/// `installing`. `None` when the machine is no longer waiting for one.
/// Minting trouble (Vault) answers its error and leaves `retry_requested`, so
/// the agent's next wait tries again.
async fn grant_retry(app: &AppState, attempt: &AttemptRow) -> Result<Option<Assignment>, ApiError> {
    let _one_at_a_time = app.retry_lock.lock().await;
    let check = {
        let attempt = attempt.clone();
        app.store.read(move |tx| tx.wait_check(&attempt)).await?
    };
    let WaitCheck::Retry(row) = check else {
        return Ok(None);
    };
    let from = row.state;
    let Some(mut assignment) = crate::boot::current_assignment(app, &attempt.mac)
        .await?
        .or_else(|| row.assignment())
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
    let resumed = {
        let (mac, id, a) = (attempt.mac.clone(), attempt.id.clone(), assignment.clone());
        app.store
            .write(move |tx| tx.resume_attempt(&mac, &id, &a, now()))
            .await?
    };
    if !resumed {
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
