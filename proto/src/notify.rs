//! Webhook notifications: the JSON body the server POSTs to a third party
//! when a machine's state changes (`[[webhooks]]` in landfall.toml), and the
//! admin API's view of the deliveries (`GET /api/v1/notifications`).
//!
//! The body is signed: [`SIGNATURE_HEADER`] carries `sha256=` and the
//! lower-case hex HMAC-SHA256 of the exact body bytes, keyed with the
//! webhook's secret (docs/operator-guide.md, "Notifications").

use serde::{Deserialize, Serialize};

use crate::MachineState;

/// `sha256=HEX`: HMAC-SHA256 of the body with the webhook's secret.
pub const SIGNATURE_HEADER: &str = "X-Landfall-Signature";
/// The delivery's id: the same on every retry of one delivery.
pub const DELIVERY_HEADER: &str = "X-Landfall-Delivery";
/// What the body is: [`STATE_CHANGED`].
pub const EVENT_HEADER: &str = "X-Landfall-Event";
/// The event of a [`StateChange`] body.
pub const STATE_CHANGED: &str = "machine.state_changed";

/// The body of a webhook: one machine entered `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// The change's id: increasing, the same in every webhook's copy and on
    /// every retry (a receiver may drop a repeated id).
    pub id: u64,
    /// RFC 3339 UTC time of the change.
    pub time: String,
    pub machine: NotifiedMachine,
    pub state: MachineState,
    /// The state before (`None`: a machine seen for the first time).
    #[serde(default)]
    pub previous_state: Option<MachineState>,
    /// Why, for `failed`, `compromised`, `degraded` and `identity_held`.
    #[serde(default)]
    pub error: Option<String>,
    /// The install attempt the machine is on, when it has one.
    #[serde(default)]
    pub attempt_id: Option<String>,
    /// The machine's page on the dashboard (`BASE/ui/machines/NAME`), when
    /// the server knows its public URL (`server.public_url`).
    #[serde(default)]
    pub dashboard_url: Option<String>,
}

/// The machine of a [`StateChange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedMachine {
    pub mac: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet accepted by the receiver: tried again with backoff.
    Pending,
    /// The receiver answered 2xx; never sent again.
    Delivered,
    /// Given up (retried for the whole retry window, or the webhook was
    /// removed from the configuration).
    Failed,
    #[serde(other)]
    Unknown,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `GET /api/v1/notifications`: a state change for one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: u64,
    /// The [`StateChange::id`] it carries.
    pub change_id: u64,
    pub url: String,
    pub mac: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub state: MachineState,
    /// RFC 3339 time it was queued (the change's time).
    pub created_at: String,
    pub status: DeliveryStatus,
    /// Sends tried so far.
    pub attempts: u32,
    /// While pending: when it is sent next.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
    /// The HTTP status of the last answer, if there was one.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// Why the last send failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_from_a_newer_server_reads() {
        let b: StateChange = serde_json::from_str(
            r#"{"id":7,"time":"2026-01-01T00:00:00Z","machine":{"mac":"52:54:00:00:00:01"},
                "state":"repainted","previous_state":"ready","extra":1}"#,
        )
        .unwrap();
        assert_eq!(b.state, MachineState::Unknown);
        assert_eq!(b.previous_state, Some(MachineState::Ready));
        assert_eq!(b.dashboard_url, None);
    }
}
