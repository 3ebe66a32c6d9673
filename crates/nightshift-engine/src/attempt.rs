//! One try's life, all on a thread of its own: prepare (its argv and environment), spawn
//! and supervise (with the executor), conclude (read what the kind left behind, decide
//! the task's next state) and hand the outcome to the writer. Nothing after the spawn waits
//! on the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use nightshift_core::template::Context;
use nightshift_core::time::to_micros;
use nightshift_core::{Pipeline, TaskState};
use nightshift_store::{FinishTry, RunRow, Store, TiRow};
use tokio::sync::mpsc;

use crate::contain::Containment;
use crate::crash::{CrashPoint, crash_if};
use crate::dbt;
use crate::executor::{self, ChildOutcome, ChildSpec, Exit, KillReason, Stopper};
use crate::kinds::{self, Prepared, TryPaths, Wait};
use crate::outcome::{Outcome, SpawnRecord, Writer};
use crate::procs;
use nightshift_core::clock::Clock;

/// How long a try runs before its pid is recorded on its own (a shorter try has it written
/// with its outcome; recovery finds one in between by its `NIGHTSHIFT_TRY_KEY`).
const RECORD_PID_AFTER: Duration = Duration::from_millis(200);

/// A task interrupted by nightshift itself more often than this in a row fails.
pub const MAX_INTERRUPTIONS: u32 = 3;

/// Told to the engine when a try's processes are gone and its outcome is with the writer
/// (`token` names that start of the try: a sensor's next poke reuses the try number), or,
/// without a token, when an outcome reached the store (a wake-up: runs may move on).
pub(crate) struct TryDone {
    pub ti_pk: i64,
    pub token: Option<u64>,
}

pub(crate) struct TryCtx {
    /// Masks the values of secret environment variables in logs.
    pub mask: crate::mask::Masker,
    /// nightshift's own secret variables: kept from the task's process.
    pub own_secrets: Vec<String>,
    /// The connections' variables, which nightshift's own kinds need.
    pub connection_env: Vec<String>,
    pub channels: std::collections::BTreeMap<String, nightshift_core::project::Channel>,
    pub connections: std::collections::BTreeMap<String, nightshift_core::project::Connection>,
    pub store: Arc<Store>,
    pub clock: Arc<dyn Clock>,
    pub pipeline: Arc<Pipeline>,
    pub run: RunRow,
    pub ti: TiRow,
    pub try_number: u32,
    pub owner: String,
    pub project_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub kill_grace: Duration,
    pub log_max_bytes: u64,
    /// dbt target folders kept per task (`[retention] dbt_artifacts`).
    pub dbt_artifacts_kept: u32,
    /// How dbt tasks that say nothing run dbt (`[dbt] runner`).
    pub dbt_runner: nightshift_core::kinds::DbtRunner,
    pub crash_at: Option<CrashPoint>,
    pub writer: Writer,
    /// Copies the try's log into a shared store for other hosts (PostgreSQL only).
    pub shipper: Option<crate::logship::Shipper>,
    pub containment: Containment,
    pub done: mpsc::UnboundedSender<TryDone>,
    /// Unique per start of a try in this engine.
    pub token: u64,
}

/// Identifies a try's processes on this machine through their environment: unique per
/// store, task instance and try.
pub(crate) fn try_key(store: &Store, ti_pk: i64, try_number: u32) -> String {
    let store_id = nightshift_store::version_hash("store", &store.location().identity());
    format!("{store_id}:{ti_pk}:{try_number}")
}

/// What conclude needs to know besides the process's outcome.
struct Concluding {
    c: TryCtx,
    task: nightshift_core::pipeline::Task,
    ctx: Context,
    started: Timestamp,
    work_dir: PathBuf,
    log_path: PathBuf,
}

