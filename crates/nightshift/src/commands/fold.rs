//! `up`'s run log: the lines of history runs (catch-up, backfills, past dates) folded into
//! one summary line per pipeline, so that starting `up` on a project whose start_date lies
//! far back prints a screenful, not a line per task of a hundred runs. Failures still print
//! at once, each with its run_id. The run of the latest interval prints as `run` does.
//! With `--log-format json` nothing is folded: log collectors get every event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nightshift_core::event::Event;
use nightshift_core::{RunState, TaskState};

use crate::commands::Lines;
use crate::output;

/// How long a summary waits for more runs to end, and at most.
const QUIET: Duration = Duration::from_secs(5);
const AT_MOST: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Folded {
    first: Option<Instant>,
    last: Option<Instant>,
    runs: u32,
    failed: u32,
    cancelled: u32,
    from: Option<jiff::civil::Date>,
    to: Option<jiff::civil::Date>,
}

#[derive(Default)]
pub struct FoldedLines {
    lines: Lines,
    pending: BTreeMap<String, Folded>,
}

impl FoldedLines {
    /// The lines to print for `e` at `now`.
    pub fn on_event(&mut self, e: &Event, now: Instant) -> Vec<String> {
        let history = match e {
            Event::TaskEnded { history, .. } | Event::RunEnded { history, .. } => *history,
            _ => false,
        };
        if !history || output::json() {
            return self.lines.line(e).into_iter().collect();
        }
        match e {
            Event::TaskEnded {
                run_id,
                task_id,
                state,
                at,
                tz,
                duration_ms,
                error,
                ..
            } if matches!(state, TaskState::Failed) => {
                let line =
                    output::task_line(task_id, *state, *at, tz, *duration_ms, error.as_deref());
                vec![format!("{run_id} {line}")]
            }
            Event::RunEnded {
                pipeline,
                ds,
                state,
                ..
            } => {
                let f = self.pending.entry(pipeline.clone()).or_default();
                f.first.get_or_insert(now);
                f.last = Some(now);
                f.runs += 1;
                match state {
                    RunState::Failed => f.failed += 1,
                    RunState::Cancelled => f.cancelled += 1,
                    _ => {}
                }
                f.from = Some(f.from.map_or(*ds, |d| d.min(*ds)));
                f.to = Some(f.to.map_or(*ds, |d| d.max(*ds)));
                // A failed run's line as `run` prints it.
                let mut out: Vec<String> = match state {
                    RunState::Failed => self.lines.line(e).into_iter().collect(),
                    _ => vec![],
                };
                out.extend(self.due(now, false));
                out
            }
            _ => vec![],
        }
    }

    /// Summaries that are due at `now`: a pipeline's earlier runs once no more ended for a
    /// few seconds, or once a minute while they keep ending (`all`: every pending one).
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<String> {
        let ready: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, f)| {
                f.runs > 0
                    && (all
                        || f.last.is_some_and(|l| now.duration_since(l) >= QUIET)
                        || f.first.is_some_and(|s| now.duration_since(s) >= AT_MOST))
            })
            .map(|(p, _)| p.clone())
            .collect();
        ready
            .into_iter()
            .filter_map(|p| self.pending.remove(&p).map(|f| summary(&p, &f)))
            .collect()
    }
}

fn summary(pipeline: &str, f: &Folded) -> String {
    let ok = f.runs - f.failed - f.cancelled;
    let mut states = format!("{ok} SUCCESS");
    if f.failed > 0 {
        states += &format!(", {} FAILED", f.failed);
    }
    if f.cancelled > 0 {
        states += &format!(", {} CANCELLED", f.cancelled);
    }
    let span = match (f.from, f.to) {
        (Some(a), Some(b)) if a != b => format!("ds {a} to {b}"),
        (Some(a), _) => format!("ds {a}"),
        _ => String::new(),
    };
    format!(
        "{pipeline}: {} earlier run{} finished ({span}): {states}",
        f.runs,
        if f.runs == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_core::Trigger;

    fn task(run_id: &str, state: TaskState, history: bool) -> Event {
        Event::TaskEnded {
            pipeline: "p".into(),
            run_id: run_id.into(),
            ti_pk: 1,
            task_id: "t".into(),
            state,
            try_number: 1,
            at: "2024-06-02T00:01:00Z".parse().unwrap(),
            tz: jiff::tz::TimeZone::UTC,
            duration_ms: Some(1200),
            error: (state == TaskState::Failed).then(|| "exited with code 3".into()),
            history,
        }
    }

    fn run(run_id: &str, day: i8, state: RunState, history: bool) -> Event {
        Event::RunEnded {
            pipeline: "p".into(),
            run_id: run_id.into(),
            ds: jiff::civil::date(2024, 6, day),
            state,
            rows_loaded: 0,
            at: "2024-06-02T00:02:00Z".parse().unwrap(),
            trigger: Trigger::Scheduled,
            history,
        }
    }

    #[test]
    fn history_folds_into_a_summary_and_failures_still_print() {
        let mut f = FoldedLines::default();
        let t0 = Instant::now();
        assert!(
            f.on_event(&task("r1", TaskState::Success, true), t0)
                .is_empty()
        );
        assert!(
            f.on_event(&run("r1", 1, RunState::Success, true), t0)
                .is_empty()
        );
        let failed = f.on_event(&task("r2", TaskState::Failed, true), t0);
        assert_eq!(
            failed,
            ["r2 Task t: FAILED (2024-06-02 00:01) in 1.2s — exited with code 3"]
        );
        let ended = f.on_event(&run("r2", 2, RunState::Failed, true), t0);
        assert_eq!(ended, ["Run p r2 (ds 2024-06-02): FAILED rows_loaded=0"]);
        // Nothing more for a while: one summary, then nothing.
        assert!(f.due(t0 + Duration::from_secs(1), false).is_empty());
        assert_eq!(
            f.due(t0 + QUIET, false),
            ["p: 2 earlier runs finished (ds 2024-06-01 to 2024-06-02): 1 SUCCESS, 1 FAILED"]
        );
        assert!(f.due(t0 + AT_MOST, true).is_empty());
        // The latest interval's run prints as `run` prints it.
        assert_eq!(
            f.on_event(&task("r9", TaskState::Success, false), t0),
            ["Task t: SUCCESS (2024-06-02 00:01) in 1.2s"]
        );
    }

    #[test]
    fn a_steady_flow_is_summarised_once_a_minute() {
        let mut f = FoldedLines::default();
        let t0 = Instant::now();
        let mut printed = vec![];
        for i in 0..120u64 {
            let day = (i % 28 + 1) as i8;
            printed.extend(f.on_event(
                &run(&format!("r{i}"), day, RunState::Success, true),
                t0 + Duration::from_secs(i),
            ));
        }
        assert_eq!(printed.len(), 1, "{printed:?}");
        assert!(
            printed[0].starts_with("p: 61 earlier runs finished"),
            "{printed:?}"
        );
    }
}
