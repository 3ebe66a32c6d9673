//! The JSON shape of every object nightshift shows. The command line's `--json` and the
//! HTTP API (`/api/v1`, whose OpenAPI document has one schema per type here) serialize
//! these same types, so a field has one name everywhere; the README's "JSON" section
//! documents them once.
//!
//! Words follow the project's vocabulary: `ds` (never logical_date), `state` (for runs,
//! task instances and tries alike), times as RFC 3339 in UTC, durations in milliseconds
//! (`duration_ms`). A try's `log_path` is relative to the project folder, as the store
//! keeps it, so it means the same on every host.

use jiff::Timestamp;
use nightshift_core::Pipeline;
use nightshift_core::time::{from_micros, to_micros};
use nightshift_store::{
    AlertRow, AuditRow, DbtNode, DeadlineRow, EventRecord, RunRow, Store, TiRow, TryRow,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

fn iso(us: Option<i64>) -> Option<String> {
    us.map(|u| from_micros(u).to_string())
}

/// A pipeline run: one data interval of one pipeline.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct Run {
    pub run_id: String,
    pub pipeline: String,
    /// The interval's date in the pipeline's time zone (YYYY-MM-DD).
    pub ds: String,
    /// QUEUED, RUNNING, SUCCESS, FAILED or CANCELLED.
    pub state: String,
    /// scheduled, manual or backfill.
    pub trigger: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    pub queued_at: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub rows_loaded: i64,
    /// When the run must have finished, for runs judged against the pipeline's deadline.
    pub deadline_at: Option<String>,
    /// met, on_track, at_risk or missed.
    pub deadline_state: Option<String>,
    /// When the run is forecast to finish, from earlier durations.
    pub forecast_at: Option<String>,
    #[serde(skip)]
    pub interval_start_us: i64,
}

impl Run {
    pub fn from_row(r: &RunRow, d: Option<&DeadlineRow>) -> Run {
        Run {
            run_id: r.run_id.clone(),
            pipeline: r.pipeline.clone(),
            ds: r.ds.to_string(),
            state: r.status.as_str().to_owned(),
            trigger: r.trigger.as_str().to_owned(),
            data_interval_start: from_micros(r.data_interval_start).to_string(),
            data_interval_end: from_micros(r.data_interval_end).to_string(),
            queued_at: iso(Some(r.queued_at)),
            start_time: iso(r.start_time),
            end_time: iso(r.end_time),
            duration_ms: match (r.start_time, r.end_time) {
                (Some(s), Some(e)) => Some((e - s) / 1000),
                _ => None,
            },
            rows_loaded: r.rows_loaded,
            deadline_at: d.and_then(|d| iso(d.deadline_at)),
            deadline_state: d.and_then(|d| d.state.clone()),
            forecast_at: d.and_then(|d| iso(d.forecast_at)),
            interval_start_us: r.data_interval_start,
        }
    }
}

/// One try of a task instance: one process, or one poke of a sensor.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct Try {
    pub try_number: u32,
    pub state: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub host: String,
    pub pid: Option<i64>,
    /// The log file, relative to the project folder (absolute only when it lies outside).
    pub log_path: Option<String>,
    pub has_log: bool,
    pub error: Option<String>,
    /// A problem that did not change the outcome (the log could not be written).
    pub warning: Option<String>,
    pub rows_loaded: Option<i64>,
    /// Figures the task reported (row counts, check results).
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    #[serde(skip)]
    pub start_us: i64,
    #[serde(skip)]
    pub end_us: Option<i64>,
    /// When the try became ready to run (its queued time), if known.
    #[serde(skip)]
    pub queued_us: Option<i64>,
}

impl Try {
    pub fn from_row(t: &TryRow) -> Try {
        Try {
            try_number: t.try_number,
            state: t.state.as_str().to_owned(),
            start_time: from_micros(t.start_time).to_string(),
            end_time: iso(t.end_time),
            duration_ms: t.duration_ms,
            exit_code: t.exit_code,
            signal: t.signal,
            host: t.host.clone(),
            pid: t.pid,
            log_path: t.log_path.clone(),
            has_log: t.log_path.is_some(),
            error: t.error.clone(),
            warning: t.warning.clone(),
            rows_loaded: t.rows_loaded,
            metrics: t
                .metrics
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            start_us: t.start_time,
            end_us: t.end_time,
            queued_us: None,
        }
    }
}

/// A task of a run, with its tries.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct TaskInstance {
    pub task_id: String,
    /// The task's kind, or `removed` when the pipeline no longer has the task.
    pub kind: String,
    pub depends_on: Vec<String>,
    /// NONE (not created yet), QUEUED, RUNNING, SUCCESS, FAILED, UP_FOR_RETRY,
    /// UPSTREAM_FAILED, SKIPPED, …
    pub state: String,
    pub try_number: u32,
    pub max_tries: u32,
    pub next_try_at: Option<String>,
    pub tries: Vec<Try>,
}

