//! `cancel`: stops unfinished runs on purpose. One store write: queued runs and tasks become
//! CANCELLED, running tries are recorded CANCELLED and killed by the engine running them at
//! its next heartbeat. The pipeline's schedule is untouched (that is what `pause` is for).

use std::path::Path;

use anyhow::Result;
use nightshift_store::Store;

use crate::commands::{load_project, open_store, require_pipeline, usage};
use crate::output;

pub fn exec(dir: &Path, pipeline: &str, run_ids: &[String], backfill: bool) -> Result<i32> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    if !project.pipelines.contains_key(pipeline) && store.runs(pipeline, 1)?.is_empty() {
        require_pipeline(&project, pipeline)?;
    }
    let pks = match (backfill, run_ids.is_empty()) {
        (true, true) => store.unfinished_backfill_runs(pipeline)?,
        (false, false) => {
            let mut pks = vec![];
            for id in run_ids {
                let run = store.find_run(pipeline, id)?.ok_or_else(|| {
                    usage(format!(
                        "pipeline `{pipeline}` has no run `{id}`\n  = help: `nightshift runs {pipeline}` lists its runs"
                    ))
                })?;
                pks.push(run.pk);
            }
            pks
        }
        (true, false) => {
            return Err(usage(
                "give run ids or --backfill, not both\n  = help: `nightshift cancel nightly 20240602_0000`, or `nightshift cancel nightly --backfill`",
            ));
        }
        (false, true) => {
            return Err(usage(
                "name the runs to cancel, or --backfill for every unfinished backfill run\n  = help: `nightshift cancel nightly 20240602_0000`",
            ));
        }
    };
    let n = cancel(
        &store,
        &pks,
        "cancelled by an operator (`nightshift cancel`)",
    )?;
    Ok(if n == 0 && !pks.is_empty() { 1 } else { 0 })
}

/// Cancels the runs and says what happened; returns how many were cancelled.
pub fn cancel(store: &Store, pks: &[i64], reason: &str) -> Result<usize> {
    let now = nightshift_engine::clock::real_now_us();
    let (runs, tries) = store.cancel_runs(pks, now, reason)?;
    if runs.is_empty() {
        output::note("nothing to cancel: the runs had finished already");
        return Ok(0);
    }
    output::line(format!(
        "cancelled {} run(s): {}",
        runs.len(),
        summarize(&runs)
    ));
    if !tries.is_empty() {
        let names: Vec<String> = tries
            .iter()
            .map(|t| format!("{} {} try {}", t.run_id, t.task_id, t.try_number))
            .collect();
        output::note(format!(
            "{} running tr{} recorded CANCELLED; the scheduler running {} stops {} within seconds: {}",
            tries.len(),
            if tries.len() == 1 { "y" } else { "ies" },
            if tries.len() == 1 { "it" } else { "them" },
            if tries.len() == 1 { "it" } else { "them" },
            names.join(", ")
        ));
    }
    Ok(runs.len())
}

fn summarize(ids: &[String]) -> String {
    if ids.len() <= 6 {
        ids.join(", ")
    } else {
        format!(
            "{}, … {} (and {} more)",
            ids[..3].join(", "),
            ids[ids.len() - 1],
            ids.len() - 4
        )
    }
}
