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
    cancel, drive_until, load_project, new_engine, open_store, parse_date_flag, require_pipeline,
    shutdown_signal, usage,
};
use crate::output;

#[derive(Debug, PartialEq)]
enum Plan {
    New,
    Done,
    Rerun,
    /// A cancelled run: its tasks that did not finish run again; what succeeded stays.
    Resume,
    InProgress,
}

pub async fn exec(
    dir: &Path,
    name: &str,
    from: &str,
    to: &str,
    rerun: bool,
    dry_run: bool,
    detach: bool,
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
            Some(RunState::Cancelled) => Plan::Resume,
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
                        Plan::Resume => "resume (was CANCELLED)".to_owned(),
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
            "dry run: {} new, {} rerun, {} resumed, {} skipped, {} in progress; nothing was changed",
            count(Plan::New),
            count(Plan::Rerun),
            count(Plan::Resume),
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
            Plan::Resume => {
                let run = existing.as_ref().expect("resume has a run");
                let tasks: Vec<(String, u32)> = store
                    .task_instances(run.pk)?
                    .into_iter()
                    .filter(|t| t.state == nightshift_core::TaskState::Cancelled)
                    .map(|t| {
                        let tries = p.task(&t.task_id).map_or(1, |d| d.max_tries());
                        (t.task_id, tries)
                    })
                    .collect();
                let list: Vec<(&str, u32)> = tasks.iter().map(|(t, n)| (t.as_str(), *n)).collect();
                if list.is_empty() {
                    // Cancelled after its last task ended but before the run was closed:
                    // nothing to run again; the run takes the outcome of its tasks.
                    let states = store.task_instances(run.pk)?.into_iter().map(|t| t.state);
                    let outcome = nightshift_core::state::run_outcome(states);
                    store.settle_run(run.pk, outcome.map(|o| o.as_str()), to_micros(now))?;
                } else {
                    store.clear_tasks(run.pk, &list, to_micros(now), "resumed by backfill")?;
                }
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
    if detach {
        output::note(format!(
            "{total} backfill run(s) of `{name}` queued; a running `nightshift up` runs them (`nightshift cancel {name} --backfill` stops them)"
        ));
        return Ok(0);
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs · {elapsed} elapsed · about {eta} left · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The bar counts from the store, so runs that a running `up` finishes count too; and it
    // names the ds being worked on.
    let span = {
        let mut starts = vec![];
        for pk in &pks {
            if let Some(r) = store.run(*pk)? {
                starts.push(r.data_interval_start);
            }
        }
        (
            starts.iter().copied().min().unwrap_or(0),
            starts.iter().copied().max().unwrap_or(0) + 1,
        )
    };
    let progress = {
        let (store, bar, pks, name) = (store.clone(), bar.clone(), pks.clone(), name.to_owned());
        tokio::spawn(async move {
            loop {
                if let Ok(runs) = store.runs_between(&name, span.0, span.1) {
                    let mine: Vec<_> = runs.iter().filter(|r| pks.contains(&r.pk)).collect();
                    let done = mine.iter().filter(|r| r.status.is_terminal()).count();
                    let failed = mine.iter().filter(|r| r.status == RunState::Failed).count();
                    let current = mine
                        .iter()
                        .filter(|r| r.status == RunState::Running)
                        .map(|r| r.ds)
                        .min();
                    bar.set_position(done as u64);
                    bar.set_message(match current {
                        Some(ds) => format!("ds {ds} running, {failed} failed"),
                        None => format!("{failed} failed"),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    };
    let engine = new_engine(project, store.clone(), clock, Mode::Runs(pks.clone()))?;
    let mut failed = 0;
    // Ctrl-C (or SIGTERM) stops the backfill: its unfinished runs are cancelled, so a
    // scheduler running beside does not carry them on, and its running tries are killed.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u32);
    let mut signals = shutdown_signal();
    let cancel_store = store.clone();
    let mine: Vec<i64> = pks.iter().copied().collect();
    let bar_for_cancel = bar.clone();
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cancelled_n = cancelled.clone();
    let watcher = tokio::spawn(async move {
        if signals.changed().await.is_err() {
            return;
        }
        bar_for_cancel.suspend(|| {
            match cancel::cancel(
                &cancel_store,
                &mine,
                "the foreground backfill was interrupted",
            ) {
                Ok(n) => cancelled_n.store(n, std::sync::atomic::Ordering::Relaxed),
                Err(e) => output::note(format!("error: cannot cancel the backfill's runs: {e:#}")),
            }
        });
        let _ = stop_tx.send(2);
        // A later signal changes nothing more; keep the sender for the engine.
        std::future::pending::<()>().await;
    });
    let mut lines = crate::commands::Lines::default();
    drive_until(
        engine,
        None,
        |e| {
            if let Event::RunEnded { state, .. } = &e {
                failed += usize::from(*state != RunState::Success && *state != RunState::Cancelled);
            }
            if let Some(line) = lines.line(&e) {
                bar.suspend(|| output::line(line));
            }
        },
        stop_rx,
    )
    .await?;
    watcher.abort();
    progress.abort();
    bar.finish_and_clear();
    let cancelled = cancelled.load(std::sync::atomic::Ordering::Relaxed);
    if cancelled > 0 {
        output::note(format!(
            "backfill of `{name}` interrupted: {cancelled} unfinished run(s) cancelled (the same `nightshift backfill` command runs them again)"
        ));
        return Ok(1);
    }
    let mut unfinished = 0;
    let mut failed_total = 0;
    for pk in &pks {
        match store.run(*pk)? {
            Some(r) if !r.status.is_terminal() => unfinished += 1,
            Some(r) if r.status == RunState::Failed => failed_total += 1,
            _ => {}
        }
    }
    // Runs a scheduler beside this command finished count as well as its own.
    let failed = failed.max(failed_total);
    output::note(format!(
        "backfill of `{name}` {from}..{to}: {total} run(s), {failed} failed, {unfinished} unfinished"
    ));
    Ok(if failed == 0 && unfinished == 0 { 0 } else { 1 })
}
