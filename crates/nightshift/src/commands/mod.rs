//! One module per subcommand; each a thin layer over the engine and the store.

pub mod backfill;
mod cancel;
mod demo;
mod fold;
mod init;
pub mod inspect;
mod internal;
mod next;
mod recover;
mod run;
mod shop;
mod store;
mod up;
mod validate;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use nightshift_engine::project::{self, LoadedPipeline, Project};
use nightshift_engine::{Clock, Engine, Event, Mode, Options};
use nightshift_store::Store;
use tokio::sync::{mpsc, watch};

use crate::cli::{Cli, Command};
use crate::output;

/// A mistake in how nightshift was called or configured (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

pub async fn dispatch(cli: Cli) -> Result<i32> {
    let dir = cli.project;
    match cli.command {
        Command::Init { dir: target, force } => {
            init::exec(target.as_deref().unwrap_or(&dir), force)
        }
        Command::Demo {
            dir: target,
            postgres,
        } => demo::exec(&target, postgres).await,
        Command::Validate { json } => validate::exec(&dir, json),
        Command::Run {
            pipeline,
            date,
            rerun,
        } => run::exec(&dir, &pipeline, &date, rerun).await,
        Command::Worker { pools, max_tasks } => up::worker(&dir, pools, max_tasks).await,
        Command::Up {
            simulate_from,
            simulate_until,
            bind,
            no_web,
        } => {
            up::exec(
                &dir,
                simulate_from.as_deref(),
                simulate_until.as_deref(),
                bind.as_deref(),
                no_web,
            )
            .await
        }
        Command::Backfill {
            pipeline,
            from,
            to,
            rerun,
            dry_run,
            detach,
        } => backfill::exec(&dir, &pipeline, &from, &to, rerun, dry_run, detach).await,
        Command::Cancel {
            pipeline,
            run_ids,
            backfill,
        } => cancel::exec(&dir, &pipeline, &run_ids, backfill),
        Command::Runs {
            pipeline,
            json,
            limit,
        } => inspect::runs(&dir, &pipeline, json, limit),
        Command::Clear {
            run_id,
            task,
            downstream,
            failed,
            pipeline,
        } => recover::clear(
            &dir,
            &run_id,
            task.as_deref(),
            downstream,
            failed,
            pipeline.as_deref(),
        ),
        Command::Rerun { run_id, pipeline } => recover::rerun(&dir, &run_id, pipeline.as_deref()),
        Command::Mark {
            run_id,
            task,
            state,
            reason,
            pipeline,
        } => recover::mark(&dir, &run_id, &task, &state, &reason, pipeline.as_deref()),
        Command::Explain {
            run_id,
            task,
            pipeline,
            json,
        } => recover::explain(&dir, &run_id, task.as_deref(), pipeline.as_deref(), json),
        Command::Status { json } => inspect::status(&dir, json),
        Command::Store {
            action: crate::cli::StoreAction::Copy { to, password_env },
        } => store::copy(&dir, &to, password_env),
        Command::Alerts {
            pipeline,
            json,
            limit,
        } => inspect::alerts(&dir, pipeline.as_deref(), json, limit),
        Command::Audit { json, limit } => inspect::audit(&dir, json, limit),
        Command::Pipelines { json } => inspect::pipelines(&dir, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut crate::cli::Cli::command(),
                "nightshift",
                &mut out,
            );
            output::raw(&out);
            Ok(0)
        }
        Command::Tasks {
            run_id,
            pipeline,
            json,
        } => inspect::tasks(&dir, &run_id, pipeline.as_deref(), json),
        Command::DbtResults {
            run_id,
            task,
            pipeline,
            failed,
            json,
        } => inspect::dbt_results(
            &dir,
            &run_id,
            task.as_deref(),
            pipeline.as_deref(),
            failed,
            json,
        ),
        Command::Logs {
            run_id,
            task,
            try_number,
            pipeline,
            follow,
            raw,
        } => inspect::logs(
            &dir,
            &run_id,
            &task,
            try_number,
            pipeline.as_deref(),
            follow,
            raw,
        ),
        Command::Shop {
            db,
            postgres,
            from,
            to,
            orders,
            hold_batch,
            bad_row,
            release,
        } => shop::exec(
            match (db.map(|d| dir.join(d)).as_deref(), postgres) {
                // Relative to the project, like every other path of a project.
                (Some(db), _) => shop::Target::Sqlite(db),
                (None, Some(url)) => shop::Target::Postgres(url),
                (None, None) => return Err(usage("give --db FILE or --postgres URL")),
            },
            &from,
            &to,
            crate::shop::Options {
                orders_per_day: orders,
                hold_batch,
                bad_row,
            },
            release,
        ),
        Command::InternalExtract { request } => {
            internal::extract(&internal::request_text(&request)?)
        }
        Command::InternalSensor { request } => internal::sensor(&internal::request_text(&request)?),
        Command::InternalPublish { request } => {
            internal::publish(&internal::request_text(&request)?)
        }
        Command::InternalNotify { request } => internal::notify(&internal::request_text(&request)?),
        Command::InternalSql { request } => internal::sql(&internal::request_text(&request)?),
        Command::InternalDbtWarm { request, extra } => {
            internal::dbt_warm(&internal::request_text(&request)?, &extra)
        }
        Command::InternalLoad { request } => internal::load(&internal::request_text(&request)?),
        Command::InternalSpawner { home } => {
            nightshift_engine::spawner::serve(&home)?;
            Ok(0)
        }
        Command::Pause { pipeline } => pause(&dir, &pipeline, true),
        Command::Unpause { pipeline } => pause(&dir, &pipeline, false),
        Command::Next {
            pipeline,
            n,
            after,
            json,
        } => next::exec(&dir, &pipeline, n, after.as_deref(), json),
    }
}

