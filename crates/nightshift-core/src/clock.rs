//! Clocks: the one seam through which nightshift sees data time, and the one module that
//! reads the system clock.
//!
//! Data time (fire times, run and try timestamps, what the UI calls today) comes from a
//! [`Clock`], passed to the engine, the web server, the alerter and the extract. Leases and
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
    /// Blocks the calling thread until the clock reads `t`: a simulated clock jumps there,
    /// a real one sleeps (in steps, so a clock set forward is noticed).
    fn sleep_until(&self, t: Timestamp) {
        if self.is_simulated() {
            self.advance_to(t);
            return;
        }
        loop {
            let left = self.now().duration_until(t);
            if left <= SignedDuration::ZERO {
                return;
            }
            let step = left.min(SignedDuration::from_secs(1));
            std::thread::sleep(step.unsigned_abs());
        }
    }
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

    #[test]
    fn sleep_until_jumps_a_simulated_clock_and_waits_on_a_real_one() {
        let c = SimClock::new("2024-06-01T23:00:00Z".parse().unwrap());
        let real = std::time::Instant::now();
        c.sleep_until("2024-06-03T00:00:00Z".parse().unwrap());
        assert!(c.now() >= "2024-06-03T00:00:00Z".parse().unwrap());
        let start = SystemClock.now();
        SystemClock.sleep_until(start + SignedDuration::from_millis(30));
        assert!(SystemClock.now() >= start + SignedDuration::from_millis(30));
        // The simulated day took no real day.
        assert!(real.elapsed() < std::time::Duration::from_secs(60));
    }
}
