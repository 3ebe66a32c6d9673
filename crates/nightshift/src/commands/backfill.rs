use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nightshift_core::time::to_micros;
use nightshift_core::{RunState, Trigger};
use nightshift_engine::engine::create_run;
use nightshift_engine::{Clock, Event, Mode, SystemClock};

use crate::commands::{
    drive, event_line, load_project, new_engine, open_store, parse_date_flag, require_pipeline,
    usage,
};
use crate::output;

#[derive(Debug, PartialEq)]
enum Plan {
    New,
    Done,
    Rerun,
    InProgress,
}

pub async fn exec(
    dir: &Path,
    name: &str,
    from: &str,
    to: &str,
    rerun: bool,
    dry_run: bool,
) -> Result<i32> {
    let project = load_project(dir)?;
    let lp = require_pipeline(&project, name)?;
    let p = lp.pipeline.clone();
    let from = parse_date_flag("--from", from)?;
    let to = parse_date_flag("--to", to)?;
    if to < from {
        return Err(usage(format!("--to {to} is before --from {from}")));
    }
    let clock = Arc::new(SystemClock);
    let now = clock.now();
    let (intervals, cut) = p
        .intervals_between(from, to, now, 100_000)
        .map_err(|e| usage(e.to_string()))?;
    if cut {
        output::note("note: intervals of the range that have not ended yet are left out");
    }
    if intervals.is_empty() {
        return Err(usage(format!(
            "no ended interval of `{name}` has a ds between {from} and {to}"
        )));
    }
    let store = open_store(&project)?;
    let mut plan = vec![];
    for iv in &intervals {
        let existing = store.find_run_by_interval(&p.name, to_micros(iv.start))?;
        let step = match existing.as_ref().map(|r| r.status) {
            None => Plan::New,
            Some(RunState::Success) if !rerun => Plan::Done,
            Some(RunState::Success) | Some(RunState::Failed) => Plan::Rerun,
            Some(_) => Plan::InProgress,
        };
        plan.push((*iv, step, existing));
    }
    if dry_run {
        output::table(
            &["DS", "RUN_ID", "PLAN"],
            &plan
                .iter()
                .map(|(iv, step, existing)| {
                    let what = match step {
                        Plan::New => "new".to_owned(),
                        Plan::Done => "skip (already SUCCESS; --rerun to run again)".to_owned(),
                        Plan::Rerun => format!(
                            "rerun (was {})",
                            existing.as_ref().map(|r| r.status.as_str()).unwrap_or("-")
                        ),
                        Plan::InProgress => format!(
                            "follow (already {})",
                            existing.as_ref().map(|r| r.status.as_str()).unwrap_or("-")
                        ),
                    };
                    vec![p.schedule.ds(iv).to_string(), p.schedule.run_id(iv), what]
                })
                .collect::<Vec<_>>(),
        );
        let count = |s: Plan| plan.iter().filter(|(_, st, _)| *st == s).count();
        output::note(format!(
            "dry run: {} new, {} rerun, {} skipped, {} in progress; nothing was changed",
            count(Plan::New),
            count(Plan::Rerun),
            count(Plan::Done),
            count(Plan::InProgress)
        ));
        return Ok(0);
    }
    let mut pks = HashSet::new();
    let mut skipped = 0;
    for (iv, step, existing) in &plan {
        match step {
            Plan::Done => skipped += 1,
            Plan::New => {
                pks.insert(create_run(&store, &lp, *iv, Trigger::Backfill, now)?.pk());
            }
            Plan::Rerun => {
                let run = existing.as_ref().expect("rerun has a run");
                nightshift_engine::engine::rerun(&store, &lp, run.pk, Trigger::Backfill, now)?;
                pks.insert(run.pk);
            }
            Plan::InProgress => {
                pks.insert(existing.as_ref().expect("in progress has a run").pk);
            }
        }
    }
    if skipped > 0 {
        output::note(format!(
            "{skipped} interval(s) already succeeded and were skipped (--rerun to run them again)"
        ));
    }
    let total = pks.len() as u64;
    if total == 0 {
        return Ok(0);
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let engine = new_engine(project, store.clone(), clock, Mode::Runs(pks.clone()))?;
    let mut failed = 0;
    drive(engine, |e| {
        if let Event::RunEnded { state, .. } = &e {
            failed += usize::from(*state != RunState::Success);
            bar.inc(1);
        }
        if let Some(line) = event_line(&e) {
            bar.suspend(|| output::line(line));
        }
    })
    .await?;
    bar.finish_and_clear();
    let mut unfinished = 0;
    for pk in &pks {
        if store.run(*pk)?.is_some_and(|r| !r.status.is_terminal()) {
            unfinished += 1;
        }
    }
    output::note(format!(
        "backfill of `{name}` {from}..{to}: {total} run(s), {failed} failed, {unfinished} unfinished"
    ));
    Ok(if failed == 0 && unfinished == 0 { 0 } else { 1 })
}
