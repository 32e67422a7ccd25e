//! The event retention task: at start and then hourly, the events of
//! attempts over for longer than `[server] event_retention` are deleted
//! (the store records it on each attempt), through the store's write path
//! (its writer thread, never the async workers), a batch a transaction.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::store::{now, Pruned};

/// How often the old events are looked for.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Attempts pruned per write transaction.
const BATCH: u64 = 100;

/// The task, or `None` when events are kept forever.
pub fn start(app: AppState, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let keep = app.settings.event_retention?;
    Some(tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                break;
            }
            let t = now();
            let cutoff = t.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
            match prune(&app, cutoff, t).await {
                Ok(p) if p.attempts > 0 => tracing::info!(
                    attempts = p.attempts,
                    events = p.events,
                    "event retention: deleted the events of attempts over for longer than \
                     server.event_retention"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("event retention: {e:#}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                r = stop.changed() => if r.is_err() { break },
            }
        }
    }))
}

/// Every batch until one prunes nothing.
async fn prune(app: &AppState, cutoff: i64, t: i64) -> anyhow::Result<Pruned> {
    let mut total = Pruned::default();
    loop {
        let p = app
            .store
            .write(move |tx| tx.prune_events(cutoff, t, BATCH))
            .await?;
        if p.attempts == 0 {
            return Ok(total);
        }
        total.attempts += p.attempts;
        total.events += p.events;
    }
}
