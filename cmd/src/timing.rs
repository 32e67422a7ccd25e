//! Where a process's time goes: wall time during which it waits on
//! something outside itself (a program started through [`crate::Cmd`], for
//! the agent also the server's `hello`, Vault, the technician typing a
//! passphrase), as opposed to its own work. Overlapping waits (disks
//! prepared in parallel) count once: the clock runs while at least one wait
//! is open.
//!
//! The runner opens a wait around every program it runs; the agent's
//! pipeline reads [`waited`] before and after each step (its `timing`
//! module adds CPU time and reports both, docs/protocol.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stopwatch that runs while at least one wait is open.
pub struct Clock(Mutex<State>);

struct State {
    open: usize,
    since: Option<Instant>,
    total: Duration,
}

/// The process's one clock.
static CLOCK: Clock = Clock::new();

/// An open wait; the clock stops when the last one is dropped.
#[must_use = "the wait ends when this is dropped"]
pub struct Waiting<'a>(&'a Clock);

impl Clock {
    pub const fn new() -> Self {
        Self(Mutex::new(State {
            open: 0,
            since: None,
            total: Duration::ZERO,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn waiting(&self) -> Waiting<'_> {
        let mut s = self.state();
        if s.open == 0 {
            s.since = Some(Instant::now());
        }
        s.open += 1;
        Waiting(self)
    }

    /// Total time waited so far (including the waits open now).
    pub fn waited(&self) -> Duration {
        let s = self.state();
        s.total + s.since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.open -= 1;
        if s.open == 0 {
            if let Some(t) = s.since.take() {
                s.total += t.elapsed();
            }
        }
    }
}

/// Start a wait on something outside this process.
pub fn waiting() -> Waiting<'static> {
    CLOCK.waiting()
}

/// Total time this process has waited on the outside so far.
pub fn waited() -> Duration {
    CLOCK.waited()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_waits_count_once_and_gaps_not_at_all() {
        let c = Clock::new();
        let t0 = Instant::now();
        let a = c.waiting();
        let b = c.waiting();
        std::thread::sleep(Duration::from_millis(40));
        drop(a);
        std::thread::sleep(Duration::from_millis(40));
        drop(b);
        let open_for = t0.elapsed();
        let after_waits = c.waited();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.waited(), after_waits, "no wait open: the clock stands");
        assert!(after_waits >= Duration::from_millis(80), "{after_waits:?}");
        // Counted twice it would be about 120 ms of an 80 ms window.
        assert!(
            after_waits <= open_for,
            "counted twice: {after_waits:?} > {open_for:?}"
        );
        let _c = c.waiting();
        std::thread::sleep(Duration::from_millis(10));
        assert!(c.waited() > after_waits, "an open wait counts while open");
    }
}
