//! What the pages and the API show, assembled from the store and the pipeline files. The
//! API serializes these same structures, so it carries everything the UI shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nightshift_core::time::{from_micros, to_micros};
use nightshift_core::{Pipeline, TaskKind};
use nightshift_store::{DbtNode, RunRow, TiRow, TryRow};
use serde::Serialize;
use serde_json::Value;

use crate::{AppState, WebError};

fn ts(us: Option<i64>) -> Option<String> {
    us.map(|u| from_micros(u).to_string())
}

#[derive(Serialize, Clone)]
pub struct PipelineSummary {
    pub name: String,
    pub description: Option<String>,
    pub schedule: String,
    pub timezone: String,
    pub paused: bool,
    pub next_run_at: Option<String>,
    /// The newest run, whatever its state (queued ones included).
    pub last_run: Option<RunSummary>,
    /// The newest finished run: where a failure shows.
    pub last_finished_run: Option<RunSummary>,
    pub deadline: Option<String>,
    /// met, on_track, at_risk or missed: the latest scheduled run's standing (the only
    /// runs judged are the latest interval's).
    pub deadline_state: Option<String>,
    /// Runs of intervals that started in the last 7 days and failed.
    pub failures_7d: u32,
    pub tasks: Vec<TaskInfo>,
}

#[derive(Serialize, Clone)]
pub struct TaskInfo {
    pub id: String,
    pub kind: String,
    pub depends_on: Vec<String>,
}

#[derive(Serialize, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub ds: String,
    pub state: String,
    pub trigger: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    pub queued_at: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub rows_loaded: i64,
    pub deadline_at: Option<String>,
    pub deadline_state: Option<String>,
    pub forecast_at: Option<String>,
    #[serde(skip)]
    pub interval_start_us: i64,
}

impl RunSummary {
    pub fn from_row(r: &RunRow, d: Option<&nightshift_store::DeadlineRow>) -> RunSummary {
        RunSummary {
            run_id: r.run_id.clone(),
            ds: r.ds.to_string(),
            state: r.status.as_str().to_owned(),
            trigger: r.trigger.as_str().to_owned(),
            data_interval_start: from_micros(r.data_interval_start).to_string(),
            data_interval_end: from_micros(r.data_interval_end).to_string(),
            queued_at: ts(Some(r.queued_at)),
            start_time: ts(r.start_time),
            end_time: ts(r.end_time),
            duration_ms: match (r.start_time, r.end_time) {
                (Some(s), Some(e)) => Some((e - s) / 1000),
                _ => None,
            },
            rows_loaded: r.rows_loaded,
            deadline_at: d.and_then(|d| ts(d.deadline_at)),
            deadline_state: d.and_then(|d| d.state.clone()),
            forecast_at: d.and_then(|d| ts(d.forecast_at)),
            interval_start_us: r.data_interval_start,
        }
    }
}

