//! Expiry judged on two clocks: the wall clock and the boot clock.
//!
//! tokio's timers run on CLOCK_MONOTONIC, which stops while a Linux laptop is suspended, so
//! a deadline kept only as an `Instant` would be served long after it passed. A token here
//! counts as expired when either the wall clock or CLOCK_BOOTTIME (which keeps counting in
//! suspend) says so; a wall clock stepped backwards cannot extend a token's life either.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since boot, including suspend (CLOCK_BOOTTIME on Linux).
pub fn boot_now() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Unix seconds of a wall-clock time (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A point in time recorded on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// On the wall clock.
    pub wall: SystemTime,
    /// On the boot clock.
    pub boot: Duration,
}

impl Deadline {
    /// `d` from now.
    pub fn after(d: Duration) -> Deadline {
        Deadline {
            wall: SystemTime::now() + d,
            boot: boot_now() + d,
        }
    }

    /// Time left before the earlier of the two clocks reaches the deadline (zero if past).
    pub fn remaining(&self) -> Duration {
        let by_wall = self
            .wall
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let by_boot = self.boot.saturating_sub(boot_now());
        by_wall.min(by_boot)
    }

    /// True once either clock has passed the deadline.
    pub fn passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The deadline moved earlier by `d`.
    pub fn earlier(&self, d: Duration) -> Deadline {
        Deadline {
            wall: self.wall.checked_sub(d).unwrap_or(UNIX_EPOCH),
            boot: self.boot.saturating_sub(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_and_saturates() {
        let d = Deadline::after(Duration::from_secs(100));
        let r = d.remaining();
        assert!(r <= Duration::from_secs(100) && r > Duration::from_secs(99));
        assert!(!d.passed());
        assert!(d.earlier(Duration::from_secs(200)).passed());
    }

    #[test]
    fn either_clock_expires_the_deadline() {
        // Wall clock says passed (e.g. after a suspend a wall-only jump), boot clock says not.
        let d = Deadline {
            wall: SystemTime::now() - Duration::from_secs(1),
            boot: boot_now() + Duration::from_secs(100),
        };
        assert!(d.passed());
        // Boot clock says passed, wall clock was stepped backwards.
        let d = Deadline {
            wall: SystemTime::now() + Duration::from_secs(100),
            boot: boot_now().saturating_sub(Duration::from_secs(1)),
        };
        assert!(d.passed());
    }
}
