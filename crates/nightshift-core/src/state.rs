//! Run and task states, and the pure rules that move a run forward.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::pipeline::{Pipeline, TriggerRule};

/// State of a task in a run (of its current try). Serialized as its stored name
/// (`UP_FOR_RETRY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting for its upstream tasks.
    Pending,
    /// Ready to run, waiting for a slot.
    Queued,
    Running,
    Success,
    Failed,
    /// Failed, another try is scheduled.
    UpForRetry,
    /// Not run because an upstream failed.
    UpstreamFailed,
    /// Not run because its trigger rule excluded it.
    Skipped,
    /// Stopped by an operator (`nightshift cancel`): its run was cancelled.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failed,
        TaskState::UpForRetry,
        TaskState::UpstreamFailed,
        TaskState::Skipped,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Queued => "QUEUED",
            TaskState::Running => "RUNNING",
            TaskState::Success => "SUCCESS",
            TaskState::Failed => "FAILED",
            TaskState::UpForRetry => "UP_FOR_RETRY",
            TaskState::UpstreamFailed => "UPSTREAM_FAILED",
            TaskState::Skipped => "SKIPPED",
            TaskState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::UpstreamFailed
                | TaskState::Skipped
                | TaskState::Cancelled
        )
    }

    /// Counts as a failure for trigger rules and for the run's outcome.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::UpstreamFailed)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state `{s}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failed,
    /// Stopped by an operator before it finished (`nightshift cancel`).
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Running => "RUNNING",
            RunState::Success => "SUCCESS",
            RunState::Failed => "FAILED",
            RunState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Success | RunState::Failed | RunState::Cancelled
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::Success,
            RunState::Failed,
            RunState::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("unknown run state `{s}`"))
    }
}

/// Why a run was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    Scheduled,
    Manual,
    Backfill,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
            Trigger::Backfill => "backfill",
        }
    }

    /// Lower sorts first: backfill work always yields to scheduled and manual runs.
    pub fn priority(self) -> u8 {
        match self {
            Trigger::Scheduled | Trigger::Manual => 0,
            Trigger::Backfill => 1,
        }
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scheduled" => Ok(Trigger::Scheduled),
            "manual" => Ok(Trigger::Manual),
            "backfill" => Ok(Trigger::Backfill),
            _ => Err(format!("unknown trigger `{s}`")),
        }
    }
}

/// What the upstream states decide for a task still PENDING.
pub fn evaluate_trigger(rule: TriggerRule, upstream: &[TaskState]) -> Option<TaskState> {
    let all_done = upstream.iter().all(|s| s.is_terminal());
    let any_failed = upstream.iter().any(|s| s.is_failure());
    let any_skipped = upstream.contains(&TaskState::Skipped);
    match rule {
        TriggerRule::AllSuccess => {
            if any_failed {
                Some(TaskState::UpstreamFailed)
            } else if !all_done {
                None
            } else if any_skipped {
                Some(TaskState::Skipped)
            } else {
                Some(TaskState::Queued)
            }
        }
        TriggerRule::AllDone => all_done.then_some(TaskState::Queued),
        TriggerRule::NoneFailed => {
            if any_failed {
                Some(TaskState::UpstreamFailed)
            } else {
                all_done.then_some(TaskState::Queued)
            }
        }
        TriggerRule::OneFailed => {
            if any_failed {
                Some(TaskState::Queued)
            } else {
                all_done.then_some(TaskState::Skipped)
            }
        }
    }
}

/// The PENDING tasks whose state the upstream states now decide, with their new state.
/// Applied repeatedly until nothing changes, so a failure propagates down a chain at once.
pub fn advance(pipeline: &Pipeline, states: &HashMap<&str, TaskState>) -> Vec<(String, TaskState)> {
    // Borrowed ids: a pass over a wide run calls this every time, and copying a thousand
    // task ids per call was most of its cost.
    let mut current = states.clone();
    let mut out = vec![];
    let mut upstream: Vec<TaskState> = vec![];
    // One sweep in topological order settles every task: upstream decisions come first.
    loop {
        let mut changed = false;
        for task in pipeline.topological_order() {
            if current.get(task.id.as_str()) != Some(&TaskState::Pending) {
                continue;
            }
            upstream.clear();
            upstream.extend(task.depends_on.iter().map(|d| {
                current
                    .get(d.as_str())
                    .copied()
                    .unwrap_or(TaskState::Pending)
            }));
            if let Some(next) = evaluate_trigger(task.trigger_rule, &upstream) {
                current.insert(task.id.as_str(), next);
                out.push((task.id.clone(), next));
                changed = true;
            }
        }
        if !changed {
            return out;
        }
    }
}

/// The run's outcome once every task is terminal: it succeeds only if no task failed.
/// (Unlike Airflow, a successful `notify` leaf with `all_done` does not hide a failure.)
pub fn run_outcome(states: impl IntoIterator<Item = TaskState>) -> Option<RunState> {
    let mut failed = false;
    let mut cancelled = false;
    for s in states {
        if !s.is_terminal() {
            return None;
        }
        failed |= s.is_failure();
        cancelled |= s == TaskState::Cancelled;
    }
    Some(if failed {
        RunState::Failed
    } else if cancelled {
        RunState::Cancelled
    } else {
        RunState::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn trigger_rules() {
        use TriggerRule::*;
        assert_eq!(evaluate_trigger(AllSuccess, &[Success, Running]), None);
        assert_eq!(
            evaluate_trigger(AllSuccess, &[Success, Success]),
            Some(Queued)
        );
        assert_eq!(
            evaluate_trigger(AllSuccess, &[Failed, Running]),
            Some(UpstreamFailed)
        );
        assert_eq!(
            evaluate_trigger(AllSuccess, &[Skipped, Success]),
            Some(Skipped)
        );
        assert_eq!(evaluate_trigger(AllDone, &[Failed, Running]), None);
        assert_eq!(
            evaluate_trigger(AllDone, &[Failed, UpstreamFailed]),
            Some(Queued)
        );
        assert_eq!(
            evaluate_trigger(OneFailed, &[Failed, Running]),
            Some(Queued)
        );
        assert_eq!(
            evaluate_trigger(OneFailed, &[Success, Success]),
            Some(Skipped)
        );
        assert_eq!(
            evaluate_trigger(NoneFailed, &[Skipped, Success]),
            Some(Queued)
        );
        assert_eq!(
            evaluate_trigger(NoneFailed, &[UpstreamFailed, Success]),
            Some(UpstreamFailed)
        );
        assert_eq!(evaluate_trigger(AllSuccess, &[]), Some(Queued));
        assert_eq!(evaluate_trigger(AllDone, &[UpForRetry]), None);
    }

    #[test]
    fn outcomes() {
        assert_eq!(run_outcome([Success, Skipped]), Some(RunState::Success));
        assert_eq!(run_outcome([Failed, Success]), Some(RunState::Failed));
        assert_eq!(
            run_outcome([UpstreamFailed, Success]),
            Some(RunState::Failed)
        );
        assert_eq!(run_outcome([Success, Running]), None);
    }

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
    }
}
