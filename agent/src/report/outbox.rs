//! The outbox: every event gets the next `seq`, is kept until the server has
//! acknowledged it, and is resent with capped backoff in the meantime, so a
//! server restart or a network cut loses nothing. Events recorded before the
//! agent has an attempt (detect, register) wait until [`Outbox::bind`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use landfall_proto::{Event, EventKind, EventsRequest, Step};
use tokio::sync::{watch, Notify};

use super::Client;
use crate::retry::Retry;

/// At most this many events per request.
const BATCH: usize = 200;

#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    acked: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    pending: VecDeque<Event>,
    binding: Option<Binding>,
    last_error: Option<String>,
    /// Where the pending events are kept across an agent restart.
    file: Option<std::path::PathBuf>,
    /// Events at the front of `pending` left by the agent before this one,
    /// and the attempt they belong to.
    restored: usize,
    restored_attempt: Option<String>,
}

/// The outbox file: the events not yet acknowledged.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    attempt_id: Option<String>,
    pending: Vec<Event>,
}

impl State {
    /// Rewrite the file (atomically); a failure is logged, the events stay in memory.
    fn save(&self) {
        let Some(path) = &self.file else { return };
        let saved = Saved {
            attempt_id: self.binding.as_ref().map(|b| b.attempt_id.clone()),
            pending: self.pending.iter().cloned().collect(),
        };
        let r = serde_json::to_vec(&saved)
            .map_err(anyhow::Error::new)
            .and_then(|b| crate::disk::journal::write_atomic(path, &b));
        if let Err(e) = r {
            tracing::warn!("keeping the outbox in {}: {e:#}", path.display());
        }
    }
}

#[derive(Clone)]
struct Binding {
    client: Client,
    attempt_id: String,
    token: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    next_seq: 1,
                    ..Default::default()
                }),
                wake: Notify::new(),
                acked: watch::channel(0).0,
            }),
        }
    }

    /// An outbox kept in `path` too: the events a killed agent had not got
    /// acknowledged are sent by the next one (the server stores each seq once).
    pub fn persistent(path: std::path::PathBuf) -> Self {
        let ob = Self::new();
        {
            let mut st = ob.state();
            if let Ok(text) = std::fs::read(&path) {
                match serde_json::from_slice::<Saved>(&text) {
                    Ok(saved) => {
                        st.restored = saved.pending.len();
                        st.restored_attempt = saved.attempt_id;
                        st.next_seq = saved.pending.last().map_or(1, |e| e.seq + 1);
                        st.pending = saved.pending.into();
                    }
                    Err(e) => tracing::warn!("ignoring the outbox {}: {e}", path.display()),
                }
            }
            st.file = Some(path);
        }
        ob
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an event; it is sent as soon as the outbox is bound.
    pub fn push(
        &self,
        step: Step,
        kind: EventKind,
        message: String,
        progress: Option<f32>,
        data: Option<serde_json::Value>,
    ) -> Event {
        let mut st = self.state();
        let ev = Event {
            seq: st.next_seq,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            step,
            kind,
            progress,
            message,
            data,
        };
        st.next_seq += 1;
        st.pending.push_back(ev.clone());
        st.save();
        drop(st);
        self.shared.wake.notify_one();
        ev
    }

    /// Attach the attempt and start sending in the background (once).
    /// `first_seq` is the server's `next_seq`: the events recorded before the
    /// attempt was known (never sent) are numbered from it, so an agent that
    /// restarted mid-attempt continues after the events the server already has.
    pub fn bind(&self, client: Client, attempt_id: String, token: String, first_seq: u64) {
        let first = {
            let mut st = self.state();
            let first = st.binding.is_none();
            if first {
                // Left by the agent before this one: of another attempt, or
                // already stored by the server (below its next seq): dropped.
                let restored = std::mem::take(&mut st.restored);
                // Events recorded before a bind are this boot's, whose token
                // gives the same attempt.
                let same = st
                    .restored_attempt
                    .as_deref()
                    .is_none_or(|a| a == attempt_id);
                let old: Vec<Event> = st.pending.drain(..restored).collect();
                for ev in old.into_iter().rev() {
                    if same && ev.seq >= first_seq {
                        st.pending.push_front(ev);
                    }
                }
                let mut seq = first_seq.max(1);
                for ev in st.pending.iter_mut() {
                    ev.seq = seq;
                    seq += 1;
                }
                st.next_seq = seq;
            }
            st.binding = Some(Binding {
                client,
                attempt_id,
                token,
            });
            st.save();
            first
        };
        if first {
            tokio::spawn(self.clone().send_loop());
        }
        self.shared.wake.notify_one();
    }

    pub fn is_bound(&self) -> bool {
        self.state().binding.is_some()
    }

    /// The highest seq the server has acknowledged.
    pub fn acked_seq(&self) -> u64 {
        *self.shared.acked.borrow()
    }

    /// The seq of the last event pushed (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    async fn send_loop(self) {
        let backoff = Retry {
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(5),
            max_tries: None,
        };
        let mut failures = 0u32;
        loop {
            let (binding, batch) = {
                let st = self.state();
                let b = st.binding.clone().expect("send loop runs only when bound");
                (
                    b,
                    st.pending.iter().take(BATCH).cloned().collect::<Vec<_>>(),
                )
            };
            if batch.is_empty() {
                // Woken by push/bind, or every 2 s as a safety net.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.shared.wake.notified()).await;
                continue;
            }
            let req = EventsRequest {
                attempt_id: binding.attempt_id.clone(),
                events: batch,
            };
            match binding.client.events(&binding.token, &req).await {
                Ok(resp) => {
                    failures = 0;
                    let mut st = self.state();
                    while st.pending.front().is_some_and(|e| e.seq <= resp.acked_seq) {
                        st.pending.pop_front();
                    }
                    st.save();
                    st.last_error = None;
                    drop(st);
                    self.shared.acked.send_if_modified(|a| {
                        let grew = resp.acked_seq > *a;
                        *a = (*a).max(resp.acked_seq);
                        grew
                    });
                }
                Err(e) => {
                    failures += 1;
                    let d = backoff.delay_before(failures + 1);
                    tracing::warn!("sending events failed (try {failures}, next in {d:?}): {e}");
                    self.state().last_error = Some(e.to_string());
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Wait until every event pushed so far is acknowledged, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        let target = self.last_seq();
        let mut rx = self.shared.acked.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= target)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let st = self.state();
                let server = st
                    .binding
                    .as_ref()
                    .map(|b| b.client.base().to_owned())
                    .unwrap_or_else(|| "the server".into());
                anyhow::bail!(
                    "{} event(s) not acknowledged by {server} after {}s (acked up to seq {}); last error: {}",
                    st.pending.len(),
                    timeout.as_secs(),
                    self.acked_seq(),
                    st.last_error.as_deref().unwrap_or("none")
                )
            }
        }
    }
}