/// Starts a claimed try: everything from its argv to its end happens on a thread of its
/// own (one of the [`crate::crew`]'s), so a pass that claims many tries is not held up by
/// their starts. Returns the try's stopper at once; `None` when the try ended at once (its
/// task is gone, or no thread could be made: its outcome is then with the writer and the
/// engine was told).
pub(crate) fn start(c: TryCtx) -> Option<Stopper> {
    c.pipeline.task(&c.ti.task_id)?;
    let (stopper, inbox) = executor::control();
    // The thread takes the context; a thread that cannot be made gives it back here.
    let slot = Arc::new(std::sync::Mutex::new(Some(c)));
    let for_thread = slot.clone();
    let spawned = crate::crew::run("try-supervise", move || {
        if let Some(c) = for_thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            run(c, inbox);
        }
    });
    match spawned {
        Ok(_) => Some(stopper),
        Err(e) => {
            let c = slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
            let end = c.clock.now();
            if let Some((k, _)) = prepare(c) {
                let msg = format!("cannot start a thread for the try: {e}");
                conclude(k, ChildOutcome::not_started(msg, end), None);
            }
            None
        }
    }
}

/// The try's life on its own thread: prepare, spawn, supervise, conclude.
fn run(c: TryCtx, inbox: executor::Inbox) {
    let Some((concluding, prepared)) = prepare(c) else {
        return;
    };
    let spec = match prepared {
        Ok(spec) => spec,
        Err(msg) => {
            let end = concluding.c.clock.now();
            conclude(concluding, ChildOutcome::not_started(msg, end), None);
            return;
        }
    };
    let c = &concluding.c;
    let mut spawned_pid = None;
    let outcome = executor::run(spec, c.clock.clone(), inbox, |pid, stopper| {
        spawned_pid = Some(pid);
        if let Some(s) = &c.shipper {
            s.started(c.ti.pk, c.try_number, concluding.log_path.clone());
        }
        crash_if(&c.crash_at, "after_spawn", Some(&concluding.task.id));
        c.writer.record_spawn(
            SpawnRecord {
                ti_pk: c.ti.pk,
                try_number: c.try_number,
                owner: c.owner.clone(),
                pid,
                identity: procs::Identity::of(pid),
                log_path: crate::project::stored_path(&c.project_dir, &concluding.log_path),
                stopper,
            },
            RECORD_PID_AFTER,
        );
    });
    conclude(concluding, outcome, spawned_pid);
}

/// Describes the try's process: its argv, environment, folders and cell. `None` when its
/// task is gone from the pipeline; the spec is an error when the work cannot even be
/// described (the try then fails without a process).
fn prepare(c: TryCtx) -> Option<(Concluding, Result<ChildSpec, String>)> {
    let task = c.pipeline.task(&c.ti.task_id).cloned()?;
    // One folder per run (not per task): creating inodes is a visible share of a short
    // task's cost.
    let dir = c.logs_dir.join(&c.run.pipeline).join(&c.run.run_id);
    let log_path = dir.join(format!("{}.try-{}.log", task.id, c.try_number));
    let metrics_path = dir.join(format!("{}.try-{}.metrics.jsonl", task.id, c.try_number));
    let ctx = Context {
        keys: c.run.keys(),
        try_number: c.try_number,
        task_id: task.id.clone(),
    };
    let work_dir = dbt::try_dir(
        &c.project_dir,
        &c.run.pipeline,
        &c.run.run_id,
        &task.id,
        c.try_number,
    );
    let runner = kinds::runner(&task.kind);
    let paths = TryPaths {
        ctx: &ctx,
        work_dir: &work_dir,
        log_path: &log_path,
    };
    let prepared = runner.prepare(&c, &task, &paths);
    let started = c.clock.now();
    crash_if(&c.crash_at, "after_claim", Some(&task.id));
    let spec = prepared.map(|prepared| {
        let Prepared {
            argv,
            env: extra_env,
        } = prepared;
        let key = try_key(&c.store, c.ti.pk, c.try_number);
        let mut env = ctx.env();
        env.push(("NIGHTSHIFT_TRY_KEY".to_owned(), key.clone()));
        env.extend(extra_env);
        env.extend(task.env.iter().map(|(k, v)| (k.clone(), ctx.render(v))));
        let cwd = match &task.cwd {
            Some(d) => c.project_dir.join(d),
            None => runner.default_cwd(&c),
        };
        ChildSpec {
            argv,
            env,
            cwd,
            log_path: log_path.clone(),
            metrics_path,
            timeout: runner.timeout(&task),
            kill_grace: c.kill_grace,
            stop_signal: runner.stop_signal(),
            dbt_json_log: runner.json_log(),
            mask: c.mask.clone(),
            env_remove: {
                let keep = runner.keeps_env(&c);
                c.own_secrets
                    .iter()
                    .filter(|n| !task.pass_env.contains(n) && !keep.contains(n))
                    .cloned()
                    .collect()
            },
            log_max_bytes: c.log_max_bytes,
            cell: c.containment.cell(&key),
        }
    });
    let concluding = Concluding {
        c,
        task,
        ctx,
        started,
        work_dir,
        log_path,
    };
    Some((concluding, spec))
}

