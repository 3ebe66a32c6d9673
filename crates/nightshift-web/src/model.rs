//! What the pages and the API show, assembled from the store and the pipeline files. The
//! API serializes these same structures, so it carries everything the UI shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nightshift_core::time::{from_micros, to_micros};
use nightshift_core::{Pipeline, TaskKind};
pub use nightshift_engine::view::{DbtResult, PipelineSummary, Run, TaskInfo, TaskInstance, Try};
use nightshift_store::{RunFilter, RunRow};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{AppState, WebError};

/// An optional query value that names one of a few choices (`None` when absent or empty).
fn query_choice<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    key: &str,
    case: fn(&str) -> String,
    choices: &str,
) -> Result<Option<T>, WebError> {
    match q.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => case(v).parse().map(Some).map_err(|_| {
            WebError::BadRequest(format!("`{key}` must be one of {choices}, not `{v}`"))
        }),
    }
}

/// Which page of the grid to show, and which runs.
#[derive(Debug, Clone, Copy)]
pub struct GridQuery {
    pub before: Option<i64>,
    pub limit: u32,
    pub filter: RunFilter,
}

impl GridQuery {
    pub fn newest(limit: u32) -> GridQuery {
        GridQuery {
            before: None,
            limit,
            filter: RunFilter::default(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GridPage {
    pub pipeline: PipelineSummary,
    /// Newest first.
    pub runs: Vec<GridRun>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct GridRun {
    pub run: Run,
    /// Task id → state and try number.
    pub tasks: BTreeMap<String, CellState>,
}

#[derive(Serialize, Clone, ToSchema)]
pub struct CellState {
    pub state: String,
    pub try_number: u32,
}

#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    pub pipeline: String,
    pub run: Run,
    pub tasks: Vec<TaskInstance>,
    pub dbt: Vec<DbtResult>,
    /// Completeness and check figures the extract tasks reported.
    pub quality: Vec<QualityFigure>,
    pub published: Vec<Published>,
    pub events: Vec<EventRow>,
    /// Why the run and each task are where they are (`nightshift explain`).
    pub reasons: Vec<nightshift_engine::explain::Reason>,
}

#[derive(Serialize, ToSchema)]
pub struct QualityFigure {
    pub task_id: String,
    pub name: String,
    pub value: Value,
}

#[derive(Serialize, ToSchema)]
pub struct Published {
    pub output: String,
    pub path: String,
    pub manifest: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct EventRow {
    pub at: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub state: String,
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
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
        Ok(PipelineSummary::build(&self.store, &p, paused, self.now())?)
    }

    /// The grid's page and filter from a query: `limit` (at most `max_limit`), `before`
    /// (the previous page's `next_before`), `state` and `trigger` (only such runs), and
    /// `date` (jump: runs whose ds is on or before that day). A wrong value is a 400 that
    /// names it.
    pub fn grid_query(
        &self,
        name: &str,
        q: &HashMap<String, String>,
        max_limit: i64,
    ) -> Result<GridQuery, WebError> {
        let limit = crate::api::query_int(q, "limit", 1, max_limit)?.unwrap_or(25) as u32;
        let mut before = crate::api::query_int(q, "before", i64::MIN, i64::MAX)?;
        let filter = RunFilter {
            state: query_choice(
                q,
                "state",
                str::to_uppercase,
                "QUEUED, RUNNING, SUCCESS, FAILED, CANCELLED",
            )?,
            trigger: query_choice(
                q,
                "trigger",
                str::to_lowercase,
                "scheduled, manual, backfill",
            )?,
        };
        if let Some(day) = q.get("date").filter(|s| !s.trim().is_empty()) {
            let day = crate::api::date_field(day.trim(), "date")?;
            let p = self.pipeline(name)?;
            // ds is the local date of an interval's start: runs on or before `day` start
            // before the next local midnight.
            let next = day.tomorrow().unwrap_or(day);
            let edge = nightshift_core::time::resolve(
                p.schedule.tz(),
                next.to_datetime(jiff::civil::Time::midnight()),
            );
            before = Some(before.map_or(to_micros(edge), |b| b.min(to_micros(edge))));
        }
        Ok(GridQuery {
            before,
            limit,
            filter,
        })
    }

    pub fn grid(&self, name: &str, g: &GridQuery) -> Result<GridPage, WebError> {
        let (before, limit, filter) = (g.before, g.limit, g.filter);
        let pipeline = self.summary(name)?;
        let mut runs = self.store.runs_page(name, before, limit + 1, filter)?;
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
                    run: Run::from_row(r, deadlines.get(&r.pk)),
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
        let tasks = TaskInstance::all_of(&p, &tis, &tries, &events);
        let dbt = self
            .store
            .dbt_nodes(run.pk)?
            .into_iter()
            .map(|(task_id, try_number, n)| DbtResult::from_row(task_id, try_number, n))
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
                run: Run::from_row(&run, Some(&deadline)),
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