#[derive(Serialize)]
pub struct GridPage {
    pub pipeline: PipelineSummary,
    /// Newest first.
    pub runs: Vec<GridRun>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

#[derive(Serialize)]
pub struct GridRun {
    pub run: RunSummary,
    /// Task id → state and try number.
    pub tasks: BTreeMap<String, CellState>,
}

#[derive(Serialize, Clone)]
pub struct CellState {
    pub state: String,
    pub try_number: u32,
}

#[derive(Serialize)]
pub struct RunDetail {
    pub pipeline: String,
    pub run: RunSummary,
    pub tasks: Vec<TaskDetail>,
    pub dbt: Vec<DbtResult>,
    /// Completeness and check figures the extract tasks reported.
    pub quality: Vec<QualityFigure>,
    pub published: Vec<Published>,
    pub events: Vec<EventRow>,
    /// Why the run and each task are where they are (`nightshift explain`).
    pub reasons: Vec<nightshift_engine::explain::Reason>,
}

#[derive(Serialize)]
pub struct TaskDetail {
    pub task_id: String,
    pub kind: String,
    pub depends_on: Vec<String>,
    pub state: String,
    pub try_number: u32,
    pub max_tries: u32,
    pub next_try_at: Option<String>,
    pub tries: Vec<TryDetail>,
}

#[derive(Serialize, Clone)]
pub struct TryDetail {
    pub try_number: u32,
    pub state: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub host: String,
    pub pid: Option<i64>,
    pub error: Option<String>,
    pub rows_loaded: Option<i64>,
    pub has_log: bool,
    #[serde(skip)]
    pub start_us: i64,
    #[serde(skip)]
    pub end_us: Option<i64>,
    /// When the try became ready to run (its queued time), if known.
    #[serde(skip)]
    pub queued_us: Option<i64>,
}

#[derive(Serialize)]
pub struct DbtResult {
    pub task_id: String,
    pub try_number: u32,
    pub unique_id: String,
    pub resource_type: String,
    pub status: String,
    pub execution_time: Option<f64>,
    pub failures: Option<i64>,
    pub message: Option<String>,
}

#[derive(Serialize)]
pub struct QualityFigure {
    pub task_id: String,
    pub name: String,
    pub value: Value,
}

#[derive(Serialize)]
pub struct Published {
    pub output: String,
    pub path: String,
    pub manifest: Option<Value>,
}

#[derive(Serialize)]
pub struct EventRow {
    pub at: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub state: String,
    pub detail: Option<String>,
}

#[derive(Serialize)]
pub struct CalendarDay {
    pub ds: String,
    /// done, failed, running, queued, missing, or future.
    pub state: String,
    pub run_id: Option<String>,
}

impl AppState {
    pub fn summary(&self, name: &str) -> Result<PipelineSummary, WebError> {
        let p = self.pipeline(name)?;
        let paused = self.store.paused_pipelines()?.iter().any(|x| x == name);
        let now = self.now();
        let (last, finished) = self.store.last_runs(name)?;
        let scheduled = match self
            .store
            .latest_interval_start(name, Some(nightshift_core::Trigger::Scheduled))?
        {
            Some(start) => self.store.find_run_by_interval(name, start)?,
            None => None,
        };
        let pks: Vec<i64> = [&last, &finished, &scheduled]
            .into_iter()
            .flatten()
            .map(|r| r.pk)
            .collect();
        let deadlines = self.store.deadlines_of(&pks)?;
        let deadline_state = scheduled
            .as_ref()
            .and_then(|r| deadlines.get(&r.pk))
            .and_then(|d| d.state.clone());
        let week_ago = nightshift_core::time::to_micros(now) - 7 * 86_400 * 1_000_000;
        let failures_7d = self
            .store
            .runs_between(name, week_ago, i64::MAX)?
            .iter()
            .filter(|r| r.status == nightshift_core::RunState::Failed)
            .count() as u32;
        let last = last.map(|r| RunSummary::from_row(&r, deadlines.get(&r.pk)));
        let last_finished_run = finished.map(|r| RunSummary::from_row(&r, deadlines.get(&r.pk)));
        Ok(PipelineSummary {
            name: p.name.clone(),
            description: p.description.clone(),
            schedule: p.schedule.expr().to_owned(),
            timezone: p.schedule.tz_name().to_owned(),
            paused,
            next_run_at: p.schedule.next_fire(now).ok().map(|t| t.to_string()),
            deadline_state,
            last_run: last,
            last_finished_run,
            failures_7d,
            deadline: p.deadline.map(|d| d.to_string()),
            tasks: p
                .tasks
                .iter()
                .map(|t| TaskInfo {
                    id: t.id.clone(),
                    kind: t.kind.name().to_owned(),
                    depends_on: t.depends_on.clone(),
                })
                .collect(),
        })
    }

    pub fn grid(&self, name: &str, before: Option<i64>, limit: u32) -> Result<GridPage, WebError> {
        let pipeline = self.summary(name)?;
        let mut runs = self.store.runs_page(name, before, limit + 1)?;
        let next_before = if runs.len() > limit as usize {
            runs.truncate(limit as usize);
            runs.last().map(|r| r.data_interval_start)
        } else {
            None
        };
        let pks: Vec<i64> = runs.iter().map(|r| r.pk).collect();
        let deadlines = self.store.deadlines_of(&pks)?;
        let mut cells: HashMap<i64, BTreeMap<String, CellState>> = HashMap::new();
        for ti in self.store.task_instances_of(&pks)? {
            cells.entry(ti.run_pk).or_default().insert(
                ti.task_id.clone(),
                CellState {
                    state: ti.state.as_str().to_owned(),
                    try_number: ti.try_number,
                },
            );
        }
        Ok(GridPage {
            pipeline,
            runs: runs
                .iter()
                .map(|r| GridRun {
                    run: RunSummary::from_row(r, deadlines.get(&r.pk)),
                    tasks: cells.remove(&r.pk).unwrap_or_default(),
                })
                .collect(),
            next_before,
        })
    }

