//! Reporting: every step's events go to the server (through the [`outbox`]),
//! to the technician's console ([`console`]) and to the log (tracing).

pub mod client;
pub mod console;
pub mod failure;
pub mod nonce;
pub mod outbox;
pub mod tls;

use std::sync::{Arc, Mutex};

use landfall_proto::{Event, EventKind, Step};

pub use client::{ApiError, Client};
pub use console::Console;
pub use outbox::Outbox;
pub use tls::ServerTrust;

/// Fans one event out to the outbox, the console and the log.
#[derive(Clone)]
pub struct Reporter {
    pub outbox: Outbox,
    pub console: Arc<Mutex<Console>>,
}

impl Reporter {
    pub fn new(outbox: Outbox, console: Console) -> Self {
        Self {
            outbox,
            console: Arc::new(Mutex::new(console)),
        }
    }

    /// Record an event. `message` and `data` must never contain a secret.
    pub fn emit(
        &self,
        step: Step,
        kind: EventKind,
        message: impl Into<String>,
        progress: Option<f32>,
        data: Option<serde_json::Value>,
    ) -> Event {
        let ev = self.outbox.push(step, kind, message.into(), progress, data);
        match kind {
            EventKind::Failed => tracing::error!(step = %step, "{}", ev.message),
            EventKind::Log | EventKind::Progress => {
                tracing::debug!(step = %step, kind = kind.as_str(), "{}", ev.message)
            }
            _ => tracing::info!(step = %step, kind = kind.as_str(), "{}", ev.message),
        }
        self.console().event(&ev);
        ev
    }

    pub fn console(&self) -> std::sync::MutexGuard<'_, Console> {
        // A panic while drawing must not stop the install: take the guard anyway.
        self.console.lock().unwrap_or_else(|p| p.into_inner())
    }
}
