//! What the engine tells its callers (the command's output, alerts, metrics) as work
//! progresses, and the loop's figures that metrics and health read: passive types, so the
//! crates that consume them need not depend on the engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::deadline::DeadlineState;
use crate::{RunState, TaskState, Trigger};

/// What the engine tells its caller as work progresses.
#[derive(Debug, Clone)]
pub enum Event {
    TaskEnded {
        pipeline: String,
        run_id: String,
        /// The task instance's key in the store (its try is `(ti_pk, try_number)`).
        ti_pk: i64,
        task_id: String,
        state: TaskState,
        try_number: u32,
        at: Timestamp,
        tz: TimeZone,
        /// How long its last try ran, when it ran.
        duration_ms: Option<i64>,
        /// Why its last try failed, when it did.
        error: Option<String>,
        /// The run is history: a backfill, or a run of an interval earlier than the latest
        /// (catch-up, a past date). `up` folds such lines into a summary.
        history: bool,
    },
    TaskRetrying {
        pipeline: String,
        run_id: String,
        task_id: String,
        try_number: u32,
        next_try_at: Timestamp,
    },
    RunEnded {
        pipeline: String,
        run_id: String,
        ds: jiff::civil::Date,
        state: RunState,
        rows_loaded: i64,
        at: Timestamp,
        trigger: Trigger,
        /// As for `TaskEnded`.
        history: bool,
    },
    /// A run's standing against its deadline changed (raised by one process only: the store
    /// decides which).
    Deadline {
        pipeline: String,
        run_id: String,
        ds: jiff::civil::Date,
        state: DeadlineState,
        deadline: Timestamp,
        forecast: Option<Timestamp>,
        at: Timestamp,
    },
}

/// Figures of the loop for metrics and health, readable from another thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// How late the last wake-up was against the time the loop meant to wake (µs).
    pub loop_lag_us: AtomicI64,
    /// Real time (µs) when the loop last came round; a stalled loop shows as its age.
    pub last_tick_us: AtomicI64,
    /// The store refuses the loop's reads or writes (locked, full, unreachable).
    pub store_degraded: AtomicBool,
    /// The outcome writer cannot write (outcomes wait in the journal).
    pub writer_degraded: Arc<AtomicBool>,
    /// Intervals skipped because the pipeline has `catchup = false`, per pipeline.
    pub skipped: Mutex<HashMap<String, u64>>,
    /// Scheduling passes made, and the time they took (µs): what the loop costs the store.
    pub passes: AtomicU64,
    pub pass_us: AtomicU64,
}

impl Stats {
    /// How far behind the loop is at real time `now_us`: the lag of its last wake-up, or how
    /// long the current iteration has been stuck (a store call waiting on a lock), whichever
    /// is more.
    pub fn loop_lag(&self, now_us: i64, poll: Duration) -> Duration {
        let tick = self.last_tick_us.load(Ordering::Relaxed);
        let poll_us = i64::try_from(poll.as_micros()).unwrap_or(i64::MAX);
        let stuck = if tick == 0 {
            0
        } else {
            now_us.saturating_sub(tick).saturating_sub(poll_us).max(0)
        };
        let lag = self.loop_lag_us.load(Ordering::Relaxed).max(stuck);
        Duration::from_micros(u64::try_from(lag).unwrap_or(0))
    }

    /// Whether the scheduler is running with its store unavailable.
    pub fn degraded(&self) -> bool {
        self.store_degraded.load(Ordering::Relaxed) || self.writer_degraded.load(Ordering::Relaxed)
    }
}
