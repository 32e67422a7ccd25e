//! Where the agent's time goes: wall time during which it waits on something
//! outside itself (a program it started through [`crate::cmd::Cmd`], the
//! server's `hello`, Vault, the technician typing a passphrase), as opposed
//! to its own work. Overlapping waits (disks prepared in parallel) count once:
//! the clock runs while at least one wait is open. The clock is the command
//! runner's ([`landfall_cmd::timing`]), so the waits it opens around every
//! program count here.
//!
//! The pipeline reads [`waited`] and [`cpu`] before and after each step and
//! reports them in the terminal event (`data.timing`, docs/protocol.md).
//! Wall time minus waits is an upper bound of the agent's own share: it
//! still holds the kernel's work done in-process (mount, the partition
//! re-read, sync); CPU time is the agent's own work itself.

use std::time::Duration;

pub use landfall_cmd::timing::{waited, waiting, Clock, Waiting};

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
    use std::time::Instant;

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
