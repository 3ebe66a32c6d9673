//! Recovery: `clear`, `rerun`, `mark` and `explain`. Each is one store write (or read) that
//! the scheduler picks up at its next pass; none runs tasks itself.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_core::state::run_outcome;
use nightshift_core::{Pipeline, TaskState, Trigger};
use nightshift_engine::Clock;
use nightshift_engine::project::Project;
use nightshift_store::{RunRow, Store};

use crate::commands::inspect::open_run;
use crate::commands::usage;
use crate::output;

/// The pipeline version a run executes.
fn pipeline_of(project: &Project, store: &Store, run: &RunRow) -> Result<Arc<Pipeline>> {
    match nightshift_engine::project::stored_pipeline(store, &run.version, &project.settings)? {
        Some((_, Ok(p))) => Ok(Arc::new(p)),
        Some((_, Err(_))) => Err(usage(format!(
            "the pipeline version of run {} no longer validates; `nightshift rerun {}` moves it to the current file",
            run.run_id, run.run_id
        ))),
        None => Err(anyhow::anyhow!(
            "the store has no pipeline version {} for run {}",
            run.version,
            run.run_id
        )),
    }
}

fn require_task(p: &Pipeline, task: &str) -> Result<()> {
    if p.task(task).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = p.tasks.iter().map(|t| t.id.as_str()).collect();
    Err(usage(format!(
        "run's pipeline `{}` has no task `{task}`\n  = help: its tasks: {}",
        p.name,
        known.join(", ")
    )))
}

fn now_us() -> i64 {
    nightshift_engine::clock::real_now_us()
}

fn next_step(run: &RunRow) -> String {
    format!(
        "queued: a running `nightshift up` picks it up; or run it now with `nightshift run {} --date {}`",
        run.pipeline, run.ds
    )
}

pub fn clear(
    dir: &Path,
    run_id: &str,
    task: Option<&str>,
    downstream: bool,
    failed_only: bool,
    pipeline: Option<&str>,
) -> Result<i32> {
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let p = pipeline_of(&project, &store, &run)?;
    let tis = store.task_instances(run.pk)?;
    let state_of = |id: &str| tis.iter().find(|t| t.task_id == id).map(|t| t.state);
    let mut ids: Vec<String> = match task {
        Some(t) => {
            require_task(&p, t)?;
            vec![t.to_owned()]
        }
        None if failed_only => tis
            .iter()
            .filter(|t| t.state.is_failure())
            .map(|t| t.task_id.clone())
            .collect(),
        None => {
            return Err(usage(
                "say which tasks: --task T, or --failed for every failed task",
            ));
        }
    };
    if downstream {
        ids = p.with_downstream(ids);
    }
    if failed_only {
        ids.retain(|id| state_of(id).is_some_and(TaskState::is_failure));
    }
    let running: Vec<&String> = ids
        .iter()
        .filter(|id| {
            matches!(
                state_of(id),
                Some(TaskState::Running) | Some(TaskState::Queued)
            )
        })
        .collect();
    if !running.is_empty() {
        output::note(format!(
            "note: left alone (queued or running now): {}",
            running
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let list: Vec<(&str, u32)> = ids
        .iter()
        .filter_map(|id| p.task(id).map(|t| (id.as_str(), t.max_tries())))
        .collect();
    let cleared = store.clear_tasks(run.pk, &list, now_us(), "cleared with `nightshift clear`")?;
    if cleared.is_empty() {
        output::note(format!("nothing to clear in run {}", run.run_id));
        return Ok(1);
    }
    output::line(format!(
        "cleared in {} {}: {}",
        run.pipeline,
        run.run_id,
        cleared.join(", ")
    ));
    output::note(next_step(&run));
    Ok(0)
}

pub fn rerun(dir: &Path, run_id: &str, pipeline: Option<&str>) -> Result<i32> {
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let lp = project.pipelines.get(&run.pipeline).ok_or_else(|| {
        usage(format!(
            "pipeline `{}` has no valid file now; fix it (`nightshift validate`) and try again",
            run.pipeline
        ))
    })?;
    if !run.status.is_terminal() {
        return Err(usage(format!(
            "run {} is {}; wait for it to finish (or `nightshift clear` its finished tasks)",
            run.run_id, run.status
        )));
    }
    let now = nightshift_engine::SystemClock.now();
    nightshift_engine::engine::rerun(&store, lp, run.pk, Trigger::Manual, now)?;
    output::line(format!(
        "{} {}: every task will run again on the current pipeline file (history kept)",
        run.pipeline, run.run_id
    ));
    output::note(next_step(&run));
    Ok(0)
}

pub fn mark(
    dir: &Path,
    run_id: &str,
    task: &str,
    state: &str,
    reason: &str,
    pipeline: Option<&str>,
) -> Result<i32> {
    let state = match state.to_ascii_lowercase().as_str() {
        "success" => TaskState::Success,
        "failed" => TaskState::Failed,
        other => {
            return Err(usage(format!(
                "invalid --state `{other}`: use success or failed"
            )));
        }
    };
    if reason.trim().is_empty() {
        return Err(usage("--reason is empty: say what was done by hand"));
    }
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let p = pipeline_of(&project, &store, &run)?;
    require_task(&p, task)?;
    let Some(old) = store.mark_task(run.pk, task, state.as_str(), reason.trim(), now_us())? else {
        return Err(usage(format!(
            "task `{task}` of run {} is running; wait for it or stop it first",
            run.run_id
        )));
    };
    let states: Vec<TaskState> = store
        .task_instances(run.pk)?
        .iter()
        .map(|t| t.state)
        .collect();
    let outcome = run_outcome(states.iter().copied());
    store.settle_run(run.pk, outcome.map(|o| o.as_str()), now_us())?;
    output::line(format!(
        "{} {} {task}: {old} → {} ({}); run is {}",
        run.pipeline,
        run.run_id,
        state,
        reason.trim(),
        outcome
            .map(|o| o.as_str())
            .unwrap_or("QUEUED (its other tasks continue)")
    ));
    Ok(0)
}

pub fn explain(
    dir: &Path,
    run_id: &str,
    task: Option<&str>,
    pipeline: Option<&str>,
    as_json: bool,
) -> Result<i32> {
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let p = pipeline_of(&project, &store, &run)?;
    if let Some(t) = task {
        require_task(&p, t)?;
    }
    let now = nightshift_engine::SystemClock.now();
    let reasons =
        nightshift_engine::explain::explain(&store, &project.settings, &p, &run, task, now)?;
    if as_json {
        output::line(serde_json::to_string_pretty(&reasons)?);
        return Ok(0);
    }
    output::line(format!(
        "Run {} {} (ds {}): {}",
        run.pipeline, run.run_id, run.ds, run.status
    ));
    for r in &reasons {
        match &r.task_id {
            None => output::line(format!("  {}", r.reason)),
            Some(t) => output::line(format!("  {t}: {} — {}", r.state, r.reason)),
        }
    }
    Ok(0)
}
