//! `nightshift explain`: why a run or task is where it is, in words, from the store and
//! the pipeline version the run executes. Reads only.

use std::collections::HashMap;

use jiff::Timestamp;
use nightshift_core::kinds::{SensorCondition, TaskKind};
use nightshift_core::time::from_micros;
use nightshift_core::{Pipeline, RunState, TaskState, Trigger};
use nightshift_store::{RunRow, Store, TiRow};

/// One finding: what it is about (`None`: the run) and why.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Reason {
    pub task_id: Option<String>,
    pub state: String,
    pub reason: String,
}

fn at(us: i64) -> String {
    from_micros(us).to_string()
}

/// Explains the run, then each task (or just `only`).
pub fn explain(
    store: &Store,
    settings: &nightshift_core::ProjectSettings,
    p: &Pipeline,
    run: &RunRow,
    only: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Reason>, nightshift_store::Error> {
    let mut out = vec![];
    let tis = store.task_instances(run.pk)?;
    let tries = store.tries(run.pk)?;
    let paused = store.paused_pipelines()?.iter().any(|x| x == &run.pipeline);
    let deadline = store.deadline(run.pk)?;
    let store_now = store.now_us()?;
    let scheduler = store
        .scheduler_lease()?
        .filter(|l| l.expires_at > store_now);

    let mut run_reasons = vec![];
    match run.status {
        RunState::Queued => {
            if paused {
                run_reasons.push(format!(
                    "pipeline `{}` is paused: the scheduler starts none of its runs (`nightshift unpause {}`)",
                    run.pipeline, run.pipeline
                ));
            }
            let backfill = run.trigger == Trigger::Backfill;
            let running: Vec<RunRow> = store
                .running_runs(&run.pipeline)?
                .into_iter()
                .filter(|r| (r.trigger == Trigger::Backfill) == backfill)
                .collect();
            if running.len() as u32 >= p.max_active_runs {
                let ids: Vec<&str> = running.iter().map(|r| r.run_id.as_str()).collect();
                run_reasons.push(format!(
                    "max_active_runs ({}) reached{}: running {}",
                    p.max_active_runs,
                    if backfill { " for backfill runs" } else { "" },
                    ids.join(", ")
                ));
            }
            if run_reasons.is_empty() {
                run_reasons.push(if scheduler.is_some() {
                    "queued; the scheduler starts it at its next pass".into()
                } else {
                    "queued, and no scheduler is running: start `nightshift up` (or `nightshift run`)".into()
                });
            }
        }
        RunState::Running => {
            run_reasons.push(format!(
                "running since {}",
                run.start_time.map(at).unwrap_or_default()
            ));
            if paused {
                run_reasons.push(format!(
                    "pipeline `{}` is paused: tasks already started finish, new runs wait",
                    run.pipeline
                ));
            }
        }
        RunState::Success => run_reasons.push(format!(
            "succeeded at {}",
            run.end_time.map(at).unwrap_or_default()
        )),
        RunState::Cancelled => run_reasons.push(format!(
            "cancelled at {}; `nightshift rerun {}` runs it again",
            run.end_time.map(at).unwrap_or_default(),
            run.run_id
        )),
        RunState::Failed => {
            let failed: Vec<&str> = tis
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .map(|t| t.task_id.as_str())
                .collect();
            run_reasons.push(format!(
                "failed at {}: task(s) {} failed (see below); `nightshift clear {} --task T --downstream` runs them again",
                run.end_time.map(at).unwrap_or_default(),
                failed.join(", "),
                run.run_id
            ));
        }
    }
    if let (Some(state), Some(d)) = (deadline.state.as_deref(), deadline.deadline_at) {
        match state {
            "missed" => run_reasons.push(format!("deadline missed: it was {}", at(d))),
            "at_risk" => run_reasons.push(format!(
                "deadline at risk: forecast finish {} is after the deadline {}",
                deadline.forecast_at.map(at).unwrap_or_default(),
                at(d)
            )),
            _ => {}
        }
    }
    if only.is_none() {
        for r in run_reasons {
            out.push(Reason {
                task_id: None,
                state: run.status.as_str().to_owned(),
                reason: r,
            });
        }
    }

    let by_id: HashMap<&str, &TiRow> = tis.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let now_us = nightshift_core::time::to_micros(now);
    let events = store.events(run.pk)?;
    let running_in_pipeline: i64 = store
        .live_task_counts()?
        .into_iter()
        .filter(|(pl, s, _)| pl == &run.pipeline && s == "RUNNING")
        .map(|(_, _, n)| n)
        .sum();
    for task in p.topological_order() {
        if only.is_some_and(|o| o != task.id) {
            continue;
        }
        let Some(ti) = by_id.get(task.id.as_str()) else {
            continue;
        };
        let last = tries
            .iter()
            .filter(|t| t.ti_pk == ti.pk)
            .max_by_key(|t| t.try_number);
        let marked = events
            .iter()
            .rev()
            .find(|e| {
                e.task_id.as_deref() == Some(task.id.as_str())
                    && e.detail.as_deref().is_some_and(|d| d.starts_with("marked"))
            })
            .and_then(|e| e.detail.clone());
        let reason = match ti.state {
            TaskState::Pending => {
                let waiting: Vec<String> = task
                    .depends_on
                    .iter()
                    .filter_map(|u| by_id.get(u.as_str()).map(|t| (u, t.state)))
                    .filter(|(_, s)| !s.is_terminal())
                    .map(|(u, s)| format!("{u} ({s})"))
                    .collect();
                if run.status == RunState::Queued {
                    "waiting for its run to start (see the run's reason)".to_owned()
                } else if waiting.is_empty() {
                    "its upstreams are done; the scheduler decides at its next pass".to_owned()
                } else {
                    format!("waiting for upstream {}", waiting.join(", "))
                }
            }
            TaskState::Queued => {
                let sensor = matches!(task.kind, TaskKind::Sensor(_)) && ti.pokes > 0;
                if sensor {
                    let cond = match &task.kind {
                        TaskKind::Sensor(s) => match &s.condition {
                            SensorCondition::Sql { connection, sql } => {
                                format!("`{}` on `{connection}`", sql.trim())
                            }
                            SensorCondition::Path { path } => format!("path `{path}` to exist"),
                        },
                        _ => String::new(),
                    };
                    format!(
                        "sensor waiting since {} for {cond}; {} poke(s) so far, next at {}",
                        ti.waiting_since.map(at).unwrap_or_default(),
                        ti.pokes,
                        ti.next_try_at.map(at).unwrap_or_default()
                    )
                } else if let Some(pool) = &task.pool {
                    let slots = settings.pools.get(pool).copied().unwrap_or(1);
                    let users = store.pool_users(pool)?;
                    if users.len() as u32 >= slots {
                        let list: Vec<String> = users
                            .iter()
                            .map(|(p, r, t)| format!("{p} {r} {t}"))
                            .collect();
                        format!(
                            "ready, but pool `{pool}` is full ({} of {slots} slot(s) used by {})",
                            users.len(),
                            list.join(", ")
                        )
                    } else {
                        ready_reason(&scheduler)
                    }
                } else {
                    if running_in_pipeline as u32 >= p.max_active_tasks {
                        format!(
                            "ready, but max_active_tasks ({}) of `{}` are running",
                            p.max_active_tasks, run.pipeline
                        )
                    } else {
                        ready_reason(&scheduler)
                    }
                }
            }
            TaskState::UpForRetry => {
                let err = last.and_then(|t| t.error.clone()).unwrap_or_default();
                let next = ti.next_try_at.unwrap_or(now_us);
                format!(
                    "try {} of {} failed ({err}); retry {} of {} at {}{}",
                    ti.try_number,
                    ti.max_tries,
                    ti.try_number + 1,
                    ti.max_tries,
                    at(next),
                    if next <= now_us { " (due now)" } else { "" }
                )
            }
            TaskState::Running => format!(
                "running try {} of {} since {} (pid {} on `{}`)",
                ti.try_number,
                ti.max_tries,
                last.map(|t| at(t.start_time)).unwrap_or_default(),
                ti.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                ti.host.clone().unwrap_or_default()
            ),
            TaskState::Success => match &marked {
                Some(m) => m.clone(),
                None => format!("succeeded on try {} of {}", ti.try_number, ti.max_tries),
            },
            TaskState::Failed => match &marked {
                Some(m) => m.clone(),
                None => {
                    let how = last
                        .map(|t| match (t.exit_code, t.signal) {
                            (_, Some(s)) => format!(" (killed by signal {s})"),
                            (Some(c), _) => format!(" (exit code {c})"),
                            _ => String::new(),
                        })
                        .unwrap_or_default();
                    // A whole message (a dbt contract's column table) follows the line.
                    let error = last.and_then(|t| t.error.clone()).unwrap_or_default();
                    let (first, rest) = error.split_once('\n').unwrap_or((&error, ""));
                    let mut why = format!(
                        "failed after {} of {} tries: {first}{how}; log: `nightshift logs {} {} --pipeline {}`",
                        ti.try_number, ti.max_tries, run.run_id, task.id, run.pipeline
                    );
                    if !rest.trim().is_empty() {
                        why = format!("{why}\n{}", rest.trim_end());
                    }
                    why
                }
            },
            TaskState::UpstreamFailed => {
                let failed: Vec<&str> = task
                    .depends_on
                    .iter()
                    .filter(|u| by_id.get(u.as_str()).is_some_and(|t| t.state.is_failure()))
                    .map(String::as_str)
                    .collect();
                format!("not run: upstream {} failed", failed.join(", "))
            }
            TaskState::Skipped => "skipped by its trigger rule".to_owned(),
            TaskState::Cancelled => {
                "cancelled with its run; `nightshift clear` or `rerun` runs it again".to_owned()
            }
        };
        out.push(Reason {
            task_id: Some(task.id.clone()),
            state: ti.state.as_str().to_owned(),
            reason,
        });
    }
    Ok(out)
}

fn ready_reason(scheduler: &Option<nightshift_store::LeaseHolder>) -> String {
    match scheduler {
        Some(l) => format!(
            "ready; the scheduler (pid {} on `{}`) claims it when a slot of `parallelism` is free",
            l.pid, l.host
        ),
        None => "ready, and no scheduler is running: start `nightshift up`".to_owned(),
    }
}
