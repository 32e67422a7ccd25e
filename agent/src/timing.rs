//! Where the agent's time goes: wall time during which it waits on something
//! outside itself (a program it started through [`crate::cmd::Cmd`], the
//! server's `hello`, Vault, the technician typing a passphrase), as opposed
//! to its own work. Overlapping waits (disks prepared in parallel) count once:
//! the clock runs while at least one wait is open.
//!
//! The pipeline reads [`waited`] and [`cpu`] before and after each step and
//! reports them in the terminal event (`data.timing`, docs/protocol.md).
//! Wall time minus waits is an upper bound of the agent's own share: it
//! still holds the kernel's work done in-process (mount, the partition
//! re-read, sync); CPU time is the agent's own work itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stopwatch that runs while at least one wait is open.
pub struct Clock(Mutex<State>);

struct State {
    open: usize,
    since: Option<Instant>,
    total: Duration,
}

/// The agent's one clock.
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

/// Start a wait on something outside the agent.
pub fn waiting() -> Waiting<'static> {
    CLOCK.waiting()
}

/// Total time the agent has waited on the outside so far.
pub fn waited() -> Duration {
    CLOCK.waited()
}

/// CPU time this process has used, all threads, not its children: the
/// agent's own work (user) and the kernel's work on its behalf (system:
/// syscalls, mount, page faults), whatever it waited on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub user: Duration,
    pub system: Duration,
}

impl Cpu {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// What was used since `earlier`.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

pub fn cpu() -> Cpu {
    use nix::sys::resource::{getrusage, UsageWho};
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec().max(0) as u64)
            + Duration::from_micros(tv.tv_usec().max(0) as u64)
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| Cpu {
            user: t(u.user_time()),
            system: t(u.system_time()),
        })
        .unwrap_or_default()
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

    #[test]
    fn cpu_time_counts_work() {
        // Other tests share this process, so only "it moves with work" holds.
        let c0 = cpu();
        let t0 = Instant::now();
        let mut x = 0u64;
        while cpu().since(c0).total() < Duration::from_millis(20) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "CPU time does not move"
            );
            for _ in 0..10_000 {
                x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(7));
            }
        }
        std::hint::black_box(x);
        assert!(cpu().since(c0).user > Duration::ZERO);
    }
}