    pub fn find_run(&self, name: &str, run_id: &str) -> Result<RunRow, WebError> {
        self.store
            .find_run(name, run_id)?
            .ok_or_else(|| WebError::NotFound(format!("no run `{run_id}` of pipeline `{name}`")))
    }

    pub fn run_detail(
        &self,
        name: &str,
        run_id: &str,
    ) -> Result<(RunDetail, Arc<Pipeline>), WebError> {
        let run = self.find_run(name, run_id)?;
        let p = self
            .version(&run.version)
            .or_else(|_| self.pipeline(name))?;
        let deadline = self.store.deadline(run.pk)?;
        let tis = self.store.task_instances(run.pk)?;
        let tries = self.store.tries(run.pk)?;
        let events = self.store.events(run.pk)?;
        let mut tasks = vec![];
        for t in p.topological_order() {
            let ti = tis.iter().find(|x| x.task_id == t.id);
            tasks.push(task_detail(
                t.id.clone(),
                t.kind.name(),
                &t.depends_on,
                ti,
                &tries,
                &events,
            ));
        }
        // Tasks of the run that this version no longer has.
        for ti in tis.iter().filter(|x| p.task(&x.task_id).is_none()) {
            tasks.push(task_detail(
                ti.task_id.clone(),
                "removed",
                &[],
                Some(ti),
                &tries,
                &events,
            ));
        }
        let dbt = self
            .store
            .dbt_nodes(run.pk)?
            .into_iter()
            .map(
                |(task_id, try_number, n): (String, u32, DbtNode)| DbtResult {
                    task_id,
                    try_number,
                    unique_id: n.unique_id,
                    resource_type: n.resource_type,
                    status: n.status,
                    execution_time: n.execution_time,
                    failures: n.failures,
                    message: n.message,
                },
            )
            .collect();
        let mut quality = vec![];
        for t in tries
            .iter()
            .filter(|t| t.state == nightshift_core::TaskState::Success)
        {
            if let Some(Ok(Value::Object(m))) =
                t.metrics.as_deref().map(serde_json::from_str::<Value>)
            {
                for (k, v) in m {
                    quality.push(QualityFigure {
                        task_id: t.task_id.clone(),
                        name: k,
                        value: v,
                    });
                }
            }
        }
        let mut published = vec![];
        for t in &p.tasks {
            if let TaskKind::Publish(spec) = &t.kind {
                for o in &spec.outputs {
                    let rel = format!("{}/{o}/dt={}", spec.output.trim_end_matches('/'), run.ds);
                    let manifest =
                        std::fs::read_to_string(self.project_dir.join(&rel).join("_manifest.json"))
                            .ok()
                            .and_then(|s| serde_json::from_str(&s).ok());
                    published.push(Published {
                        output: o.clone(),
                        path: rel,
                        manifest,
                    });
                }
            }
        }
        let reasons = nightshift_engine::explain::explain(
            &self.store,
            &self.project().settings,
            &p,
            &run,
            None,
            self.now(),
        )?;
        Ok((
            RunDetail {
                reasons,
                pipeline: name.to_owned(),
                run: RunSummary::from_row(&run, Some(&deadline)),
                tasks,
                dbt,
                quality,
                published,
                events: history(events, &tries),
            },
            p,
        ))
    }