/// `pause` / `unpause`: a flag in the store that every scheduler reads at its next heartbeat.
fn pause(dir: &Path, name: &str, paused: bool) -> Result<i32> {
    let project = load_project(dir)?;
    require_pipeline(&project, name)?;
    let store = open_store(&project)?;
    let now = nightshift_engine::clock::real_now_us();
    store.set_paused(name, paused, now)?;
    output::line(format!(
        "{name}: {}",
        if paused { "paused" } else { "unpaused" }
    ));
    Ok(0)
}

/// Loads the project, printing every problem. Settings errors stop the command; a broken
/// pipeline file only affects that pipeline.
pub fn load_project(dir: &Path) -> Result<Project> {
    let project = project::load(dir).map_err(|e| usage(format!("{e:#}")))?;
    for p in &project.problems {
        output::diagnostics(p);
    }
    if project
        .problems
        .iter()
        .any(|p| p.has_errors() && p.path.file_name().is_some_and(|n| n == "nightshift.toml"))
    {
        return Err(usage(
            "nightshift.toml has errors (see above); fix them and try again",
        ));
    }
    Ok(project)
}

pub fn require_pipeline(project: &Project, name: &str) -> Result<LoadedPipeline> {
    if let Some(lp) = project.pipelines.get(name) {
        return Ok(lp.clone());
    }
    if project
        .broken
        .iter()
        .any(|b| b.file_stem().is_some_and(|s| s == name))
    {
        return Err(usage(format!(
            "pipeline `{name}` has errors (see above); fix them and try again"
        )));
    }
    let mut known: Vec<&str> = project.pipelines.keys().map(String::as_str).collect();
    known.sort();
    let hint = if known.is_empty() {
        format!(
            "there are no pipelines in `{}`; create one with `nightshift init`",
            project.dir.join("pipelines").display()
        )
    } else {
        format!("known pipelines: {}", known.join(", "))
    };
    Err(usage(format!(
        "no pipeline `{name}` in this project\n  = help: {hint}"
    )))
}

