//! `nightshift demo`: the README's first command. Scaffolds the example project, rehearses
//! three nights on a simulated clock, backfills an earlier date, and summarises.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_engine::{Clock, Event, Mode, SimClock};

use crate::commands::{backfill, drive, load_project, new_engine, open_store, usage};
use crate::output;
use crate::scaffold;

const SIM_FROM: &str = "2024-06-01T23:00:00Z";
const SIM_UNTIL: &str = "2024-06-04T01:00:00Z";
const BACKFILL_DS: &str = "2024-05-31";

pub async fn exec(dir: &Path) -> Result<i32> {
    let written = scaffold::write_example(dir, false)?;
    if written.is_empty() {
        output::note(format!(
            "using the existing demo project in `{}`",
            dir.display()
        ));
    } else {
        output::note(format!(
            "scaffolded the example project in `{}`",
            dir.display()
        ));
    }
    let project = load_project(dir)?;
    if project.has_errors() {
        return Err(usage("the demo project has errors (see above)"));
    }
    let store = open_store(&project)?;

    output::note(format!(
        "\n== Three nights on a simulated clock ({SIM_FROM} .. {SIM_UNTIL}) =="
    ));
    let from: jiff::Timestamp = SIM_FROM.parse()?;
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new(from));
    let mut engine = new_engine(
        project,
        store.clone(),
        clock,
        Mode::Scheduler {
            until: Some(SIM_UNTIL.parse()?),
        },
    )?;
    engine
        .acquire_scheduler_lease()
        .map_err(|e| usage(e.to_string()))?;
    drive(engine, |e| match e {
        Event::TaskEnded {
            task_id,
            state,
            at,
            tz,
            ..
        } => output::line(output::task_line(&task_id, state, at, &tz)),
        Event::RunEnded {
            pipeline,
            run_id,
            ds,
            state,
            rows_loaded,
            ..
        } => output::line(format!(
            "Run {pipeline} {run_id} (ds {ds}): {state} rows_loaded={rows_loaded}\n"
        )),
        Event::TaskRetrying { .. } => {}
    })
    .await?;

    output::note(format!(
        "== Backfill of an earlier date (ds {BACKFILL_DS}) =="
    ));
    let code = backfill::exec(dir, "nightly", BACKFILL_DS, BACKFILL_DS, false, false).await?;

    output::note("\n== Summary ==");
    let runs = store.runs("nightly", 20)?;
    output::table(
        &["RUN_ID", "DS", "TRIGGER", "STATUS", "ROWS_LOADED"],
        &runs
            .iter()
            .map(|r| {
                vec![
                    r.run_id.clone(),
                    r.logical_date.clone(),
                    r.trigger.as_str().into(),
                    r.status.to_string(),
                    r.rows_loaded.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let d = dir.display();
    // Hints name the binary that is running, so they work after `cargo run` too.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nightshift".into());
    output::note(format!(
        "\nPublished data: {d}/data/marts/daily_revenue/dt=<ds>/\nRaw partitions: {d}/data/raw/orders/dt=<ds>/\nTry logs:       {d}/.nightshift/logs/nightly/<run_id>/<task>.try-<n>.log\n\nLook further:\n  {exe} --project {d} runs nightly\n  {exe} --project {d} tasks 20240602_0000\n  {exe} --project {d} logs 20240602_0000 extract_data\n  {exe} --project {d} next nightly"
    ));
    Ok(code)
}