impl TaskInstance {
    /// The task `id` of a run from its rows; each try's queued time is read from the
    /// run's recorded events.
    pub fn build(
        id: &str,
        kind: &str,
        depends_on: &[String],
        ti: Option<&TiRow>,
        tries: &[TryRow],
        events: &[EventRecord],
    ) -> TaskInstance {
        let mine = tries
            .iter()
            .filter(|t| t.task_id == id)
            .map(|t| {
                let mut v = Try::from_row(t);
                // The try was ready from the last time its task was queued (or set up for
                // retry) before it started.
                v.queued_us = events
                    .iter()
                    .filter(|e| {
                        e.task_id.as_deref() == Some(id)
                            && (e.state == "QUEUED" || e.state == "UP_FOR_RETRY")
                            && e.at <= t.start_time
                    })
                    .map(|e| e.at)
                    .max();
                v
            })
            .collect();
        TaskInstance {
            task_id: id.to_owned(),
            kind: kind.to_owned(),
            depends_on: depends_on.to_vec(),
            state: ti.map(|t| t.state.as_str()).unwrap_or("NONE").to_owned(),
            try_number: ti.map(|t| t.try_number).unwrap_or(0),
            max_tries: ti.map(|t| t.max_tries).unwrap_or(0),
            next_try_at: ti.and_then(|t| iso(t.next_try_at)),
            tries: mine,
        }
    }

    /// Every task of a run: the pipeline version's tasks in dependency order, then the
    /// run's tasks that this version no longer has.
    pub fn all_of(
        p: &Pipeline,
        tis: &[TiRow],
        tries: &[TryRow],
        events: &[EventRecord],
    ) -> Vec<TaskInstance> {
        let mut out: Vec<TaskInstance> = p
            .topological_order()
            .into_iter()
            .map(|t| {
                let ti = tis.iter().find(|x| x.task_id == t.id);
                Self::build(&t.id, t.kind.name(), &t.depends_on, ti, tries, events)
            })
            .collect();
        for ti in tis.iter().filter(|x| p.task(&x.task_id).is_none()) {
            out.push(Self::build(
                &ti.task_id,
                "removed",
                &[],
                Some(ti),
                tries,
                events,
            ));
        }
        out
    }
}

/// A task as the pipeline file declares it.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct TaskInfo {
    pub id: String,
    pub kind: String,
    pub depends_on: Vec<String>,
}

/// A pipeline with its schedule and where it stands.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct PipelineSummary {
    pub name: String,
    pub description: Option<String>,
    pub schedule: String,
    pub timezone: String,
    pub paused: bool,
    pub next_run_at: Option<String>,
    /// The newest run, whatever its state (queued ones included).
    pub last_run: Option<Run>,
    /// The newest finished run: where a failure shows.
    pub last_finished_run: Option<Run>,
    /// The pipeline's deadline as written (e.g. `06:00`).
    pub deadline: Option<String>,
    /// met, on_track, at_risk or missed: the latest scheduled run's standing (the only
    /// runs judged are the latest interval's).
    pub deadline_state: Option<String>,
    /// Runs of intervals that started in the last 7 days and failed.
    pub failures_7d: u32,
    pub tasks: Vec<TaskInfo>,
}

impl PipelineSummary {
    pub fn build(
        store: &Store,
        p: &Pipeline,
        paused: bool,
        now: Timestamp,
    ) -> nightshift_store::Result<PipelineSummary> {
        let name = p.name.as_str();
        let (last, finished) = store.last_runs(name)?;
        let scheduled =
            match store.latest_interval_start(name, Some(nightshift_core::Trigger::Scheduled))? {
                Some(start) => store.find_run_by_interval(name, start)?,
                None => None,
            };
        let pks: Vec<i64> = [&last, &finished, &scheduled]
            .into_iter()
            .flatten()
            .map(|r| r.pk)
            .collect();
        let deadlines = store.deadlines_of(&pks)?;
        let deadline_state = scheduled
            .as_ref()
            .and_then(|r| deadlines.get(&r.pk))
            .and_then(|d| d.state.clone());
        let week_ago = to_micros(now) - 7 * 86_400 * 1_000_000;
        let failures_7d = store
            .runs_between(name, week_ago, i64::MAX)?
            .iter()
            .filter(|r| r.status == nightshift_core::RunState::Failed)
            .count() as u32;
        Ok(PipelineSummary {
            name: p.name.clone(),
            description: p.description.clone(),
            schedule: p.schedule.expr().to_owned(),
            timezone: p.schedule.tz_name().to_owned(),
            paused,
            next_run_at: p.schedule.next_fire(now).ok().map(|t| t.to_string()),
            last_run: last.map(|r| Run::from_row(&r, deadlines.get(&r.pk))),
            last_finished_run: finished.map(|r| Run::from_row(&r, deadlines.get(&r.pk))),
            deadline: p.deadline.map(|d| d.to_string()),
            deadline_state,
            failures_7d,
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
}

/// Every pipeline of the project, and the files that do not validate.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineSummary>,
    /// One entry per pipeline file with errors: where, and what is wrong.
    pub problems: Vec<String>,
}

/// A run with its task instances.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct RunTasks {
    pub run: Run,
    pub tasks: Vec<TaskInstance>,
}

/// One node of a dbt invocation, as dbt's run_results.json reported it.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct DbtResult {
    pub task_id: String,
    pub try_number: u32,
    pub unique_id: String,
    pub resource_type: String,
    pub status: String,
    /// Seconds, as dbt measures them.
    pub execution_time: Option<f64>,
    pub failures: Option<i64>,
    pub rows_affected: Option<i64>,
    pub message: Option<String>,
    pub invocation_id: Option<String>,
}