/// Decides the task's next state from the process's outcome and hands it to the writer.
/// Runs on the try's supervisor thread (or the engine's, for a try that never started).
fn conclude(k: Concluding, outcome: ChildOutcome, spawned_pid: Option<u32>) {
    let done = k.c.done.clone();
    let ti_pk = k.c.ti.pk;
    let token = Some(k.c.token);
    let found = decide(&k, outcome, spawned_pid);
    if k.work_dir.exists() {
        crate::dbt::prune_artifacts(
            &k.c.project_dir,
            &k.c.run.pipeline,
            &k.task.id,
            k.c.dbt_artifacts_kept as usize,
        );
    }
    if let Some(o) = found {
        crash_if(&k.c.crash_at, "before_outcome_commit", Some(&k.task.id));
        k.c.writer.submit(o);
    }
    if let Some(s) = &k.c.shipper {
        s.ended(ti_pk, k.c.try_number);
    }
    let _ = done.send(TryDone { ti_pk, token });
}

fn decide(k: &Concluding, outcome: ChildOutcome, spawned_pid: Option<u32>) -> Option<Outcome> {
    let Concluding {
        c,
        task,
        ctx,
        started,
        work_dir,
        log_path,
    } = k;
    let runner = kinds::runner(&task.kind);
    let found = runner.conclude(
        c,
        task,
        *started,
        &TryPaths {
            ctx,
            work_dir,
            log_path,
        },
        &outcome,
    );
    let end = outcome.end;
    let mut metrics_map = outcome.metrics.clone();
    metrics_map.extend(found.metrics);
    let base = FinishTry {
        ti_pk: c.ti.pk,
        try_number: c.try_number,
        owner: Some(c.owner.clone()),
        end: to_micros(end),
        try_state: TaskState::Failed,
        ti_state: TaskState::Failed,
        next_try_at: None,
        exit_code: None,
        signal: None,
        error: None,
        metrics: None,
        rows_loaded: None,
        extra_tries: 0,
        log_path: Some(crate::project::stored_path(&c.project_dir, log_path)),
        pid: spawned_pid,
        interrupted: false,
        warning: outcome.log_warning.clone(),
    };
    let dbt_nodes = found.dbt_nodes.map(|n| (c.run.pk, task.id.clone(), n));
    let gave_up = match found.wait {
        Some(Wait::Again(next)) => {
            return Some(Outcome {
                finish: base,
                dbt_nodes,
                reschedule: Some((to_micros(*started), to_micros(next))),
            });
        }
        Some(Wait::GaveUp(msg)) => Some(msg),
        None => None,
    };
    let (mut ti_state, error, exit_code, signal) = match &outcome.exit {
        // A wait that is over is not retried: the data did not arrive in time.
        Exit::Code(n) if gave_up.is_some() => (TaskState::Failed, gave_up.clone(), Some(*n), None),
        Exit::Code(0) => (TaskState::Success, None, Some(0), None),
        Exit::Code(n) => (
            TaskState::Failed,
            Some(found.reason.clone().unwrap_or_else(|| {
                // nightshift's own kinds say what went wrong on their last `error:` line.
                match &outcome.last_error {
                    Some(e) if runner.says_why() => e.clone(),
                    _ => format!("exited with code {n}"),
                }
            })),
            Some(*n),
            None,
        ),
        Exit::Signal(s) => (
            TaskState::Failed,
            Some(format!("killed by signal {}", signal_name(*s))),
            None,
            Some(*s),
        ),
        Exit::Killed(KillReason::Timeout) => (
            TaskState::Failed,
            Some(format!(
                "timed out after {}",
                nightshift_core::time::format_duration(task.timeout.unwrap_or_default())
            )),
            None,
            None,
        ),
        Exit::Killed(KillReason::Shutdown) => (
            TaskState::UpForRetry,
            Some("interrupted: the scheduler shut down; will run again".to_owned()),
            None,
            None,
        ),
        // The try belongs to another engine now, or its cancellation is recorded already:
        // its outcome is not ours to write.
        Exit::Killed(KillReason::LostClaim | KillReason::Cancelled) => return None,
        Exit::SpawnFailed(msg) => (TaskState::Failed, Some(msg.clone()), None, None),
    };
    let try_state = if ti_state == TaskState::Success {
        TaskState::Success
    } else {
        TaskState::Failed
    };
    let interrupted = matches!(outcome.exit, Exit::Killed(KillReason::Shutdown));
    let mut next_try_at = None;
    let mut extra_tries = 0;
    let mut error = error;
    if interrupted {
        (ti_state, next_try_at, extra_tries) = after_interruption(&c.ti, to_micros(end));
        if ti_state == TaskState::Failed {
            error = Some(format!(
                "interrupted {} times in a row; last: the scheduler shut down",
                c.ti.interruptions + 1
            ));
        }
    } else if ti_state == TaskState::Failed && c.try_number < c.ti.max_tries && gave_up.is_none() {
        ti_state = TaskState::UpForRetry;
        next_try_at = Some(to_micros(plus(
            end,
            task.retry.delay_before(c.try_number + 1, fastrand::f64()),
        )));
    }
    let rows_loaded = metrics_map.get("rows_loaded").map(|v| *v as i64);
    // Whole numbers are stored as integers (`"rows_loaded": 12417`, not `12417.0`).
    let metrics = (!metrics_map.is_empty()).then(|| {
        let map: serde_json::Map<String, serde_json::Value> = metrics_map
            .iter()
            .map(|(k, v)| {
                let n = if v.fract() == 0.0 && v.abs() < 9e15 {
                    serde_json::Value::from(*v as i64)
                } else {
                    serde_json::Value::from(*v)
                };
                (k.clone(), n)
            })
            .collect();
        serde_json::Value::Object(map).to_string()
    });
    if let Some(e) = &error {
        executor::log_note(
            log_path,
            c.clock.as_ref(),
            &format!("try {} failed: {e}", c.try_number),
        );
    }
    Some(Outcome {
        finish: FinishTry {
            try_state,
            ti_state,
            next_try_at,
            exit_code,
            signal,
            error,
            metrics,
            rows_loaded,
            extra_tries,
            interrupted,
            ..base
        },
        dbt_nodes,
        reschedule: None,
    })
}

/// The task's next state after nightshift itself interrupted its try: run again at once
/// with the try given back, unless it was interrupted too often in a row.
pub(crate) fn after_interruption(ti: &TiRow, now: i64) -> (TaskState, Option<i64>, u32) {
    if ti.interruptions >= MAX_INTERRUPTIONS {
        (TaskState::Failed, None, 0)
    } else {
        (TaskState::UpForRetry, Some(now), 1)
    }
}

pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{} ({sig})", s.as_str()),
        Err(_) => sig.to_string(),
    }
}
