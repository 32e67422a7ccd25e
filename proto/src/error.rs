//! The error body of every 4xx/5xx answer of the server: a message for a
//! person and a stable code for a program (as dropshot's `HttpError` carries
//! `error_code`). Clients branch on the code, never on the message; the HTTP
//! status stays what it was.

use serde::{Deserialize, Serialize};

/// `{"error": "...", "code": "..."}`. A body from a server older than the
/// codes has none: it reads as [`ErrorCode::Unknown`], and a client falls
/// back to [`ErrorCode::from_status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub code: ErrorCode,
}

/// What went wrong, for a program. New codes may come: an older reader sees
/// them as `unknown` (`#[serde(other)]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401 on `hello`: the boot token is unknown or expired (the server does
    /// not tell the two apart); PXE-boot again for a fresh one.
    BootTokenInvalid,
    /// 403 on `hello`: the boot token was issued to a MAC the inventory lacks.
    BootTokenMacMismatch,
    /// 409 on `hello`: this boot token was already exchanged by another
    /// client (another nonce, or none). A security alarm: the server marked
    /// the machine `compromised` and revoked the attempt's secrets.
    BootTokenClaimed,
    /// 409 on `hello`: the machine's install attempt is alive (its agent was
    /// heard from moments ago) and another client says hello for the same
    /// MAC. A security alarm, as [`ErrorCode::BootTokenClaimed`].
    AttemptAlive,
    /// 409 on `hello`: the machine's identifying facts differ from those
    /// pinned at its first install; held until `landfall approve`.
    IdentityHeld,
    /// 409: the machine has no hostname and role to install.
    NoAssignment,
    /// 401: no agent token was sent.
    AgentTokenMissing,
    /// 401: the agent token is unknown or revoked (another boot of the
    /// machine said hello since and took the attempt over).
    AgentTokenInvalid,
    /// 403: the agent token belongs to another attempt than the one named.
    AttemptMismatch,
    /// 403 on `verify`: the attempt is no longer the machine's current one.
    AttemptSuperseded,
    /// 401: no verify token was sent.
    VerifyTokenMissing,
    /// 401: the verify token is unknown or replaced by a later hello.
    VerifyTokenInvalid,
    /// 401: no admin token was sent.
    AdminTokenMissing,
    /// 401: the admin token is wrong.
    AdminTokenInvalid,
    /// 502/503: Vault could not mint the attempt's wrapped secret_id.
    VaultUnavailable,
    /// 400: the request is malformed (the message names the field).
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409: the machine's state does not allow it (the message says why).
    Conflict,
    /// 413: too many events or checks in one request.
    PayloadTooLarge,
    /// 400 on `events`: a seq above [`crate::event::MAX_SEQ`]; 409 on a
    /// repeated `hello` whose attempt has stored seq `MAX_SEQ` (there is no
    /// next one): PXE-boot again for a new attempt.
    SeqOutOfRange,
    /// 413 on `events`: the attempt has stored as many events, or as many
    /// bytes of them, as the server keeps for one attempt (`[server]
    /// max_events_per_attempt`, `max_event_bytes_per_attempt`). Not
    /// retryable: the same attempt stays over its quota.
    EventQuotaExceeded,
    /// 416.
    RangeNotSatisfiable,
    /// 408, from a proxy.
    RequestTimeout,
    /// 429, from a proxy.
    TooManyRequests,
    /// 403 on the plain-HTTP listener of a server with TLS on: the agent
    /// and admin API are served over HTTPS only (the message names the URL).
    HttpsRequired,
    /// 500: the details are in the server's log.
    Internal,
    /// Another 5xx (a proxy, a server shutting down).
    Unavailable,
    /// A code this reader does not know, or none.
    #[default]
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The generic code of an HTTP status: what a server's answer without a
    /// code (older, or a proxy's) means.
    pub fn from_status(status: u16) -> Self {
        match status {
            // 415 and 422: a body that is not the expected JSON.
            400 | 415 | 422 => Self::BadRequest,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            416 => Self::RangeNotSatisfiable,
            429 => Self::TooManyRequests,
            500 => Self::Internal,
            501..=599 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    /// Trying the same request again later can help.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Internal
                | Self::Unavailable
                | Self::VaultUnavailable
                | Self::RequestTimeout
                | Self::TooManyRequests
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_a_code_and_a_newer_code_read() {
        let old: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(old.code, ErrorCode::Unknown);
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error":"x","code":"quota_exceeded"}"#).unwrap();
        assert_eq!(newer.code, ErrorCode::Unknown);
        let body = ErrorBody {
            error: "e".into(),
            code: ErrorCode::AgentTokenInvalid,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": "e", "code": "agent_token_invalid"})
        );
    }

    #[test]
    fn statuses_map_to_codes_and_retryability() {
        assert_eq!(ErrorCode::from_status(502), ErrorCode::Unavailable);
        assert!(ErrorCode::from_status(503).retryable());
        assert!(ErrorCode::from_status(429).retryable());
        assert!(!ErrorCode::from_status(401).retryable());
        assert!(!ErrorCode::from_status(409).retryable());
    }
}
