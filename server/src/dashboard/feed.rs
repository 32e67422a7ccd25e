//! What the dashboard's live viewers are told, without asking the store:
//! the events of a watched machine as they are stored, and that some
//! machine's state changed. A leaf: it knows events and MACs, nothing of the
//! server (`App` holds one; the agent API publishes into it).
//!
//! Cheap for the writer: with nobody watching, a publish is one atomic
//! load; with viewers of the machine, one map lookup, the batch moved into
//! a bounded ring and a version bumped; it never waits for a reader. The
//! reader of a machine is one: the dashboard's hub of that machine
//! (`live.rs`), which takes what is new a few times a second and renders it
//! once for all the people watching, so 100 viewers cost the event
//! ingestion nothing per viewer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use landfall_proto::{Event, EventKind};
use tokio::sync::watch;

/// Events kept per watched machine for its reader, of each kind: the
/// steps' events (what the step list is folded from; a reader further
/// behind than these catches up from the store), and output lines (`log`;
/// older ones are dropped without a word: the page shows only the last few
/// hundred, and every event is in the store).
pub const RING: usize = 4096;

pub struct Feed {
    watched: RwLock<HashMap<String, Arc<Watched>>>,
    /// Machines with at least one viewer (a publish with none returns at once).
    count: AtomicUsize,
    /// Bumped on every state change of any machine.
    changes: watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            watched: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            changes: watch::channel(0).0,
        }
    }
}

struct Watched {
    viewers: AtomicUsize,
    ring: Mutex<Ring>,
    /// The number of the newest event in `ring`.
    version: watch::Sender<u64>,
}

#[derive(Default)]
struct Ring {
    /// (number, attempt, event), numbered from 1 across both queues.
    steps: VecDeque<(u64, Arc<str>, Arc<Event>)>,
    lines: VecDeque<(u64, Arc<str>, Arc<Event>)>,
    /// The number of the newest steps' event dropped.
    dropped: u64,
    next: u64,
}

/// What a viewer took since its last look.
#[derive(Debug, Default)]
pub struct Taken {
    pub events: Vec<(Arc<str>, Arc<Event>)>,
    /// Steps' events were dropped from the ring before the viewer took
    /// them: it must read the store again. (Dropped output lines are not
    /// told.)
    pub lagged: bool,
}

/// Why [`Viewer::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Events,
    StateChanged,
    Timeout,
}

