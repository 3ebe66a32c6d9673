use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_core::{RunState, Trigger};
use nightshift_engine::engine::create_run;
use nightshift_engine::{Event, Mode, SystemClock};
use nightshift_store::Created;

use crate::commands::{
    drive, event_line, load_project, new_engine, open_store, parse_date_flag, require_pipeline,
    usage,
};
use crate::output;

pub async fn exec(dir: &Path, name: &str, date: &str, rerun: bool) -> Result<i32> {
    let project = load_project(dir)?;
    let lp = require_pipeline(&project, name)?;
    let ds = parse_date_flag("--date", date)?;
    let p = lp.pipeline.clone();
    let iv = p.schedule.interval_for_ds(ds)?.ok_or_else(|| {
        usage(format!(
            "schedule `{}` of `{name}` has no data interval starting on {ds}\n  = help: `nightshift next {name}` lists intervals; pick a ds the schedule starts an interval on",
            p.schedule.expr()
        ))
    })?;
    let store = open_store(&project)?;
    let clock = Arc::new(SystemClock);
    let now = nightshift_engine::Clock::now(clock.as_ref());
    let pk = match create_run(&store, &lp, iv, Trigger::Manual, now)? {
        Created::New(pk) => pk,
        Created::Existing(pk) => {
            let run = store
                .run(pk)?
                .ok_or_else(|| anyhow::anyhow!("run {pk} vanished"))?;
            if run.status.is_terminal() {
                if !rerun {
                    output::note(format!(
                        "run {} of `{name}` (ds {}) already finished: {}\n  = help: add --rerun to run it again; its history is kept",
                        run.run_id, run.ds, run.status
                    ));
                    return Ok(if run.status == RunState::Success {
                        0
                    } else {
                        1
                    });
                }
                nightshift_engine::engine::rerun(&store, &lp, pk, Trigger::Manual, now)?;
            } else {
                output::note(format!(
                    "run {} is already {}; following it",
                    run.run_id, run.status
                ));
            }
            pk
        }
    };
    let engine = new_engine(
        project,
        store.clone(),
        clock,
        Mode::Runs(HashSet::from([pk])),
    )?;
    drive(engine, |e| match &e {
        Event::TaskRetrying {
            task_id,
            try_number,
            next_try_at,
            ..
        } => output::note(format!(
            "  {task_id}: try {try_number} failed; retrying at {next_try_at}"
        )),
        Event::TaskEnded { .. } => output::line(event_line(&e).unwrap_or_default()),
        Event::RunEnded { .. } | Event::Deadline { .. } => {}
    })
    .await?;
    let run = store
        .run(pk)?
        .ok_or_else(|| anyhow::anyhow!("run {pk} vanished"))?;
    output::note(format!(
        "Run {} {} (ds {}): {}, rows_loaded={}",
        run.pipeline, run.run_id, run.ds, run.status, run.rows_loaded
    ));
    Ok(match run.status {
        RunState::Success => 0,
        RunState::Failed => 1,
        // Interrupted (SIGTERM): resumable, not finished.
        _ => 1,
    })
}
