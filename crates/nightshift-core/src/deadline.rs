//! Deadlines: when a run must be finished, and a forecast of when it will be.
//!
//! The forecast walks the DAG's remaining tasks with an estimate per task (from the history
//! of its durations) and returns the longest remaining path, so "at risk" is raised while
//! there is still time to act, not when the deadline has passed.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use crate::pipeline::Pipeline;
use crate::state::{TaskState, Trigger};
use crate::time::{self, DataInterval};

/// A run's standing against its pipeline's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadlineState {
    /// Unfinished, and the forecast (if any) finishes in time.
    OnTrack,
    /// Unfinished, and the forecast finishes after the deadline.
    AtRisk,
    /// Unfinished at the deadline, or finished after it.
    Missed,
    /// Finished by the deadline.
    Met,
}

impl DeadlineState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineState::OnTrack => "on_track",
            DeadlineState::AtRisk => "at_risk",
            DeadlineState::Missed => "missed",
            DeadlineState::Met => "met",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on_track" => DeadlineState::OnTrack,
            "at_risk" => DeadlineState::AtRisk,
            "missed" => DeadlineState::Missed,
            "met" => DeadlineState::Met,
            _ => return None,
        })
    }
}

/// The instant the run of interval `iv` must be finished by: the pipeline's deadline time of
/// day on the local date the run fired (the interval's end), or the next day when that time
/// is not after the fire time. DST gaps and folds resolve like schedules do.
pub fn deadline_for(p: &Pipeline, iv: &DataInterval) -> Option<Timestamp> {
    let at = p.deadline?;
    let fired = p.schedule.local(iv.end);
    let tz = p.schedule.tz();
    let same_day = time::resolve(tz, fired.date().to_datetime(at));
    if same_day > iv.end {
        return Some(same_day);
    }
    let next = fired.date().tomorrow().ok()?;
    Some(time::resolve(tz, next.to_datetime(at)))
}

/// Whether a run's deadline is judged at all. Only the run that stands for the latest ended
/// interval when it was created is: a scheduled run, or a manual run of that interval.
/// Backfills, catch-up runs of earlier intervals and manual runs of past dates are history:
/// their deadline passed long before anyone could meet it, and alarms for them would bury
/// the one that matters.
pub fn judged(p: &Pipeline, trigger: Trigger, iv: &DataInterval, queued_at: Timestamp) -> bool {
    if trigger == Trigger::Backfill || iv.end > queued_at {
        return false;
    }
    // The latest ended interval at creation: the next one had not ended yet.
    p.schedule
        .next_fire(iv.end)
        .is_ok_and(|next| next > queued_at)
}

/// What the forecast knows of one task.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskProgress {
    pub state: Option<TaskState>,
    /// How long the current try has been running, for a RUNNING task.
    pub running_ms: Option<i64>,
    /// Typical duration from history (median of recent successful tries); `None` if unknown.
    pub estimate_ms: Option<i64>,
}

/// Milliseconds until the run is forecast to finish: the longest path through the tasks that
/// are not finished, each costing its estimate (less what a running try has already spent).
/// `None` when no unfinished task has an estimate: no history, no forecast.
pub fn forecast_remaining_ms(p: &Pipeline, tasks: &HashMap<String, TaskProgress>) -> Option<i64> {
    let mut finish: HashMap<&str, i64> = HashMap::new();
    let mut known = false;
    let mut longest = 0i64;
    for t in p.topological_order() {
        let prog = tasks.get(&t.id).copied().unwrap_or_default();
        let done = prog.state.is_some_and(TaskState::is_terminal);
        let own = if done {
            0
        } else {
            if prog.estimate_ms.is_some() {
                known = true;
            }
            let est = prog.estimate_ms.unwrap_or(0);
            (est - prog.running_ms.unwrap_or(0)).max(0)
        };
        let start = t
            .depends_on
            .iter()
            .filter_map(|d| finish.get(d.as_str()))
            .copied()
            .max()
            .unwrap_or(0);
        let end = start + own;
        longest = longest.max(end);
        finish.insert(&t.id, end);
    }
    known.then_some(longest)
}

/// The state of an unfinished run at `now` given its deadline and forecast.
pub fn judge(now: Timestamp, deadline: Timestamp, remaining_ms: Option<i64>) -> DeadlineState {
    if now >= deadline {
        return DeadlineState::Missed;
    }
    match remaining_ms {
        Some(ms) if now + SignedDuration::from_millis(ms) > deadline => DeadlineState::AtRisk,
        _ => DeadlineState::OnTrack,
    }
}

