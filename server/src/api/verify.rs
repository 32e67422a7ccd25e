//! `POST /api/v1/agent/verify`: the installed system's first-boot report.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use landfall_proto::verify::{CheckResult, VerifyRequest, VerifyResponse};
use landfall_proto::{Assignment, ErrorCode, SecretString};

use super::{bearer, new_token, token_hash, ApiError, AppState, Json};
use crate::store::{now, VerifyAuth, VerifyOutcome};
use crate::text::Untrusted;

/// Most checks accepted in one report.
pub const MAX_CHECKS: usize = 200;
/// Longest check name and detail kept (longer ones are cut).
const MAX_NAME: usize = 100;
const MAX_DETAIL: usize = 1000;

/// Mint this attempt's verify token into the assignment (every hello, a
/// retried one included, replaces the previous token).
pub async fn mint_token(
    app: &AppState,
    attempt_id: &str,
    assignment: &mut Assignment,
) -> Result<(), ApiError> {
    let token = new_token()?;
    let (id, hash) = (attempt_id.to_owned(), token_hash(&token));
    app.store
        .write(move |tx| tx.set_verify_token(&id, &hash))
        .await?;
    assignment.verify_token = Some(SecretString::new(token));
    Ok(())
}

/// The request carries a verify token; holds its attempt.
pub struct VerifyTokenAuth(pub VerifyAuth);

impl FromRequestParts<AppState> for VerifyTokenAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(t) = bearer(parts) else {
            return Err(ApiError::coded(
                ErrorCode::VerifyTokenMissing,
                StatusCode::UNAUTHORIZED,
                "missing verify token: send Authorization: Bearer <token from /etc/landfall/verify.json>",
            ));
        };
        let hash = token_hash(t);
        match app
            .store
            .read(move |tx| tx.attempt_by_verify_token(&hash))
            .await?
        {
            Some(a) => Ok(Self(a)),
            None => Err(ApiError::coded(
                ErrorCode::VerifyTokenInvalid,
                StatusCode::UNAUTHORIZED,
                "verify token unknown or replaced by a later hello; reinstall the machine to get a new one",
            )),
        }
    }
}

pub async fn verify(
    State(app): State<AppState>,
    VerifyTokenAuth(auth): VerifyTokenAuth,
    Json(req): Json<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    if let Some(a) = &req.attempt_id {
        if *a != auth.attempt_id {
            return Err(ApiError::coded(
                ErrorCode::AttemptMismatch,
                StatusCode::FORBIDDEN,
                format!(
                    "this verify token belongs to attempt {}, not {a:?}",
                    auth.attempt_id
                ),
            ));
        }
    }
    if req.checks.len() > MAX_CHECKS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} checks in one report; send at most {MAX_CHECKS}",
                req.checks.len()
            ),
        ));
    }
    if let Some(i) = req.checks.iter().position(|c| c.name.trim().is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("checks[{i}].name is empty"),
        ));
    }
    let checks: Vec<CheckResult> = req
        .checks
        .into_iter()
        .map(|c| CheckResult {
            name: cut(&c.name, MAX_NAME),
            ok: c.ok,
            detail: cut(&c.detail, MAX_DETAIL),
            millis: c.millis,
        })
        .collect();
    let hostname = cut(&req.hostname, MAX_NAME);
    let outcome = {
        let (auth, hostname, checks) = (auth.clone(), hostname.clone(), checks.clone());
        app.store
            .write(move |tx| tx.record_verify(&auth, &hostname, &checks, now()))
            .await?
    };
    match outcome {
        VerifyOutcome::Done(state) => {
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            tracing::info!(
                mac = %auth.mac,
                attempt = %auth.attempt_id,
                hostname = %Untrusted(&hostname),
                %state,
                checks = checks.len(),
                failed = %Untrusted(&failed.join(",")),
                "first-boot verification"
            );
            app.feed.changed();
            Ok(Json(VerifyResponse { state }))
        }
        VerifyOutcome::NotCurrent => Err(ApiError::coded(
            ErrorCode::AttemptSuperseded,
            StatusCode::FORBIDDEN,
            format!(
                "attempt {} is no longer the machine's current install; its verify token is void",
                auth.attempt_id
            ),
        )),
        VerifyOutcome::WrongState(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "machine {} is {state}; verification applies to installed, ready or degraded machines",
                auth.mac
            ),
        )),
    }
}

/// At most `max` characters, control characters replaced.
fn cut(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
