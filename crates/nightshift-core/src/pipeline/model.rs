//! What a pipeline is once read: its tasks, their retry policies and trigger rules, and the
//! intervals its schedule gives.

use std::collections::HashMap;
use std::time::Duration;

use jiff::civil::{Date, Time};

use crate::kinds::TaskKind;
use crate::time::{self, Schedule};

/// Which upstream outcomes let a task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerRule {
    /// Every upstream succeeded (the default).
    AllSuccess,
    /// Every upstream finished, whatever its state.
    AllDone,
    /// At least one upstream failed.
    OneFailed,
    /// No upstream failed (skipped ones are fine).
    NoneFailed,
}

impl TriggerRule {
    pub const NAMES: &'static [&'static str] =
        &["all_success", "all_done", "one_failed", "none_failed"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all_success" => TriggerRule::AllSuccess,
            "all_done" => TriggerRule::AllDone,
            "one_failed" => TriggerRule::OneFailed,
            "none_failed" => TriggerRule::NoneFailed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Constant,
    Exponential,
}

/// When and how often a task is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub retry_delay: Duration,
    pub backoff: Backoff,
    pub max_retry_delay: Duration,
}

impl RetryPolicy {
    /// Delay before try `next_try` (2 for the first retry). `jitter` in [0, 1) spreads retries
    /// of many tasks so they do not hit a recovering system at the same instant: the delay
    /// is drawn from [d/2, d] ("equal jitter") where d is the capped exponential delay.
    pub fn delay_before(&self, next_try: u32, jitter: f64) -> Duration {
        let base = match self.backoff {
            Backoff::Constant => self.retry_delay,
            Backoff::Exponential => {
                let exp = next_try.saturating_sub(2).min(30);
                self.retry_delay.saturating_mul(1u32 << exp)
            }
        };
        let capped = base.min(self.max_retry_delay.max(self.retry_delay));
        match self.backoff {
            Backoff::Constant => capped,
            Backoff::Exponential => capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0),
        }
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub description: Option<String>,
    pub kind: TaskKind,
    pub depends_on: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub pool: Option<String>,
    pub env: Vec<(String, String)>,
    /// Variables of nightshift's own environment passed to the task even though they are
    /// nightshift's secrets (the web token, SMTP and webhook credentials, the store's
    /// password), which tasks never see otherwise.
    pub pass_env: Vec<String>,
    pub cwd: Option<String>,
}

impl Task {
    pub fn max_tries(&self) -> u32 {
        self.retry.retries + 1
    }
}

/// Catch-up creates at most this many runs unless a pipeline says otherwise.
pub const DEFAULT_CATCHUP_LIMIT: u32 = 100;

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub start_date: Date,
    pub end_date: Option<Date>,
    pub catchup: bool,
    /// With catchup, at most this many of the latest missed intervals get runs when
    /// scheduling (re)starts; earlier ones are left to a backfill (0: no limit).
    pub catchup_limit: u32,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub deadline: Option<Time>,
    /// In file order.
    pub tasks: Vec<Task>,
    /// Derived once at load, so that scheduling passes never recompute the graph.
    pub(super) index: HashMap<String, usize>,
    pub(super) topo: Vec<usize>,
    pub(super) rank: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntervalsError {
    #[error(transparent)]
    Time(#[from] time::Error),
    #[error("the range holds more than {0} intervals; take it in parts")]
    TooMany(usize),
}

impl Pipeline {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    /// Tasks ordered so that every task follows its upstreams (validated acyclic).
    pub fn topological_order(&self) -> Vec<&Task> {
        self.topo.iter().map(|&i| &self.tasks[i]).collect()
    }

    /// A task's position in [`Pipeline::topological_order`].
    pub fn topo_rank(&self, id: &str) -> usize {
        self.index
            .get(id)
            .map(|&i| self.rank[i])
            .unwrap_or(usize::MAX)
    }

    /// Direct downstream tasks of `id`.
    pub fn downstream(&self, id: &str) -> Vec<&Task> {
        self.tasks
            .iter()
            .filter(|t| t.depends_on.iter().any(|d| d == id))
            .collect()
    }

    /// `roots` and every task downstream of them, transitively, roots first.
    pub fn with_downstream(&self, roots: Vec<String>) -> Vec<String> {
        let mut ids = roots;
        let mut i = 0;
        while i < ids.len() {
            for d in self.downstream(&ids[i]) {
                if !ids.contains(&d.id) {
                    ids.push(d.id.clone());
                }
            }
            i += 1;
        }
        ids
    }

    /// The first instant a run's interval may start at.
    pub fn start_instant(&self) -> jiff::Timestamp {
        time::resolve(
            self.schedule.tz(),
            self.start_date.to_datetime(Time::midnight()),
        )
    }

    /// Every ended interval (by `now`) whose ds is in [from, to], oldest first, at most
    /// `limit`. The flag says whether intervals of the range had not ended yet.
    pub fn intervals_between(
        &self,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
        now: jiff::Timestamp,
        limit: usize,
    ) -> Result<(Vec<time::DataInterval>, bool), IntervalsError> {
        let mut out = vec![];
        let mut start = self.schedule.next_fire_inclusive(time::resolve(
            self.schedule.tz(),
            from.to_datetime(Time::midnight()),
        ))?;
        loop {
            let iv = time::DataInterval {
                start,
                end: self.schedule.next_fire(start)?,
            };
            if self.schedule.ds(&iv) > to {
                return Ok((out, false));
            }
            if iv.end > now {
                return Ok((out, true));
            }
            if iv.start >= self.start_instant() || self.schedule.ds(&iv) >= from {
                out.push(iv);
            }
            start = iv.end;
            if out.len() > limit {
                return Err(IntervalsError::TooMany(limit));
            }
        }
    }

    /// Whether an interval falls in [start_date, end_date].
    pub fn in_range(&self, iv: &time::DataInterval) -> bool {
        if iv.start < self.start_instant() {
            return false;
        }
        match self.end_date {
            Some(end) => self.schedule.ds(iv) <= end,
            None => true,
        }
    }
}
/// Whether a name is safe as an identifier and as one path component.
pub fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !s.starts_with('.')
}
