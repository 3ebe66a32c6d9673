//! Clocks: the one seam through which the engine sees data time.
//!
//! Data time (fire times, run and try timestamps) comes from a [`Clock`]. Leases and
//! heartbeats always use real time ([`real_now_us`]): they are about whether processes are
//! alive, which a simulated clock must not fake.

use std::sync::Mutex;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Whether idle time may be skipped with [`Clock::advance_to`].
    fn is_simulated(&self) -> bool {
        false
    }
    /// Jumps a simulated clock forward to `t` (never backwards). Real clocks ignore it.
    fn advance_to(&self, _t: Timestamp) {}
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Real wall-clock time in microseconds, for leases and heartbeats.
pub fn real_now_us() -> i64 {
    SystemClock.now().as_microsecond()
}

/// A clock that starts at a chosen instant, runs at real speed while work is in flight,
/// and jumps over idle time when the scheduler asks (`up --simulate-from`, and tests).
pub struct SimClock {
    state: Mutex<(Timestamp, Instant)>,
}

impl SimClock {
    pub fn new(start: Timestamp) -> Self {
        SimClock {
            state: Mutex::new((start, Instant::now())),
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let (base, real) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = SignedDuration::try_from(real.elapsed()).unwrap_or(SignedDuration::ZERO);
        base.checked_add(elapsed).unwrap_or(base)
    }

    fn is_simulated(&self) -> bool {
        true
    }

    fn advance_to(&self, t: Timestamp) {
        let now = self.now();
        if t > now {
            *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (t, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_clock_jumps_forward_only() {
        let c = SimClock::new("2024-06-01T23:00:00Z".parse().unwrap());
        c.advance_to("2024-06-02T00:00:00Z".parse().unwrap());
        assert!(c.now() >= "2024-06-02T00:00:00Z".parse().unwrap());
        c.advance_to("2024-06-01T00:00:00Z".parse().unwrap());
        assert!(c.now() >= "2024-06-02T00:00:00Z".parse().unwrap());
    }
}