pub fn open_store(project: &Project) -> Result<Arc<Store>> {
    let location = project.store_location();
    Ok(Arc::new(Store::open(&location).with_context(|| {
        format!("opening the metadata store `{location}`")
    })?))
}

/// Parses `YYYY-MM-DD` for a flag.
pub fn parse_date_flag(flag: &str, s: &str) -> Result<jiff::civil::Date> {
    nightshift_core::time::parse_date(s).map_err(|_| {
        usage(format!(
            "invalid {flag} `{s}`: write a date as YYYY-MM-DD, e.g. 2024-06-01"
        ))
    })
}

pub fn parse_ts_flag(flag: &str, s: &str) -> Result<jiff::Timestamp> {
    s.parse().map_err(|_| {
        usage(format!(
            "invalid {flag} `{s}`: write an RFC 3339 time such as 2024-06-01T23:00:00Z"
        ))
    })
}

/// Counts SIGINT and SIGTERM: the first asks the engine to drain, a second to stop every
/// running try at once.
pub fn shutdown_signal() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// Engine options from the environment (the crash-point hook for recovery tests).
pub fn engine_options() -> Result<Options> {
    let mut opts = Options::default();
    // How fast a dead process's tries and scheduler role are taken over; see README,
    // "Several hosts".
    for (name, slot) in [
        ("NIGHTSHIFT_HEARTBEAT", &mut opts.heartbeat),
        ("NIGHTSHIFT_LEASE_TTL", &mut opts.lease_ttl),
        ("NIGHTSHIFT_ROLE_TTL", &mut opts.role_ttl),
        ("NIGHTSHIFT_POLL", &mut opts.poll),
    ] {
        if let Some(v) = crate::env::timing(name) {
            *slot = nightshift_core::time::parse_duration(&v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    usage(format!(
                        "invalid {name} `{v}`: write a duration, e.g. 2s or 500ms"
                    ))
                })?;
        }
    }
    if opts.heartbeat * 2 > opts.lease_ttl.min(opts.role_ttl) {
        return Err(usage(format!(
            "NIGHTSHIFT_HEARTBEAT ({:?}) must be at most half of NIGHTSHIFT_LEASE_TTL ({:?}) and NIGHTSHIFT_ROLE_TTL ({:?}), so a live process renews in time",
            opts.heartbeat, opts.lease_ttl, opts.role_ttl
        )));
    }
    if let Some(v) = crate::env::crash_at() {
        opts.crash_at = Some(nightshift_engine::CrashPoint::parse(&v).ok_or_else(|| {
            usage(format!(
                "invalid NIGHTSHIFT_CRASH_AT `{v}`: use one of {}",
                nightshift_engine::CrashPoint::POINTS.join(", ")
            ))
        })?);
    }
    Ok(opts)
}

/// The run log's line for an event: the seed's `Task extract_data: SUCCESS (2024-06-02 00:01)`
/// for a task, and `Run nightly 20240602_0000 (ds 2024-06-01): SUCCESS rows_loaded=12417`.
pub fn event_line(e: &Event) -> Option<String> {
    Lines::default().line(e)
}

/// The lines people read as runs go: with more than one run active, each task line is
/// prefixed with its run_id, so lines of parallel runs can be told apart.
#[derive(Default)]
pub struct Lines {
    active: std::collections::BTreeSet<(String, String)>,
}

impl Lines {
    pub fn line(&mut self, e: &Event) -> Option<String> {
        let text = self.text(e)?;
        if !output::json() {
            return Some(text);
        }
        Some(event_json(e, &text).to_string())
    }