impl Feed {
    /// Events of `attempt` of `mac` were stored; `state_changed`: one of
    /// them ended the attempt.
    pub fn publish(&self, mac: &str, attempt: &str, events: Vec<Event>, state_changed: bool) {
        if state_changed {
            self.changed();
        }
        if self.count.load(Ordering::Relaxed) == 0 || events.is_empty() {
            return;
        }
        let Some(w) = self.read().get(mac).cloned() else {
            return;
        };
        let attempt: Arc<str> = attempt.into();
        let newest = {
            let mut ring = w.ring.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                ring.next += 1;
                let item = (ring.next, attempt.clone(), Arc::new(e));
                if item.2.kind == EventKind::Log {
                    ring.lines.push_back(item);
                } else {
                    ring.steps.push_back(item);
                }
            }
            let extra = ring.lines.len().saturating_sub(RING);
            ring.lines.drain(..extra);
            let extra = ring.steps.len().saturating_sub(RING);
            if extra > 0 {
                ring.dropped = ring.steps[extra - 1].0;
                ring.steps.drain(..extra);
            }
            ring.next
        };
        w.version.send_replace(newest);
    }

    /// Some machine's state changed (retry, reinstall, hello, verify, ...).
    pub fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// Start watching `mac`; watching ends when the viewer is dropped.
    pub fn watch(self: &Arc<Self>, mac: &str) -> Viewer {
        let w = {
            let mut map = self.write();
            let w = map
                .entry(mac.to_owned())
                .or_insert_with(|| {
                    self.count.fetch_add(1, Ordering::Relaxed);
                    Arc::new(Watched {
                        viewers: AtomicUsize::new(0),
                        ring: Mutex::new(Ring::default()),
                        version: watch::channel(0).0,
                    })
                })
                .clone();
            w.viewers.fetch_add(1, Ordering::Relaxed);
            w
        };
        let cursor = w.ring.lock().unwrap_or_else(|p| p.into_inner()).next;
        let mut version = w.version.subscribe();
        version.mark_unchanged();
        let mut changes = self.changes.subscribe();
        changes.mark_unchanged();
        Viewer {
            feed: self.clone(),
            mac: mac.to_owned(),
            watched: w,
            cursor,
            version,
            changes,
        }
    }

    /// How many machines have viewers now.
    pub fn watched_machines(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Watched>>> {
        self.watched.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Watched>>> {
        self.watched.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// One viewer of one machine.
pub struct Viewer {
    feed: Arc<Feed>,
    mac: String,
    watched: Arc<Watched>,
    cursor: u64,
    version: watch::Receiver<u64>,
    changes: watch::Receiver<u64>,
}

impl Viewer {
    /// Wait until new events or a state change, at most `timeout`.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> Wake {
        if self.changes.has_changed().unwrap_or(false) {
            return Wake::StateChanged;
        }
        if *self.version.borrow() != self.cursor {
            return Wake::Events;
        }
        tokio::select! {
            r = self.changes.changed() => {
                if r.is_ok() { Wake::StateChanged } else { Wake::Timeout }
            }
            r = self.version.changed() => {
                if r.is_ok() { Wake::Events } else { Wake::Timeout }
            }
            _ = tokio::time::sleep(timeout) => Wake::Timeout,
        }
    }

    /// Whether a state change happened since the last call (and forget it).
    pub fn take_state_change(&mut self) -> bool {
        let changed = self.changes.has_changed().unwrap_or(false);
        self.changes.mark_unchanged();
        changed
    }

    /// The events published since the last take.
    pub fn take(&mut self) -> Taken {
        self.version.mark_unchanged();
        let ring = self.watched.ring.lock().unwrap_or_else(|p| p.into_inner());
        let lagged = ring.dropped > self.cursor;
        let mut new: Vec<_> = [&ring.steps, &ring.lines]
            .into_iter()
            .flat_map(|q| q.range(q.partition_point(|e| e.0 <= self.cursor)..))
            .cloned()
            .collect();
        // In the order of arrival.
        new.sort_unstable_by_key(|e| e.0);
        let events = new.into_iter().map(|(_, a, e)| (a, e)).collect();
        self.cursor = ring.next;
        Taken { events, lagged }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let mut map = self.feed.write();
        if self.watched.viewers.fetch_sub(1, Ordering::Relaxed) == 1 {
            map.remove(&self.mac);
            self.feed.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::{EventKind, Step};

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            time: String::new(),
            step: Step::Install,
            kind: EventKind::Log,
            progress: None,
            message: format!("line {seq}"),
            data: None,
        }
    }

    #[tokio::test]
    async fn viewers_get_their_machines_events_and_lag_is_told() {
        let feed = Arc::new(Feed::default());
        // Nobody watches: nothing is kept.
        feed.publish("m1", "a", vec![ev(1)], false);
        let mut v = feed.watch("m1");
        let mut other = feed.watch("m2");
        assert_eq!(feed.watched_machines(), 2);
        feed.publish("m1", "a", vec![ev(2), ev(3)], false);
        assert_eq!(
            v.wait(std::time::Duration::from_secs(5)).await,
            Wake::Events
        );
        let t = v.take();
        assert!(!t.lagged);
        assert_eq!(
            t.events.iter().map(|e| e.1.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            other.wait(std::time::Duration::from_millis(10)).await,
            Wake::Timeout
        );
        assert!(other.take().events.is_empty());

        feed.publish(
            "m1",
            "a",
            (10..10 + RING as u64 + 5).map(ev).collect(),
            true,
        );
        assert_eq!(
            v.wait(std::time::Duration::from_secs(5)).await,
            Wake::StateChanged
        );
        assert!(v.take_state_change());
        // More output lines than the ring holds: the newest, and no word
        // of it (only the last lines are shown).
        let t = v.take();
        assert!(!t.lagged);
        assert_eq!(t.events.len(), RING);
        assert_eq!(t.events[0].1.seq, 15);

        // Steps' events and lines come in the order they arrived.
        let step = |seq: u64| Event {
            kind: EventKind::Progress,
            ..ev(seq)
        };
        feed.publish("m1", "a", vec![ev(20_000), step(20_001), ev(20_002)], false);
        let t = v.take();
        assert_eq!(
            t.events.iter().map(|e| e.1.seq).collect::<Vec<_>>(),
            vec![20_000, 20_001, 20_002]
        );
        // More steps' events than the ring holds: the reader must read
        // the store.
        feed.publish(
            "m1",
            "a",
            (30_000..30_000 + RING as u64 + 1).map(step).collect(),
            false,
        );
        let t = v.take();
        assert!(t.lagged, "more steps' events than the ring holds came in");
        assert_eq!(t.events.len(), RING);
        assert!(!v.take().lagged, "told once");

        drop(other);
        assert_eq!(feed.watched_machines(), 1);
        let v2 = feed.watch("m1");
        drop(v);
        assert_eq!(feed.watched_machines(), 1, "v2 still watches m1");
        drop(v2);
        assert_eq!(feed.watched_machines(), 0);
    }
}