impl DbtResult {
    pub fn from_row(task_id: String, try_number: u32, n: DbtNode) -> DbtResult {
        DbtResult {
            task_id,
            try_number,
            unique_id: n.unique_id,
            resource_type: n.resource_type,
            status: n.status,
            execution_time: n.execution_time,
            failures: n.failures,
            rows_affected: n.rows_affected,
            message: n.message,
            invocation_id: n.invocation_id,
        }
    }
}

/// An alert, once per event and channel.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct Alert {
    pub id: i64,
    pub channel: String,
    /// The event: task_failed, run_failed, deadline_missed, …
    pub kind: String,
    pub pipeline: String,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    /// pending, sent or failed: the delivery's own state, not a run's.
    pub status: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    /// What was (or will be) sent.
    #[schema(value_type = Object)]
    pub message: Value,
}

impl Alert {
    pub fn from_row(a: &AlertRow) -> Alert {
        Alert {
            id: a.id,
            channel: a.channel.clone(),
            kind: a.kind.clone(),
            pipeline: a.pipeline.clone(),
            run_id: a.run_id.clone(),
            task_id: a.task_id.clone(),
            try_number: a.try_number,
            status: a.status.clone(),
            attempts: a.attempts,
            error: a.error.clone(),
            created_at: from_micros(a.created_at).to_string(),
            sent_at: iso(a.sent_at),
            message: serde_json::from_str(&a.payload).unwrap_or(Value::Null),
        }
    }
}

/// One action taken through the web UI or the API.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// The token's name (`[web.tokens.NAME]`), or `admin` for NIGHTSHIFT_TOKEN.
    pub token: String,
    pub action: String,
    pub target: String,
    /// The client's address.
    pub client: String,
    /// `ok`, `refused: …` or `failed: …`.
    pub outcome: String,
}

impl AuditEntry {
    pub fn from_row(a: &AuditRow) -> AuditEntry {
        AuditEntry {
            id: a.id,
            at: from_micros(a.at).to_string(),
            token: a.actor.clone(),
            action: a.action.clone(),
            target: a.target.clone(),
            client: a.client.clone(),
            outcome: a.outcome.clone(),
        }
    }
}

/// Who holds the scheduler role, and every process executing tries on the store.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct Status {
    /// The store, without credentials.
    pub store: String,
    /// `None` when no `up` holds the role.
    pub scheduler: Option<SchedulerRole>,
    pub processes: Vec<Process>,
}

#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct SchedulerRole {
    pub host: String,
    pub pid: i64,
    pub last_heartbeat: String,
    pub expires_at: String,
}

/// An `up`, `worker`, `run` or `backfill` process, as it last told the store.
#[derive(Serialize, Clone, Debug, ToSchema)]
pub struct Process {
    pub host: String,
    pub pid: i64,
    /// scheduler, standby, worker or run.
    pub role: String,
    /// The pools it serves; `None`: every pool.
    pub pools: Option<Vec<String>>,
    pub started_at: String,
    pub last_heartbeat: String,
    /// Seconds since the last heartbeat, by the store's clock.
    pub heartbeat_age_seconds: i64,
    /// Whether it beat recently enough to still hold its leases.
    pub alive: bool,
    pub running_tries: i64,
}

impl Status {
    pub fn read(store: &Store) -> nightshift_store::Result<Status> {
        let now = store.now_us()?;
        let lease = store.scheduler_lease()?.filter(|l| l.expires_at > now);
        Ok(Status {
            store: store.location().to_string(),
            scheduler: lease.map(|l| SchedulerRole {
                host: l.host,
                pid: l.pid,
                last_heartbeat: from_micros(l.heartbeat_at).to_string(),
                expires_at: from_micros(l.expires_at).to_string(),
            }),
            processes: store
                .engines()?
                .into_iter()
                .map(|e| Process {
                    alive: e.alive(now),
                    heartbeat_age_seconds: (now - e.heartbeat_at).max(0) / 1_000_000,
                    host: e.host,
                    pid: e.pid,
                    role: e.role,
                    pools: e.pools.map(|p| p.split(',').map(str::to_owned).collect()),
                    started_at: from_micros(e.started_at).to_string(),
                    last_heartbeat: from_micros(e.heartbeat_at).to_string(),
                    running_tries: e.running,
                })
                .collect(),
        })
    }
}