    /// Days from `from` to `to` with the state of their partition.
    pub fn calendar(
        &self,
        name: &str,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
    ) -> Result<Vec<CalendarDay>, WebError> {
        let p = self.pipeline(name)?;
        let tz = p.schedule.tz();
        let lo =
            nightshift_core::time::resolve(tz, from.to_datetime(jiff::civil::Time::midnight()));
        let hi = nightshift_core::time::resolve(
            tz,
            to.tomorrow()
                .unwrap_or(to)
                .to_datetime(jiff::civil::Time::midnight()),
        );
        // Runs whose ds falls in the range start within a day of it.
        let runs = self.store.runs_between(
            name,
            to_micros(lo) - 86_400_000_000 * 2,
            to_micros(hi) + 86_400_000_000,
        )?;
        let mut by_ds: HashMap<jiff::civil::Date, Vec<&RunRow>> = HashMap::new();
        for r in &runs {
            by_ds.entry(r.ds).or_default().push(r);
        }
        let now = self.now();
        let mut out = vec![];
        let mut d = from;
        while d <= to {
            let ds = d.to_string();
            let runs = by_ds.get(&d);
            let (state, run_id) = match runs {
                Some(rs) => {
                    use nightshift_core::RunState::*;
                    let worst = rs
                        .iter()
                        .map(|r| match r.status {
                            Failed => 5,
                            Running => 4,
                            Queued => 3,
                            Cancelled => 2,
                            Success => 1,
                        })
                        .max()
                        .unwrap_or(0);
                    let state = match worst {
                        5 => "failed",
                        4 => "running",
                        3 => "queued",
                        2 => "cancelled",
                        _ => "done",
                    };
                    (state, rs.first().map(|r| r.run_id.clone()))
                }
                None => {
                    let iv = p.schedule.interval_for_ds(d).ok().flatten();
                    match iv {
                        Some(iv) if iv.end <= now && p.in_range(&iv) => ("missing", None),
                        Some(iv) if iv.end > now => ("future", None),
                        _ => ("none", None),
                    }
                }
            };
            out.push(CalendarDay {
                ds,
                state: state.to_owned(),
                run_id,
            });
            d = match d.tomorrow() {
                Ok(n) => n,
                Err(_) => break,
            };
        }
        Ok(out)
    }
}

fn task_detail(
    id: String,
    kind: &str,
    deps: &[String],
    ti: Option<&TiRow>,
    tries: &[TryRow],
    events: &[nightshift_store::EventRecord],
) -> TaskDetail {
    let mut mine: Vec<TryDetail> = vec![];
    for t in tries.iter().filter(|t| t.task_id == id) {
        // The try was ready from the last time its task was queued (or set up for retry)
        // before it started.
        let queued_us = events
            .iter()
            .filter(|e| {
                e.task_id.as_deref() == Some(id.as_str())
                    && (e.state == "QUEUED" || e.state == "UP_FOR_RETRY")
                    && e.at <= t.start_time
            })
            .map(|e| e.at)
            .max();
        mine.push(TryDetail {
            try_number: t.try_number,
            state: t.state.as_str().to_owned(),
            start_time: from_micros(t.start_time).to_string(),
            end_time: ts(t.end_time),
            duration_ms: t.duration_ms,
            exit_code: t.exit_code,
            signal: t.signal,
            host: t.host.clone(),
            pid: t.pid,
            error: t.error.clone(),
            rows_loaded: t.rows_loaded,
            has_log: t.log_path.is_some(),
            start_us: t.start_time,
            end_us: t.end_time,
            queued_us,
        });
    }
    TaskDetail {
        task_id: id,
        kind: kind.to_owned(),
        depends_on: deps.to_vec(),
        state: ti.map(|t| t.state.as_str()).unwrap_or("NONE").to_owned(),
        try_number: ti.map(|t| t.try_number).unwrap_or(0),
        max_tries: ti.map(|t| t.max_tries).unwrap_or(0),
        next_try_at: ti.and_then(|t| ts(t.next_try_at)),
        tries: mine,
    }
}

/// A run's whole history in time order: the recorded state changes (the run's, and each
/// task's queueing, clearing and marking) with every try's start and end between them.
fn history(
    events: Vec<nightshift_store::EventRecord>,
    tries: &[nightshift_store::TryRow],
) -> Vec<EventRow> {
    let mut all: Vec<(i64, u8, EventRow)> = events
        .into_iter()
        .map(|e| {
            (
                e.at,
                0,
                EventRow {
                    at: from_micros(e.at).to_string(),
                    task_id: e.task_id,
                    try_number: e.try_number,
                    state: e.state,
                    detail: e.detail,
                },
            )
        })
        .collect();
    for t in tries {
        all.push((
            t.start_time,
            1,
            EventRow {
                at: from_micros(t.start_time).to_string(),
                task_id: Some(t.task_id.clone()),
                try_number: Some(t.try_number),
                state: "RUNNING".into(),
                detail: Some(format!("on {}", t.host)),
            },
        ));
        if let Some(end) = t.end_time {
            all.push((
                end,
                2,
                EventRow {
                    at: from_micros(end).to_string(),
                    task_id: Some(t.task_id.clone()),
                    try_number: Some(t.try_number),
                    state: t.state.as_str().to_owned(),
                    detail: t.error.clone(),
                },
            ));
        }
    }
    all.sort_by_key(|(at, order, _)| (*at, *order));
    all.into_iter().map(|(_, _, e)| e).collect()
}