    fn text(&mut self, e: &Event) -> Option<String> {
        match e {
            Event::TaskEnded {
                pipeline,
                run_id,
                task_id,
                state,
                at,
                tz,
                duration_ms,
                error,
                ..
            } => {
                self.active.insert((pipeline.clone(), run_id.clone()));
                let line =
                    output::task_line(task_id, *state, *at, tz, *duration_ms, error.as_deref());
                Some(if self.active.len() > 1 {
                    format!("{run_id} {line}")
                } else {
                    line
                })
            }
            Event::RunEnded {
                pipeline,
                run_id,
                ds,
                state,
                rows_loaded,
                ..
            } => {
                self.active.remove(&(pipeline.clone(), run_id.clone()));
                Some(format!(
                    "Run {pipeline} {run_id} (ds {ds}): {state} rows_loaded={rows_loaded}"
                ))
            }
            Event::Deadline {
                pipeline,
                run_id,
                state,
                deadline,
                forecast,
                ..
            } => match state {
                nightshift_core::deadline::DeadlineState::AtRisk => Some(format!(
                    "Deadline {pipeline} {run_id}: at risk (deadline {deadline}, forecast {})",
                    forecast.map(|f| f.to_string()).unwrap_or_default()
                )),
                nightshift_core::deadline::DeadlineState::Missed => Some(format!(
                    "Deadline {pipeline} {run_id}: missed (deadline {deadline})"
                )),
                _ => None,
            },
            Event::TaskRetrying { .. } => None,
        }
    }
}

/// An event as one JSON object (`--log-format json`), with the line people read.
fn event_json(e: &Event, text: &str) -> serde_json::Value {
    use serde_json::json;
    match e {
        Event::TaskEnded {
            pipeline,
            run_id,
            task_id,
            state,
            try_number,
            at,
            duration_ms,
            error,
            history,
            ..
        } => json!({
            "event": "task_ended", "pipeline": pipeline, "run_id": run_id, "task_id": task_id,
            "state": state.as_str(), "try_number": try_number, "at": at.to_string(),
            "duration_ms": duration_ms, "error": error, "history": history, "message": text,
        }),
        Event::RunEnded {
            pipeline,
            run_id,
            ds,
            state,
            rows_loaded,
            at,
            trigger,
            history,
        } => json!({
            "event": "run_ended", "pipeline": pipeline, "run_id": run_id, "ds": ds.to_string(),
            "state": state.as_str(), "rows_loaded": rows_loaded, "at": at.to_string(),
            "trigger": trigger.as_str(), "history": history, "message": text,
        }),
        Event::Deadline {
            pipeline,
            run_id,
            state,
            deadline,
            forecast,
            ..
        } => json!({
            "event": "deadline", "pipeline": pipeline, "run_id": run_id, "state": state.as_str(),
            "deadline": deadline.to_string(), "forecast": forecast.map(|f| f.to_string()),
            "message": text,
        }),
        Event::TaskRetrying { .. } => json!({ "message": text }),
    }
}

/// Runs an engine while forwarding its events to `on_event`, to the project's alert
/// channels, and (for `up`) to the metrics.
pub async fn drive(engine: Engine, on_event: impl FnMut(Event)) -> Result<()> {
    drive_with(engine, None, on_event).await
}

pub async fn drive_with(
    engine: Engine,
    metrics: Option<Arc<nightshift_web::Metrics>>,
    on_event: impl FnMut(Event),
) -> Result<()> {
    drive_until(engine, metrics, on_event, shutdown_signal()).await
}