/// The median of durations, the estimate a forecast uses (robust to one slow outlier).
pub fn median(mut xs: Vec<i64>) -> Option<i64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_unstable();
    Some(xs[xs.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse_pipeline;
    use crate::project::ProjectSettings;

    fn pipeline(deadline: &str) -> Pipeline {
        let src = format!(
            r#"schedule = "0 0 * * *"
start_date = "2024-06-01"
timezone = "Europe/Berlin"
deadline = "{deadline}"
[[task]]
id = "a"
command = ["true"]
[[task]]
id = "b"
command = ["true"]
depends_on = ["a"]
[[task]]
id = "c"
command = ["true"]
depends_on = ["a"]
[[task]]
id = "d"
command = ["true"]
depends_on = ["b", "c"]
"#
        );
        let (p, d) = parse_pipeline(&src, "nightly", &ProjectSettings::default());
        p.unwrap_or_else(|| panic!("{d:?}"))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_latest_interval_is_judged() {
        let p = pipeline("06:00");
        let iv = DataInterval {
            start: ts("2024-06-01T22:00:00Z"),
            end: ts("2024-06-02T22:00:00Z"),
        };
        let on_time = ts("2024-06-02T22:00:01Z");
        let late_same_day = ts("2024-06-03T09:00:00Z");
        let next_day = ts("2024-06-03T23:00:00Z");
        assert!(judged(&p, Trigger::Scheduled, &iv, on_time));
        assert!(
            judged(&p, Trigger::Scheduled, &iv, late_same_day),
            "a late scheduler still misses"
        );
        assert!(judged(&p, Trigger::Manual, &iv, on_time));
        assert!(!judged(&p, Trigger::Backfill, &iv, on_time));
        assert!(
            !judged(&p, Trigger::Scheduled, &iv, next_day),
            "catch-up of an earlier interval"
        );
        assert!(
            !judged(&p, Trigger::Manual, &iv, next_day),
            "a manual run of a past date"
        );
    }

    #[test]
    fn deadline_is_on_the_day_the_run_fired() {
        let p = pipeline("06:00");
        let iv = DataInterval {
            start: ts("2024-06-01T22:00:00Z"),
            end: ts("2024-06-02T22:00:00Z"),
        };
        // Fired at 2024-06-03 00:00 Berlin; 06:00 Berlin the same day is 04:00Z.
        assert_eq!(deadline_for(&p, &iv), Some(ts("2024-06-03T04:00:00Z")));
        let p = pipeline("00:00");
        assert_eq!(deadline_for(&p, &iv), Some(ts("2024-06-03T22:00:00Z")));
    }

    #[test]
    fn forecast_takes_the_longest_remaining_path() {
        let p = pipeline("06:00");
        let mut m = HashMap::new();
        let prog = |state, running_ms, est| TaskProgress {
            state,
            running_ms,
            estimate_ms: est,
        };
        m.insert("a".into(), prog(Some(TaskState::Success), None, Some(100)));
        m.insert(
            "b".into(),
            prog(Some(TaskState::Running), Some(300), Some(1000)),
        );
        m.insert("c".into(), prog(Some(TaskState::Pending), None, Some(200)));
        m.insert("d".into(), prog(Some(TaskState::Pending), None, Some(50)));
        assert_eq!(forecast_remaining_ms(&p, &m), Some(750));
        // Without any estimate there is no forecast.
        let empty: HashMap<String, TaskProgress> = HashMap::new();
        assert_eq!(forecast_remaining_ms(&p, &empty), None);
    }

    #[test]
    fn judging() {
        let d = ts("2024-06-03T04:00:00Z");
        assert_eq!(
            judge(ts("2024-06-03T03:00:00Z"), d, Some(30 * 60_000)),
            DeadlineState::OnTrack
        );
        assert_eq!(
            judge(ts("2024-06-03T03:00:00Z"), d, Some(90 * 60_000)),
            DeadlineState::AtRisk
        );
        assert_eq!(
            judge(ts("2024-06-03T04:00:00Z"), d, None),
            DeadlineState::Missed
        );
        assert_eq!(median(vec![5, 1, 100]), Some(5));
    }
}