/// Like [`drive_with`], stopping when `shutdown` counts stop requests (see `Engine::run`).
pub async fn drive_until(
    engine: Engine,
    metrics: Option<Arc<nightshift_web::Metrics>>,
    mut on_event: impl FnMut(Event),
    shutdown: watch::Receiver<u32>,
) -> Result<()> {
    let store = engine.store();
    let hook: Option<nightshift_alert::FailureHook> = metrics.clone().map(|m| {
        Arc::new(move |channel: &str| m.alert_failed(channel)) as nightshift_alert::FailureHook
    });
    let alerter = nightshift_alert::Alerter::new(
        store.clone(),
        engine.project().settings.clone(),
        engine.project().dir.clone(),
        hook,
        &nightshift_engine::procs::hostname(),
        engine.clock(),
    );
    alerter.deliver_stale();
    let mut observe = |e: Event| {
        alerter.handle(&e);
        if let Some(m) = &metrics {
            m.observe(&store, &e);
        }
        on_event(e);
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = engine.with_events(tx);
    let handle = engine.run(shutdown);
    tokio::pin!(handle);
    let res = loop {
        tokio::select! {
            res = &mut handle => {
                while let Ok(e) = rx.try_recv() { observe(e); }
                break res.map_err(anyhow::Error::from);
            }
            Some(e) = rx.recv() => observe(e),
        }
    };
    // Alerts decided before the end go out before the process does (bounded: a hung
    // endpoint cannot hold the command; what is left is delivered by the next scheduler).
    if !alerter.is_empty() {
        alerter.wait_idle(std::time::Duration::from_secs(30));
    }
    res
}

pub fn new_engine(
    project: Project,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    mode: Mode,
) -> Result<Engine> {
    Ok(new_engine_with(
        project,
        store,
        clock,
        mode,
        engine_options()?,
    ))
}

/// [`new_engine`] with options the command adjusted (a worker's pools and slots).
pub fn new_engine_with(
    project: Project,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    mode: Mode,
    opts: Options,
) -> Engine {
    Engine::new(project, store, clock, mode, opts).with_containment(containment().clone())
}

/// How tries' processes are contained on this machine, decided once per process.
pub fn containment() -> &'static nightshift_engine::contain::Containment {
    static C: std::sync::OnceLock<nightshift_engine::contain::Containment> =
        std::sync::OnceLock::new();
    C.get_or_init(|| {
        let c = nightshift_engine::contain::Containment::detect();
        // Tries start through a helper that is this binary (`__spawner`).
        match std::env::current_exe() {
            Ok(exe) if !crate::env::spawner_off() => c.with_spawner(exe),
            _ => c,
        }
    })
}

#[cfg(test)]
mod line_tests {
    use super::*;
    use nightshift_core::{RunState, TaskState};

    fn ended(run_id: &str, task: &str, state: TaskState, error: Option<&str>) -> Event {
        Event::TaskEnded {
            pipeline: "p".into(),
            run_id: run_id.into(),
            ti_pk: 1,
            task_id: task.into(),
            state,
            try_number: 1,
            at: "2024-06-02T00:01:00Z".parse().unwrap(),
            tz: jiff::tz::TimeZone::UTC,
            duration_ms: Some(4200),
            error: error.map(str::to_owned),
            history: false,
        }
    }

    #[test]
    fn task_lines_say_how_long_why_and_which_run_when_several_are_active() {
        let mut lines = Lines::default();
        assert_eq!(
            lines
                .line(&ended("r1", "a", TaskState::Success, None))
                .unwrap(),
            "Task a: SUCCESS (2024-06-02 00:01) in 4.2s"
        );
        assert_eq!(
            lines
                .line(&ended(
                    "r2",
                    "b",
                    TaskState::Failed,
                    Some("boom\nexited with code 4\n")
                ))
                .unwrap(),
            "r2 Task b: FAILED (2024-06-02 00:01) in 4.2s — exited with code 4"
        );
        lines.line(&Event::RunEnded {
            pipeline: "p".into(),
            run_id: "r1".into(),
            ds: jiff::civil::date(2024, 6, 1),
            state: RunState::Success,
            rows_loaded: 0,
            at: "2024-06-02T00:02:00Z".parse().unwrap(),
            trigger: nightshift_core::Trigger::Backfill,
            history: true,
        });
        assert!(
            lines
                .line(&ended("r2", "c", TaskState::Success, None))
                .unwrap()
                .starts_with("Task c:"),
            "one run active again"
        );
    }
}
