//! The scheduler loop: creates runs when their intervals end, moves runs forward by their
//! trigger rules, claims and runs tries, and recovers tries whose engine died.
//!
//! Everything it decides is read from and written to the store; the in-memory maps here
//! are caches and handles to child processes. A pass costs work proportional to the
//! active runs (indexed queries), never to the history.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use nightshift_core::deadline::{self, DeadlineState, TaskProgress};
use nightshift_core::state::{advance, run_outcome};
use nightshift_core::template::Context;
use nightshift_core::time::{DataInterval, from_micros, to_micros};
use nightshift_core::{Pipeline, RunState, TaskKind, TaskState, Trigger};
use nightshift_store::{Claim, Created, FinishTry, NewRun, NewTask, RunRow, Store, TiRow};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::clock::{Clock, real_now_us};
use crate::dbt;
use crate::executor::{self, ChildSpec, Exit, KillReason};
use crate::procs::{self, Owner};
use crate::project::{self, LoadedPipeline, Project};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] nightshift_store::Error),
    #[error(transparent)]
    Time(#[from] nightshift_core::time::Error),
    #[error(
        "another scheduler is running for this project: pid {pid} on host `{host}` (last heartbeat {ago}s ago)\n  = help: stop it first, or wait {expires}s for its lease to expire if it is gone"
    )]
    SchedulerRunning {
        pid: i64,
        host: String,
        ago: i64,
        expires: i64,
    },
    #[error("this scheduler lost its lease to another process; stopping")]
    LostLease,
}

/// What an engine works on.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `up`: create scheduled runs and execute all work; with `until`, stop there.
    Scheduler { until: Option<Timestamp> },
    /// `run` / `backfill`: execute these runs, return when all are finished.
    Runs(HashSet<i64>),
}

/// What the engine tells its caller as work progresses.
#[derive(Debug, Clone)]
pub enum Event {
    TaskEnded {
        pipeline: String,
        run_id: String,
        task_id: String,
        state: TaskState,
        try_number: u32,
        at: Timestamp,
        tz: TimeZone,
    },
    TaskRetrying {
        pipeline: String,
        run_id: String,
        task_id: String,
        try_number: u32,
        next_try_at: Timestamp,
    },
    RunEnded {
        pipeline: String,
        run_id: String,
        ds: String,
        state: RunState,
        rows_loaded: i64,
        at: Timestamp,
        trigger: Trigger,
    },
    /// A run's standing against its deadline changed (raised by one process only: the store
    /// decides which).
    Deadline {
        pipeline: String,
        run_id: String,
        ds: String,
        state: DeadlineState,
        deadline: Timestamp,
        forecast: Option<Timestamp>,
        at: Timestamp,
    },
}

/// Figures of the loop for metrics, readable from another thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// How late the last wake-up was against the time the loop meant to wake (µs).
    pub loop_lag_us: AtomicI64,
}

/// A named point where a test may have the engine kill itself with SIGKILL
/// (`NIGHTSHIFT_CRASH_AT=point[:task]`), to prove recovery from a crash at that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub point: String,
    pub task: Option<String>,
}

impl CrashPoint {
    pub const POINTS: &'static [&'static str] = &[
        "after_run_created",
        "after_claim",
        "after_spawn",
        "before_outcome_commit",
    ];

    pub fn parse(s: &str) -> Option<CrashPoint> {
        let (point, task) = match s.split_once(':') {
            Some((p, t)) => (p, Some(t.to_owned())),
            None => (s, None),
        };
        Self::POINTS.contains(&point).then(|| CrashPoint {
            point: point.to_owned(),
            task,
        })
    }
}

fn crash_if(crash: &Option<CrashPoint>, point: &str, task: Option<&str>) {
    if let Some(c) = crash
        && c.point == point
        && (c.task.is_none() || c.task.as_deref() == task)
    {
        error!(
            point,
            "crash point reached; killing this process with SIGKILL"
        );
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat: Duration,
    pub lease_ttl: Duration,
    /// Longest sleep between passes; bounds how late the engine notices other processes'
    /// changes and edited pipeline files.
    pub poll: Duration,
    pub crash_at: Option<CrashPoint>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            crash_at: None,
        }
    }
}

struct RunningTry {
    cancel: watch::Sender<Option<KillReason>>,
    try_number: u32,
}

struct TryDone {
    ti_pk: i64,
}

/// Result of one pass, for the loop's sleep decision.
#[derive(Debug, Default, Clone)]
pub struct PassOutcome {
    /// Earliest data time at which something becomes due (a retry).
    pub next_due: Option<Timestamp>,
    /// Work was ready but could not be claimed now (limits, pools).
    pub blocked: bool,
    pub active_runs: usize,
    pub claimed: usize,
}

pub struct Engine {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    project: Project,
    mode: Mode,
    opts: Options,
    owner: String,
    host: String,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Parsed pipeline versions by hash (runs execute the version they were created with).
    versions: HashMap<String, Option<Arc<Pipeline>>>,
    /// Current version hash of each loaded pipeline.
    hashes: HashMap<String, String>,
    /// Last fire time each pipeline's runs were created up to.
    cursors: HashMap<String, Timestamp>,
    fingerprint: u64,
    running: HashMap<i64, RunningTry>,
    seen: HashMap<i64, (TaskState, u32)>,
    done_tx: mpsc::UnboundedSender<TryDone>,
    done_rx: mpsc::UnboundedReceiver<TryDone>,
    holds_scheduler_lease: bool,
    paused: HashSet<String>,
    /// Deadline state last written per active run, so unchanged states are not rewritten.
    deadline_seen: HashMap<i64, DeadlineState>,
    /// Duration estimates per run (from history before it), computed once per run.
    estimates: HashMap<i64, HashMap<String, i64>>,
    last_prune: Option<Instant>,
    stats: Arc<Stats>,
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

/// Creates the run for one interval of a pipeline (or finds the one that exists).
pub fn create_run(
    store: &Store,
    lp: &LoadedPipeline,
    iv: DataInterval,
    trigger: Trigger,
    now: Timestamp,
) -> Result<Created, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let run_id = p.schedule.run_id(&iv);
    let ds = p.schedule.ds(&iv).to_string();
    let tasks = new_tasks(p);
    Ok(store.create_run(
        &NewRun {
            run_id: &run_id,
            pipeline: &p.name,
            logical_date: &ds,
            data_interval_start: to_micros(iv.start),
            data_interval_end: to_micros(iv.end),
            now: to_micros(now),
            trigger,
            version: &version,
        },
        &tasks,
    )?)
}

/// One task instance per task of the pipeline, for a new or rerun run.
fn new_tasks(p: &Pipeline) -> Vec<NewTask<'_>> {
    p.tasks
        .iter()
        .map(|t| NewTask {
            task_id: &t.id,
            max_tries: t.max_tries(),
            pool: t.pool.as_deref(),
        })
        .collect()
}

/// Puts a finished run back to run again on the pipeline's current version.
pub fn rerun(
    store: &Store,
    lp: &LoadedPipeline,
    run_pk: i64,
    trigger: Trigger,
    now: Timestamp,
) -> Result<bool, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let tasks = new_tasks(p);
    Ok(store.reset_run(run_pk, to_micros(now), trigger, &version, &tasks)?)
}

impl Engine {
    pub fn new(
        project: Project,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        mode: Mode,
        opts: Options,
    ) -> Engine {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let fingerprint = project::fingerprint(&project.dir);
        Engine {
            store,
            clock,
            project,
            mode,
            opts,
            owner: Owner::me().to_string(),
            host: procs::hostname(),
            events: None,
            versions: HashMap::new(),
            hashes: HashMap::new(),
            cursors: HashMap::new(),
            fingerprint,
            running: HashMap::new(),
            seen: HashMap::new(),
            done_tx,
            done_rx,
            holds_scheduler_lease: false,
            paused: HashSet::new(),
            deadline_seen: HashMap::new(),
            estimates: HashMap::new(),
            last_prune: None,
            stats: Arc::new(Stats::default()),
        }
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The loop's figures, shared with whoever serves metrics.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn with_events(mut self, tx: mpsc::UnboundedSender<Event>) -> Self {
        self.events = Some(tx);
        self
    }

    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Takes the project's scheduler lease (only one `up` per project).
    pub fn acquire_scheduler_lease(&mut self) -> Result<(), Error> {
        let me = Owner::me();
        let ttl = us(self.opts.lease_ttl);
        for _ in 0..2 {
            let now = real_now_us();
            match self
                .store
                .acquire_scheduler_lease(&self.owner, &me.host, me.pid, now, ttl)?
            {
                None => {
                    self.holds_scheduler_lease = true;
                    return Ok(());
                }
                Some(holder) => {
                    // A holder on this machine whose process is gone cannot renew; take over
                    // at once instead of waiting for the lease to expire.
                    if Owner::parse(&holder.owner).is_some_and(|o| o.is_dead_here()) {
                        warn!(owner = %holder.owner, "previous scheduler is gone; taking over its lease");
                        self.store.break_scheduler_lease(&holder.owner)?;
                        continue;
                    }
                    return Err(Error::SchedulerRunning {
                        pid: holder.pid,
                        host: holder.host,
                        ago: (now - holder.heartbeat_at) / 1_000_000,
                        expires: ((holder.expires_at - now) / 1_000_000).max(0),
                    });
                }
            }
        }
        Err(Error::LostLease)
    }

    fn pipeline_of_version(&mut self, hash: &str) -> Result<Option<Arc<Pipeline>>, Error> {
        if let Some(p) = self.versions.get(hash) {
            return Ok(p.clone());
        }
        let parsed = match project::stored_pipeline(&self.store, hash, &self.project.settings)? {
            Some((_, Ok(p))) => Some(Arc::new(p)),
            Some((name, Err(errors))) => {
                error!(pipeline = %name, version = hash, errors = %errors, "a stored pipeline version no longer validates; its runs wait until the project is fixed");
                None
            }
            None => None,
        };
        self.versions.insert(hash.to_owned(), parsed.clone());
        Ok(parsed)
    }

    /// Re-reads pipeline files when they changed. A file that became invalid keeps its last
    /// valid version running; a removed file stops being scheduled.
    fn reload_if_changed(&mut self) {
        let fp = project::fingerprint(&self.project.dir);
        if fp == self.fingerprint {
            return;
        }
        self.fingerprint = fp;
        match project::load(&self.project.dir) {
            Ok(mut fresh) => {
                for problem in &fresh.problems {
                    if problem.has_errors() {
                        error!(file = %problem.path.display(), "invalid pipeline file; keeping its last valid version\n{problem}");
                    }
                }
                project::keep_last_valid(&self.project, &mut fresh);
                for (name, lp) in &fresh.pipelines {
                    let changed = self
                        .project
                        .pipelines
                        .get(name)
                        .is_none_or(|old| old.source != lp.source);
                    if changed {
                        info!(pipeline = %name, "pipeline file changed; new runs use this version");
                        self.cursors.remove(name);
                        self.hashes.remove(name);
                    }
                }
                for name in self.project.pipelines.keys() {
                    if !fresh.pipelines.contains_key(name) {
                        info!(pipeline = %name, "pipeline removed; runs in flight finish on their version");
                        self.cursors.remove(name);
                    }
                }
                self.project = fresh;
            }
            Err(e) => error!(error = %e, "cannot read the project; keeping the loaded pipelines"),
        }
    }

    /// Creates the runs whose intervals have ended by `now` (one per interval, ever).
    fn schedule_due_runs(&mut self, now: Timestamp) -> Result<Option<Timestamp>, Error> {
        let mut next: Option<Timestamp> = None;
        let mut names: Vec<String> = self.project.pipelines.keys().cloned().collect();
        names.sort();
        for name in names {
            if self.paused.contains(&name) {
                continue;
            }
            let lp = self.project.pipelines[&name].clone();
            let p = lp.pipeline.clone();
            let first_start = p.schedule.next_fire_inclusive(p.start_instant())?;
            let mut cursor = match self.cursors.get(&name) {
                Some(c) => *c,
                None => self.initial_catchup(&lp, first_start, now)?,
            };
            loop {
                let fire = p.schedule.next_fire(cursor)?;
                if fire > now {
                    next = Some(next.map_or(fire, |n: Timestamp| n.min(fire)));
                    break;
                }
                let iv = p.schedule.interval_ending_at(fire)?;
                if p.in_range(&iv) {
                    self.create_scheduled(&lp, iv, now)?;
                }
                cursor = fire;
            }
            self.cursors.insert(name, cursor);
        }
        Ok(next)
    }

    fn create_scheduled(
        &mut self,
        lp: &LoadedPipeline,
        iv: DataInterval,
        now: Timestamp,
    ) -> Result<(), Error> {
        if let Created::New(pk) = create_run(&self.store, lp, iv, Trigger::Scheduled, now)? {
            info!(pipeline = %lp.pipeline.name, run_id = %lp.pipeline.schedule.run_id(&iv), run = pk, "run created");
            crash_if(&self.opts.crash_at, "after_run_created", None);
        }
        Ok(())
    }

    /// On first sight of a pipeline: with catchup, one run per missed interval since
    /// start_date; without, only the latest ended interval. Returns the cursor.
    fn initial_catchup(
        &mut self,
        lp: &LoadedPipeline,
        first_start: Timestamp,
        now: Timestamp,
    ) -> Result<Timestamp, Error> {
        let p = lp.pipeline.clone();
        let mut cursor = first_start;
        if p.catchup {
            let mut start = first_start;
            loop {
                let end = p.schedule.next_fire(start)?;
                if end > now {
                    break;
                }
                let iv = DataInterval { start, end };
                if p.in_range(&iv)
                    && self
                        .store
                        .find_run_by_interval(&p.name, to_micros(start))?
                        .is_none()
                {
                    self.create_scheduled(&lp.clone(), iv, now)?;
                }
                cursor = end;
                start = end;
            }
        } else {
            let latest = if p.schedule.next_fire_inclusive(now)? == now {
                now
            } else {
                p.schedule.prev_fire(now)?
            };
            if latest > first_start {
                let iv = p.schedule.interval_ending_at(latest)?;
                if p.in_range(&iv) {
                    self.create_scheduled(lp, iv, now)?;
                }
                cursor = latest;
            }
        }
        Ok(cursor)
    }

    fn in_scope(&self, run: &RunRow) -> bool {
        match &self.mode {
            Mode::Scheduler { .. } => true,
            Mode::Runs(set) => set.contains(&run.pk),
        }
    }

    /// One scheduling pass over the active runs: activate runs, decide pending tasks,
    /// finish runs, claim and start ready tries.
    pub fn pass(&mut self, now: Timestamp, may_claim: bool) -> Result<PassOutcome, Error> {
        let mut out = PassOutcome::default();
        let mut runs: Vec<RunRow> = self
            .store
            .active_runs()?
            .into_iter()
            .filter(|r| self.in_scope(r))
            .collect();
        runs.sort_by_key(|r| (r.trigger.priority(), r.data_interval_start, r.pk));
        out.active_runs = runs.len();
        let mut tis_by_run: HashMap<i64, Vec<TiRow>> = HashMap::new();
        if !runs.is_empty() {
            for ti in self.store.task_instances_of_active_runs()? {
                tis_by_run.entry(ti.run_pk).or_default().push(ti);
            }
        }
        let now_us = to_micros(now);
        let mut candidates: Vec<(Arc<Pipeline>, RunRow, TiRow)> = vec![];
        // Caches keyed by task instance or run keep only what is active, so memory follows
        // the active work, not the history.
        let live: HashSet<i64> = tis_by_run.values().flatten().map(|t| t.pk).collect();
        self.seen.retain(|pk, _| live.contains(pk));
        let live_runs: HashSet<i64> = runs.iter().map(|r| r.pk).collect();
        self.deadline_seen.retain(|pk, _| live_runs.contains(pk));
        self.estimates.retain(|pk, _| live_runs.contains(pk));
        for mut run in runs {
            let Some(p) = self.pipeline_of_version(&run.version)? else {
                continue;
            };
            if run.status == RunState::Queued {
                // Pausing stops the scheduler from starting runs; a run asked for explicitly
                // (`run`, `backfill`) still runs.
                let paused = matches!(self.mode, Mode::Scheduler { .. })
                    && self.paused.contains(&run.pipeline);
                if paused || !may_claim {
                    continue;
                }
                if !self.store.activate_run(run.pk, now_us, p.max_active_runs)? {
                    continue;
                }
                run.status = RunState::Running;
                info!(pipeline = %run.pipeline, run_id = %run.run_id, trigger = run.trigger.as_str(), "run started");
            }
            let mut tis = tis_by_run.remove(&run.pk).unwrap_or_default();
            let states: HashMap<String, TaskState> =
                tis.iter().map(|t| (t.task_id.clone(), t.state)).collect();
            let decisions = advance(&p, &states);
            if !decisions.is_empty() {
                self.store.decide_pending(run.pk, &decisions, now_us)?;
                for ti in tis.iter_mut() {
                    if let Some((_, s)) = decisions.iter().find(|(id, _)| *id == ti.task_id) {
                        ti.state = *s;
                    }
                }
            }
            for ti in &tis {
                self.observe(&p, &run, ti, now);
            }
            if let Some(outcome) = run_outcome(tis.iter().map(|t| t.state)) {
                if self.store.finish_run(run.pk, outcome, now_us)? {
                    self.judge_finished(&p, &run, now)?;
                    let rows = self.store.run(run.pk)?.map(|r| r.rows_loaded).unwrap_or(0);
                    info!(pipeline = %run.pipeline, run_id = %run.run_id, state = %outcome, rows_loaded = rows, "run finished");
                    self.emit(Event::RunEnded {
                        pipeline: run.pipeline.clone(),
                        run_id: run.run_id.clone(),
                        ds: run.logical_date.clone(),
                        state: outcome,
                        rows_loaded: rows,
                        at: now,
                        trigger: run.trigger,
                    });
                }
                continue;
            }
            for ti in tis {
                match ti.state {
                    // A QUEUED task may wait for a time too (a sensor between pokes).
                    TaskState::Queued | TaskState::UpForRetry => match ti.next_try_at {
                        Some(at) if at > now_us => {
                            let at = from_micros(at);
                            out.next_due = Some(out.next_due.map_or(at, |n| n.min(at)));
                        }
                        _ => candidates.push((p.clone(), run.clone(), ti)),
                    },
                    _ => {}
                }
            }
        }
        if !may_claim {
            return Ok(out);
        }
        // Scheduled and manual runs first, then older intervals, then upstream tasks first.
        candidates.sort_by_key(|(p, run, ti)| {
            (
                run.trigger.priority(),
                run.data_interval_start,
                p.topo_rank(&ti.task_id),
            )
        });
        // Claim in batches of the free slots: one transaction per batch. Claims refused for a
        // pool or task limit leave their slot to the next candidates.
        let mut rest = candidates.into_iter().peekable();
        loop {
            let free =
                (self.project.settings.parallelism as usize).saturating_sub(self.running.len());
            if rest.peek().is_none() {
                break;
            }
            if free == 0 {
                out.blocked = true;
                break;
            }
            let batch: Vec<(Arc<Pipeline>, RunRow, TiRow)> = rest.by_ref().take(free).collect();
            let lease_until = real_now_us() + us(self.opts.lease_ttl);
            let claims: Vec<Claim<'_>> = batch
                .iter()
                .map(|(p, _, ti)| Claim {
                    ti_pk: ti.pk,
                    owner: &self.owner,
                    host: &self.host,
                    now: now_us,
                    lease_until,
                    pool: p
                        .task(&ti.task_id)
                        .and_then(|t| t.pool.as_deref())
                        .map(|name| {
                            (
                                name,
                                self.project.settings.pools.get(name).copied().unwrap_or(1),
                            )
                        }),
                    pipeline_limit: (&p.name, p.max_active_tasks),
                })
                .collect();
            let results = self.store.claim_batch(&claims)?;
            drop(claims);
            for ((p, run, ti), claimed) in batch.into_iter().zip(results) {
                match claimed {
                    Some(try_number) => {
                        out.claimed += 1;
                        self.start_try(p, run, ti, try_number);
                    }
                    None => out.blocked = true,
                }
            }
        }
        Ok(out)
    }

    /// A finished run met its deadline or missed it.
    fn judge_finished(&mut self, p: &Pipeline, run: &RunRow, now: Timestamp) -> Result<(), Error> {
        let iv = DataInterval {
            start: from_micros(run.data_interval_start),
            end: from_micros(run.data_interval_end),
        };
        if let Some(d) = deadline::deadline_for(p, &iv) {
            let state = if now <= d {
                DeadlineState::Met
            } else {
                DeadlineState::Missed
            };
            if self
                .store
                .set_deadline(run.pk, to_micros(d), state.as_str(), None)?
                && state == DeadlineState::Missed
            {
                self.emit_deadline(run, state, d, None, now);
            }
        }
        Ok(())
    }

    fn emit_deadline(
        &self,
        run: &RunRow,
        state: DeadlineState,
        d: Timestamp,
        forecast: Option<Timestamp>,
        now: Timestamp,
    ) {
        match state {
            DeadlineState::AtRisk => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, deadline = %d, forecast = ?forecast, "deadline at risk")
            }
            DeadlineState::Missed => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, deadline = %d, "deadline missed")
            }
            _ => {}
        }
        self.emit(Event::Deadline {
            pipeline: run.pipeline.clone(),
            run_id: run.run_id.clone(),
            ds: run.logical_date.clone(),
            state,
            deadline: d,
            forecast,
            at: now,
        });
    }

    /// Judges every unfinished run of a pipeline with a deadline: missed once the deadline
    /// passed, at risk when the forecast from the remaining critical path passes it.
    /// Returns the next deadline still ahead, so the loop wakes for it.
    fn check_deadlines(&mut self, now: Timestamp) -> Result<Option<Timestamp>, Error> {
        let mut next: Option<Timestamp> = None;
        for run in self.store.active_runs()? {
            let Some(p) = self.pipeline_of_version(&run.version)? else {
                continue;
            };
            let iv = DataInterval {
                start: from_micros(run.data_interval_start),
                end: from_micros(run.data_interval_end),
            };
            let Some(d) = deadline::deadline_for(&p, &iv) else {
                continue;
            };
            if !self.estimates.contains_key(&run.pk) {
                let est: HashMap<String, i64> = self
                    .store
                    .recent_durations(&p.name, run.data_interval_start, 10)?
                    .into_iter()
                    .filter_map(|(t, xs)| deadline::median(xs).map(|m| (t, m)))
                    .collect();
                self.estimates.insert(run.pk, est);
            }
            let est = &self.estimates[&run.pk];
            let tis = self.store.task_instances(run.pk)?;
            let tries = if tis.iter().any(|t| t.state == TaskState::Running) {
                self.store.tries(run.pk)?
            } else {
                vec![]
            };
            let now_us = to_micros(now);
            let progress: HashMap<String, TaskProgress> = tis
                .iter()
                .map(|ti| {
                    let running_ms = (ti.state == TaskState::Running)
                        .then(|| {
                            tries
                                .iter()
                                .find(|t| t.ti_pk == ti.pk && t.try_number == ti.try_number)
                                .map(|t| (now_us - t.start_time) / 1000)
                        })
                        .flatten();
                    (
                        ti.task_id.clone(),
                        TaskProgress {
                            state: Some(ti.state),
                            running_ms,
                            estimate_ms: est.get(&ti.task_id).copied(),
                        },
                    )
                })
                .collect();
            let remaining = deadline::forecast_remaining_ms(&p, &progress);
            let state = deadline::judge(now, d, remaining);
            let forecast = remaining.map(|ms| plus(now, Duration::from_millis(ms as u64)));
            if self.deadline_seen.get(&run.pk) != Some(&state) {
                self.deadline_seen.insert(run.pk, state);
                let changed = self.store.set_deadline(
                    run.pk,
                    to_micros(d),
                    state.as_str(),
                    forecast.map(to_micros),
                )?;
                if changed && matches!(state, DeadlineState::AtRisk | DeadlineState::Missed) {
                    self.emit_deadline(&run, state, d, forecast, now);
                }
            }
            if d > now {
                next = Some(next.map_or(d, |n: Timestamp| n.min(d)));
            }
        }
        Ok(next)
    }

    /// Retention: removes finished runs older than the project's `max_age`, their history
    /// and their log files. At most every ten minutes, by the scheduler only.
    fn prune_if_due(&mut self) -> Result<(), Error> {
        let Some(max_age) = self.project.settings.retention else {
            return Ok(());
        };
        if !self.holds_scheduler_lease
            || self
                .last_prune
                .is_some_and(|t| t.elapsed() < Duration::from_secs(600))
        {
            return Ok(());
        }
        self.last_prune = Some(Instant::now());
        let cutoff = to_micros(self.clock.now()) - us(max_age);
        let pruned = self.store.prune(cutoff, 500)?;
        if pruned.runs == 0 {
            return Ok(());
        }
        let logs = self.project.logs_dir();
        let logs = logs.canonicalize().unwrap_or(logs);
        let mut dirs = HashSet::new();
        for path in &pruned.log_paths {
            let path = std::path::Path::new(path);
            // Only files under the project's log folder: a store edited by hand cannot make
            // retention delete anything else.
            if let Some(real) = project::inside(&logs, path) {
                let _ = std::fs::remove_file(&real);
                if let Some(d) = real.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            let mut d = Some(d.as_path());
            while let Some(dir) = d.filter(|x| x.starts_with(&logs) && *x != logs) {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
                d = dir.parent();
            }
        }
        info!(
            runs = pruned.runs,
            tries = pruned.tries,
            "retention removed old runs"
        );
        Ok(())
    }

    /// Reports task state changes (including those made by other processes) once each.
    fn observe(&mut self, p: &Pipeline, run: &RunRow, ti: &TiRow, now: Timestamp) {
        let key = (ti.state, ti.try_number);
        if self.seen.get(&ti.pk) == Some(&key) {
            return;
        }
        self.seen.insert(ti.pk, key);
        if ti.state.is_terminal() {
            self.emit(Event::TaskEnded {
                pipeline: run.pipeline.clone(),
                run_id: run.run_id.clone(),
                task_id: ti.task_id.clone(),
                state: ti.state,
                try_number: ti.try_number,
                at: now,
                tz: p.schedule.tz().clone(),
            });
        } else if ti.state == TaskState::UpForRetry {
            self.emit(Event::TaskRetrying {
                pipeline: run.pipeline.clone(),
                run_id: run.run_id.clone(),
                task_id: ti.task_id.clone(),
                try_number: ti.try_number,
                next_try_at: ti.next_try_at.map(from_micros).unwrap_or(now),
            });
        }
    }

    fn start_try(&mut self, p: Arc<Pipeline>, run: RunRow, ti: TiRow, try_number: u32) {
        let (cancel_tx, cancel_rx) = watch::channel(None);
        self.running.insert(
            ti.pk,
            RunningTry {
                cancel: cancel_tx,
                try_number,
            },
        );
        let ctx = TryCtx {
            secrets: secret_values(&self.project.settings),
            channels: self.project.settings.channels.clone(),
            connections: self.project.settings.connections.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            pipeline: p,
            run,
            ti,
            try_number,
            owner: self.owner.clone(),
            project_dir: self.project.dir.clone(),
            logs_dir: self.project.logs_dir(),
            kill_grace: self.project.settings.kill_grace,
            crash_at: self.opts.crash_at.clone(),
        };
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ti_pk = ctx.ti.pk;
            run_try(ctx, cancel_rx).await;
            let _ = done.send(TryDone { ti_pk });
        });
    }

    /// Renews leases, stops tries that lost their claim, and recovers orphans.
    fn heartbeat(&mut self) -> Result<(), Error> {
        let real = real_now_us();
        let owned: HashSet<(i64, u32)> = self
            .store
            .renew_leases(&self.owner, real + us(self.opts.lease_ttl))?
            .into_iter()
            .collect();
        for (ti, rt) in &self.running {
            if !owned.contains(&(*ti, rt.try_number)) {
                warn!(
                    ti,
                    try_number = rt.try_number,
                    "try lost its claim; stopping its process"
                );
                let _ = rt.cancel.send(Some(KillReason::LostClaim));
            }
        }
        if self.holds_scheduler_lease
            && !self
                .store
                .renew_scheduler_lease(&self.owner, real, us(self.opts.lease_ttl))?
        {
            return Err(Error::LostLease);
        }
        self.paused = self.store.paused_pipelines()?.into_iter().collect();
        self.recover_orphans()?;
        self.prune_if_due()
    }

    /// Finds RUNNING tries whose engine is gone (dead process on this host, or an expired
    /// lease), makes sure no process of theirs survives, and fails or retries them per policy.
    pub fn recover_orphans(&mut self) -> Result<(), Error> {
        let real = real_now_us();
        for ti in self.store.running_task_instances()? {
            if self.running.contains_key(&ti.pk) {
                continue;
            }
            let owner_text = ti.owner.clone().unwrap_or_default();
            let mine = owner_text == self.owner;
            let owner = Owner::parse(&owner_text);
            let dead = mine
                || owner.as_ref().is_some_and(Owner::is_dead_here)
                || ti.lease_until.is_none_or(|l| l < real);
            if !dead {
                continue;
            }
            if ti.host.as_deref() == Some(self.host.as_str())
                && let Some(pid) = ti
                    .pid
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 1)
            {
                let start = ti.pid_start.map(|s| s as u64);
                if procs::alive(pid, start) || procs::group_alive(pid) {
                    warn!(task = %ti.task_id, pid, "killing the process group of an orphaned try");
                    procs::kill_group_blocking(pid, self.project.settings.kill_grace);
                }
            }
            if ti.host.as_deref() == Some(self.host.as_str()) {
                // Processes of the try whose pid was not recorded yet (it had just started).
                let key = try_key(&self.store, ti.pk, ti.try_number);
                if procs::kill_by_env("NIGHTSHIFT_TRY_KEY", &key, self.project.settings.kill_grace)
                    > 0
                {
                    warn!(task = %ti.task_id, "killed the processes of an orphaned try found by its key");
                }
            }
            let now = self.clock.now();
            let retry = self.retry_decision(&ti, now)?;
            let who = owner
                .map(|o| format!("pid {} on `{}`", o.pid, o.host))
                .unwrap_or_else(|| "unknown".into());
            let msg = format!(
                "interrupted: the scheduler running this try ({who}) stopped; the try's processes were killed"
            );
            let written = self.store.finish_try(&FinishTry {
                ti_pk: ti.pk,
                try_number: ti.try_number,
                owner: ti.owner.as_deref(),
                end: to_micros(now),
                try_state: TaskState::Failed,
                ti_state: retry.0,
                next_try_at: retry.1,
                exit_code: None,
                signal: None,
                error: Some(&msg),
                metrics: None,
                rows_loaded: None,
                extra_tries: 0,
                log_path: None,
                pid: None,
            })?;
            if written {
                warn!(pipeline = %ti.pipeline, task = %ti.task_id, try_number = ti.try_number, next = %retry.0, "recovered an orphaned try");
            }
        }
        Ok(())
    }

    fn retry_decision(
        &mut self,
        ti: &TiRow,
        now: Timestamp,
    ) -> Result<(TaskState, Option<i64>), Error> {
        if ti.try_number >= ti.max_tries {
            return Ok((TaskState::Failed, None));
        }
        let run = self.store.run(ti.run_pk)?;
        let delay = match run {
            Some(r) => self
                .pipeline_of_version(&r.version)?
                .and_then(|p| {
                    p.task(&ti.task_id)
                        .map(|t| t.retry.delay_before(ti.try_number + 1, fastrand::f64()))
                })
                .unwrap_or_default(),
            None => Duration::ZERO,
        };
        Ok((TaskState::UpForRetry, Some(to_micros(plus(now, delay)))))
    }

    fn my_runs_finished(&self) -> Result<bool, Error> {
        if let Mode::Runs(set) = &self.mode {
            for pk in set {
                if let Some(r) = self.store.run(*pk)?
                    && !r.status.is_terminal()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Runs until the mode's work is done, `until` is reached, or `shutdown` turns true.
    /// On shutdown, running tries get the project's `shutdown_grace`, then are killed and
    /// recorded so a restart retries them.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let result = self.run_inner(&mut shutdown).await;
        if self.holds_scheduler_lease {
            let _ = self.store.release_scheduler_lease(&self.owner);
        }
        result
    }

    async fn run_inner(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Error> {
        self.paused = self.store.paused_pipelines()?.into_iter().collect();
        self.recover_orphans()?;
        let until = match &self.mode {
            Mode::Scheduler { until } => *until,
            Mode::Runs(_) => None,
        };
        let scheduling = matches!(self.mode, Mode::Scheduler { .. });
        let mut last_heartbeat = Instant::now();
        let mut last_reload = Instant::now();
        let mut drain: Option<Instant> = None;
        let mut killed = false;
        loop {
            if *shutdown.borrow() && drain.is_none() {
                info!(
                    running = self.running.len(),
                    "shutting down: waiting for running tasks"
                );
                drain = Some(Instant::now() + self.project.settings.shutdown_grace);
            }
            if last_heartbeat.elapsed() >= self.opts.heartbeat {
                last_heartbeat = Instant::now();
                if let Err(e) = self.heartbeat() {
                    self.store_trouble(e).await?;
                    continue;
                }
            }
            let now = self.clock.now();
            let past_until = until.is_some_and(|u| now >= u);
            if let Some(deadline) = drain {
                if self.running.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline && !killed {
                    warn!(
                        running = self.running.len(),
                        "grace period over: stopping running tasks"
                    );
                    for rt in self.running.values() {
                        let _ = rt.cancel.send(Some(KillReason::Shutdown));
                    }
                    killed = true;
                }
                tokio::select! {
                    Some(d) = self.done_rx.recv() => { self.running.remove(&d.ti_pk); }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            let mut next_fire = None;
            if scheduling && !past_until {
                if last_reload.elapsed() >= self.opts.poll {
                    last_reload = Instant::now();
                    self.reload_if_changed();
                }
                next_fire = match self.schedule_due_runs(now) {
                    Ok(n) => n,
                    Err(e) => {
                        self.store_trouble(e).await?;
                        continue;
                    }
                };
            }
            let pass = match self.pass(now, !past_until) {
                Ok(p) => p,
                Err(e) => {
                    self.store_trouble(e).await?;
                    continue;
                }
            };
            if scheduling && !past_until {
                let next_deadline = match self.check_deadlines(now) {
                    Ok(n) => n,
                    Err(e) => {
                        self.store_trouble(e).await?;
                        continue;
                    }
                };
                next_fire = [next_fire, next_deadline].into_iter().flatten().min();
            }
            if past_until && self.running.is_empty() {
                info!(until = %until.unwrap_or(now), "reached the end of the simulation");
                return Ok(());
            }
            if !scheduling && self.running.is_empty() && self.my_runs_finished()? {
                return Ok(());
            }
            let next_due = [pass.next_due, next_fire].into_iter().flatten().min();
            if self.clock.is_simulated()
                && self.running.is_empty()
                && pass.claimed == 0
                && !pass.blocked
            {
                // Nothing in flight: skip idle data time to the next thing that is due.
                let target = [next_due, until].into_iter().flatten().min();
                if let Some(t) = target {
                    if t > now {
                        self.clock.advance_to(t);
                    }
                    continue;
                }
            }
            let mut sleep_for = self.opts.poll;
            if let Some(due) = next_due {
                let wait = SignedDuration::from_micros(to_micros(due) - to_micros(now));
                sleep_for = sleep_for.min(Duration::try_from(wait).unwrap_or(Duration::ZERO));
            }
            let slept = Instant::now();
            tokio::select! {
                Some(d) = self.done_rx.recv() => {
                    self.running.remove(&d.ti_pk);
                    while let Ok(d) = self.done_rx.try_recv() { self.running.remove(&d.ti_pk); }
                }
                _ = tokio::time::sleep(sleep_for) => {
                    let late = slept.elapsed().saturating_sub(sleep_for);
                    self.stats.loop_lag_us.store(i64::try_from(late.as_micros()).unwrap_or(i64::MAX), Ordering::Relaxed);
                }
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Whether a store error is worth waiting out (locked, busy, briefly unreadable) rather
/// than stopping the scheduler.
fn transient(e: &Error) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        Error::Store(nightshift_store::Error::Sqlite { source, .. }) => matches!(
            source.sqlite_error_code(),
            Some(
                DatabaseBusy | DatabaseLocked | CannotOpen | SystemIoFailure | DiskFull | ReadOnly
            )
        ),
        _ => false,
    }
}

impl Engine {
    /// The store failed: wait a second and let the loop try again when the failure is
    /// transient (the store is locked or unavailable for a while); stop otherwise.
    async fn store_trouble(&mut self, e: Error) -> Result<(), Error> {
        if !transient(&e) {
            return Err(e);
        }
        warn!(error = %e, "the metadata store is locked or unavailable; retrying in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }
}

struct TryCtx {
    /// Values of secret environment variables, masked in logs.
    secrets: Vec<String>,
    channels: std::collections::BTreeMap<String, nightshift_core::project::Channel>,
    connections: std::collections::BTreeMap<String, nightshift_core::project::Connection>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    pipeline: Arc<Pipeline>,
    run: RunRow,
    ti: TiRow,
    try_number: u32,
    owner: String,
    project_dir: PathBuf,
    logs_dir: PathBuf,
    kill_grace: Duration,
    crash_at: Option<CrashPoint>,
}

/// argv of a notify try: `nightshift __notify REQUEST`, with the run's summary as the store
/// has it now. Webhook URLs stay in the environment (`url_env`), out of argv and logs.
fn notify_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::NotifySpec,
) -> Result<Vec<String>, String> {
    use nightshift_core::pipeline::{NotifyRequest, TaskSummary};
    let tis = c
        .store
        .task_instances(c.run.pk)
        .map_err(|e| e.to_string())?;
    let tries = c.store.tries(c.run.pk).map_err(|e| e.to_string())?;
    let mut tasks = vec![];
    let mut failed = false;
    let mut rows = 0;
    for ti in tis.iter().filter(|t| t.pk != c.ti.pk) {
        let last = tries
            .iter()
            .filter(|t| t.ti_pk == ti.pk)
            .max_by_key(|t| t.try_number);
        failed |= ti.state.is_failure();
        if ti.state == TaskState::Success {
            rows += last.and_then(|t| t.rows_loaded).unwrap_or(0);
        }
        tasks.push(TaskSummary {
            task_id: ti.task_id.clone(),
            state: ti.state.as_str().to_owned(),
            tries: tries.iter().filter(|t| t.ti_pk == ti.pk).count() as u32,
            duration_ms: last.and_then(|t| t.duration_ms),
            error: last.and_then(|t| t.error.clone()),
        });
    }
    let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
    let failed_checks = nodes
        .iter()
        .filter(|(_, _, n)| {
            n.resource_type == "test" && matches!(n.status.as_str(), "fail" | "error")
        })
        .map(|(_, _, n)| n.unique_id.clone())
        .collect();
    let channels = spec
        .channels
        .iter()
        .map(|name| {
            c.channels
                .get(name)
                .map(|ch| (name.clone(), ch.clone()))
                .ok_or_else(|| format!("unknown channel `{name}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = NotifyRequest {
        pipeline: c.run.pipeline.clone(),
        run_id: c.run.run_id.clone(),
        ds: c.run.logical_date.clone(),
        status: if failed { "FAILED" } else { "SUCCESS" }.to_owned(),
        rows_loaded: rows,
        tasks,
        failed_checks,
        channels,
        project_dir: c.project_dir.to_string_lossy().into_owned(),
    };
    internal_argv("__notify", &request)
}

/// argv of a publish try: `nightshift __publish REQUEST`. Refuses when a dbt test of this
/// run failed, whatever the trigger rules let through: only tested data is published.
fn publish_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::PublishSpec,
    ctx: &Context,
    dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
    // The latest try of each dbt task speaks for it.
    let mut latest: std::collections::BTreeMap<&str, u32> = Default::default();
    for (task, try_number, _) in &nodes {
        let e = latest.entry(task.as_str()).or_insert(0);
        *e = (*e).max(*try_number);
    }
    let mut checks: std::collections::BTreeMap<String, u32> = Default::default();
    let mut invocation = None;
    for (task, try_number, n) in &nodes {
        if latest.get(task.as_str()) != Some(try_number) {
            continue;
        }
        invocation = invocation.or(n.invocation_id.clone());
        if n.resource_type == "test" {
            *checks.entry(n.status.clone()).or_insert(0) += 1;
        }
    }
    let bad = checks.get("fail").copied().unwrap_or(0) + checks.get("error").copied().unwrap_or(0);
    if bad > 0 {
        return Err(format!(
            "refusing to publish: {bad} dbt test(s) of this run failed"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let (dbt_argv, dbt_env) = dbt::command(&spec.dbt, &c.project_dir, dir, ctx, None);
    let request = nightshift_core::pipeline::PublishRequest {
        outputs: spec.outputs.clone(),
        root: c
            .project_dir
            .join(&spec.output)
            .to_string_lossy()
            .into_owned(),
        dbt_argv,
        dbt_env,
        ds: c.run.logical_date.clone(),
        run_id: c.run.run_id.clone(),
        checks,
        dbt_invocation_id: invocation,
    };
    internal_argv("__publish", &request)
}

/// The values of the project's secret environment variables (short values are left alone:
/// masking `1` would garble every log).
fn secret_values(settings: &nightshift_core::ProjectSettings) -> Vec<String> {
    let mut names: Vec<&str> = settings.secrets.iter().map(String::as_str).collect();
    use nightshift_core::project::Channel;
    for ch in settings.channels.values() {
        match ch {
            Channel::Webhook {
                url_env: Some(v), ..
            } => names.push(v),
            Channel::Smtp {
                username_env,
                password_env,
                ..
            } => names.extend(username_env.iter().chain(password_env).map(String::as_str)),
            _ => {}
        }
    }
    names.push(&settings.web.token_env);
    #[allow(clippy::disallowed_methods)]
    names
        .into_iter()
        .filter_map(|n| std::env::var(n).ok())
        // A token written in nightshift.toml is a secret too.
        .chain(settings.web.token.clone())
        .filter(|v| v.len() >= 4)
        .collect()
}

/// argv of a built-in kind: this binary, re-executed as `nightshift __<kind> REQUEST`.
fn internal_argv(kind: &str, request: &impl serde::Serialize) -> Result<Vec<String>, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the nightshift binary: {e}"))?;
    let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
    Ok(vec![
        exe.to_string_lossy().into_owned(),
        kind.to_owned(),
        json,
    ])
}

/// One sensor poke runs at most this long.
const POKE_TIMEOUT: Duration = Duration::from_secs(60);

fn describe_condition(c: &nightshift_core::pipeline::SensorCondition) -> String {
    match c {
        nightshift_core::pipeline::SensorCondition::Sql { connection, sql } => {
            format!("`{sql}` on `{connection}`")
        }
        nightshift_core::pipeline::SensorCondition::Path { path } => format!("`{path}` to exist"),
    }
}

/// A named connection as a child process needs it: paths made absolute.
fn resolve_connection(
    c: &TryCtx,
    name: &str,
) -> Result<nightshift_core::project::Connection, String> {
    use nightshift_core::project::Connection;
    match c.connections.get(name) {
        Some(Connection::Sqlite { path }) => Ok(Connection::Sqlite {
            path: c.project_dir.join(path).to_string_lossy().into_owned(),
        }),
        None => Err(format!("unknown connection `{name}`")),
    }
}

/// argv of a sensor poke: this binary, re-executed as `nightshift __sensor REQUEST`.
fn sensor_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::SensorSpec,
    ctx: &Context,
) -> Result<Vec<String>, String> {
    use nightshift_core::pipeline::{SensorCondition, SensorRequest};
    let (condition, connection) = match &spec.condition {
        SensorCondition::Sql { connection, sql } => {
            let conn = resolve_connection(c, connection)?;
            (
                SensorCondition::Sql {
                    connection: connection.clone(),
                    sql: sql.clone(),
                },
                Some(conn),
            )
        }
        SensorCondition::Path { path } => (
            SensorCondition::Path {
                path: c
                    .project_dir
                    .join(ctx.render(path))
                    .to_string_lossy()
                    .into_owned(),
            },
            None,
        ),
    };
    let request = SensorRequest {
        condition,
        connection,
        ds: c.run.logical_date.clone(),
        start: rfc3339(c.run.data_interval_start),
        end: rfc3339(c.run.data_interval_end),
        run_id: c.run.run_id.clone(),
    };
    internal_argv("__sensor", &request)
}

/// argv of an extract try: this binary, re-executed as `nightshift __extract REQUEST`.
fn extract_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::ExtractSpec,
) -> Result<Vec<String>, String> {
    let connection = resolve_connection(c, &spec.connection)?;
    let mut history: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let recent = c
        .store
        .recent_metrics(&c.run.pipeline, &c.ti.task_id, c.run.data_interval_start, 7)
        .unwrap_or_default();
    for m in recent {
        let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, f64>>(&m) else {
            continue;
        };
        for t in &spec.tables {
            if let Some(v) = map.get(&format!("rows.{}", t.name)) {
                history.entry(t.name.clone()).or_default().push(*v as i64);
            }
        }
    }
    let request = nightshift_core::pipeline::ExtractRequest {
        spec: spec.clone(),
        connection,
        project_dir: c.project_dir.to_string_lossy().into_owned(),
        ds: c.run.logical_date.clone(),
        start: rfc3339(c.run.data_interval_start),
        end: rfc3339(c.run.data_interval_end),
        run_id: c.run.run_id.clone(),
        history,
    };
    internal_argv("__extract", &request)
}

/// How long a try runs before its pid is recorded on its own (see `run_try`).
const RECORD_PID_AFTER: Duration = Duration::from_millis(200);

/// Identifies a try's processes on this machine through their environment, for recovery
/// when the pid was not recorded yet: unique per store, task instance and try.
fn try_key(store: &Store, ti_pk: i64, try_number: u32) -> String {
    let store_id = nightshift_store::version_hash("store", &store.path().to_string_lossy());
    format!("{store_id}:{ti_pk}:{try_number}")
}

fn rfc3339(us: i64) -> String {
    from_micros(us).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs one claimed try to its recorded outcome.
async fn run_try(c: TryCtx, cancel: watch::Receiver<Option<KillReason>>) {
    let Some(task) = c.pipeline.task(&c.ti.task_id).cloned() else {
        return;
    };
    // One folder per run (not per task): creating inodes is a visible share of a short
    // task's cost.
    let dir = c.logs_dir.join(&c.run.pipeline).join(&c.run.run_id);
    let log_path = dir.join(format!("{}.try-{}.log", task.id, c.try_number));
    let metrics_path = dir.join(format!("{}.try-{}.metrics.jsonl", task.id, c.try_number));
    let ctx = Context {
        ds: c.run.logical_date.clone(),
        run_id: c.run.run_id.clone(),
        data_interval_start: rfc3339(c.run.data_interval_start),
        data_interval_end: rfc3339(c.run.data_interval_end),
        try_number: c.try_number,
        pipeline: c.run.pipeline.clone(),
        task_id: task.id.clone(),
    };
    let mut cannot_start: Option<String> = None;
    let mut extra_env: Vec<(String, String)> = vec![];
    let dbt_dir = dbt::try_dir(
        &c.project_dir,
        &c.run.pipeline,
        &c.run.run_id,
        &task.id,
        c.try_number,
    );
    let argv = match &task.kind {
        TaskKind::Notify(spec) => match notify_argv(&c, spec) {
            Ok(argv) => argv,
            Err(e) => {
                cannot_start = Some(e);
                vec![]
            }
        },
        TaskKind::Publish(spec) => match publish_argv(&c, spec, &ctx, &dbt_dir) {
            Ok(argv) => argv,
            Err(e) => {
                cannot_start = Some(e);
                vec![]
            }
        },
        TaskKind::Dbt(spec) => {
            // A retry runs only what failed or was skipped, when the previous try says so.
            let prev = (c.try_number > 1)
                .then(|| {
                    dbt::read_results(&dbt::try_dir(
                        &c.project_dir,
                        &c.run.pipeline,
                        &c.run.run_id,
                        &task.id,
                        c.try_number - 1,
                    ))
                })
                .flatten();
            let only = prev.as_deref().and_then(dbt::remaining_nodes);
            if let Some(nodes) = &only {
                executor::log_note(
                    &log_path,
                    c.clock.as_ref(),
                    &format!(
                        "retrying only the {} node(s) that did not succeed: {}",
                        nodes.len(),
                        nodes.join(" ")
                    ),
                );
            }
            if let Err(e) = std::fs::create_dir_all(&dbt_dir) {
                cannot_start = Some(format!("cannot create `{}`: {e}", dbt_dir.display()));
            }
            let (argv, env) = dbt::command(spec, &c.project_dir, &dbt_dir, &ctx, only.as_deref());
            extra_env = env;
            argv
        }
        TaskKind::Sensor(spec) => match sensor_argv(&c, spec, &ctx) {
            Ok(argv) => argv,
            Err(e) => {
                cannot_start = Some(e);
                vec![]
            }
        },
        TaskKind::Extract(spec) => match extract_argv(&c, spec) {
            Ok(argv) => argv,
            Err(e) => {
                // The work cannot even be described: fail the try without a process.
                cannot_start = Some(e);
                vec![]
            }
        },
        TaskKind::Shell(s) if s.shell => vec![
            "sh".to_owned(),
            "-c".to_owned(),
            s.command.first().cloned().unwrap_or_default(),
        ],
        TaskKind::Shell(s) => s.command.iter().map(|a| ctx.render(a)).collect(),
    };
    let mut env = ctx.env();
    env.push((
        "NIGHTSHIFT_TRY_KEY".to_owned(),
        try_key(&c.store, c.ti.pk, c.try_number),
    ));
    env.extend(extra_env);
    env.extend(task.env.iter().map(|(k, v)| (k.clone(), ctx.render(v))));
    let cwd = match &task.cwd {
        Some(d) => c.project_dir.join(d),
        None => c.project_dir.clone(),
    };
    let started = c.clock.now();
    crash_if(&c.crash_at, "after_claim", Some(&task.id));
    let spec = ChildSpec {
        argv,
        env,
        cwd,
        log_path: log_path.clone(),
        metrics_path,
        // A sensor's `timeout` bounds the whole wait; one poke gets at most a minute.
        timeout: match &task.kind {
            TaskKind::Sensor(_) => Some(task.timeout.unwrap_or(POKE_TIMEOUT).min(POKE_TIMEOUT)),
            _ => task.timeout,
        },
        kill_grace: c.kill_grace,
        stop_signal: match &task.kind {
            TaskKind::Dbt(_) => nix::sys::signal::Signal::SIGINT,
            _ => nix::sys::signal::Signal::SIGTERM,
        },
        dbt_json_log: matches!(task.kind, TaskKind::Dbt(_)),
        mask: c.secrets.clone(),
    };
    let mut spawned_pid = None;
    let spawned = match cannot_start {
        Some(msg) => Err(msg),
        None => executor::spawn(spec, c.clock.clone()),
    };
    let outcome = match spawned {
        Err(msg) => executor::ChildOutcome {
            exit: Exit::SpawnFailed(msg),
            metrics: Default::default(),
            metrics_warnings: vec![],
            last_error: None,
        },
        Ok(running) => {
            spawned_pid = Some(running.pid);
            let pid = running.pid;
            crash_if(&c.crash_at, "after_spawn", Some(&task.id));
            let wait = running.wait(cancel, c.clock.clone());
            tokio::pin!(wait);
            // Short tries finish before their pid is worth a transaction: the pid is written
            // with the outcome. Longer ones record it, so a restart can find and kill them;
            // in the window before, recovery finds them by their NIGHTSHIFT_TRY_KEY.
            tokio::select! {
                o = &mut wait => o,
                _ = tokio::time::sleep(RECORD_PID_AFTER) => {
                    let recorded = c
                        .store
                        .record_spawn(c.ti.pk, c.try_number, &c.owner, pid, procs::start_time(pid), &log_path.to_string_lossy());
                    if let Err(e) = &recorded {
                        // A locked store is not a lost claim: the try goes on, its pid is
                        // written with the outcome, and recovery can find it by its key.
                        warn!(task = %task.id, error = %e, "cannot record the try's pid now; it goes on");
                    }
                    if matches!(recorded, Ok(false)) {
                        warn!(task = %task.id, "claim lost while the try ran; stopping it");
                        procs::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = wait.await;
                        return;
                    }
                    wait.await
                }
            }
        }
    };
    crash_if(&c.crash_at, "before_outcome_commit", Some(&task.id));
    let end = c.clock.now();
    let mut outcome = outcome;
    let mut dbt_reason = None;
    if let TaskKind::Dbt(_) = &task.kind {
        if let Some(nodes) = dbt::read_results(&dbt_dir) {
            if let Err(e) =
                c.store
                    .record_dbt_nodes(c.run.pk, c.ti.pk, c.try_number, &task.id, &nodes)
            {
                error!(task = %task.id, error = %e, "cannot record dbt results");
            }
            outcome.metrics.extend(dbt::summary(&nodes));
            dbt_reason = dbt::failure_reason(&nodes);
        }
        if matches!(outcome.exit, Exit::Code(2)) && dbt_reason.is_none() {
            dbt_reason = Some("dbt could not run (exit 2: a parse error, a bad profile, or the warehouse file locked); see the log".to_owned());
        }
    }
    let mut sensor_error = None;
    if let (TaskKind::Sensor(spec), Exit::Code(nightshift_core::pipeline::SENSOR_NOT_YET)) =
        (&task.kind, &outcome.exit)
    {
        let since = c.ti.waiting_since.map(from_micros).unwrap_or(started);
        let waited = end.duration_since(since);
        let limit = task.timeout.and_then(|t| SignedDuration::try_from(t).ok());
        let next = plus(end, spec.poke_interval);
        if limit.is_none_or(|l| {
            waited + SignedDuration::try_from(spec.poke_interval).unwrap_or_default() <= l
        }) {
            match c.store.reschedule(
                c.ti.pk,
                c.try_number,
                &c.owner,
                to_micros(started),
                to_micros(next),
            ) {
                Ok(Some(_)) => {
                    info!(task = %task.id, next_poke = %next, "sensor condition not met yet; waiting without a slot")
                }
                Ok(None) => {
                    warn!(task = %task.id, "sensor poke not recorded: the try lost its claim")
                }
                Err(e) => {
                    error!(task = %task.id, error = %e, "cannot reschedule the sensor; recovery will retry it")
                }
            }
            return;
        }
        sensor_error = Some(format!(
            "sensor timed out after {} waiting for {}",
            // The configured timeout: the next poke would have come after it.
            nightshift_core::time::format_duration(
                task.timeout.unwrap_or_else(|| waited.unsigned_abs())
            ),
            describe_condition(&spec.condition)
        ));
    }
    let (mut ti_state, error, exit_code, signal) = match &outcome.exit {
        _ if sensor_error.is_some() => (
            TaskState::Failed,
            sensor_error.clone(),
            Some(nightshift_core::pipeline::SENSOR_NOT_YET),
            None,
        ),
        Exit::Code(0) => (TaskState::Success, None, Some(0), None),
        Exit::Code(n) => (
            TaskState::Failed,
            Some(dbt_reason.clone().unwrap_or_else(|| {
                // nightshift's own kinds say what went wrong on their last `error:` line.
                match (&task.kind, &outcome.last_error) {
                    (TaskKind::Shell(_) | TaskKind::Dbt(_), _) | (_, None) => {
                        format!("exited with code {n}")
                    }
                    (_, Some(e)) => e.clone(),
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
            Some("stopped: the scheduler shut down; will run again".to_owned()),
            None,
            None,
        ),
        Exit::Killed(KillReason::LostClaim) => return,
        Exit::SpawnFailed(msg) => (TaskState::Failed, Some(msg.clone()), None, None),
    };
    let try_state = if ti_state == TaskState::Success {
        TaskState::Success
    } else {
        TaskState::Failed
    };
    let mut next_try_at = None;
    let mut extra_tries = 0;
    if ti_state == TaskState::UpForRetry {
        // A try stopped by the operator's shutdown does not use up the task's retries.
        extra_tries = 1;
        next_try_at = Some(to_micros(end));
    } else if ti_state == TaskState::Failed
        && c.try_number < c.ti.max_tries
        && sensor_error.is_none()
    {
        // (A sensor that timed out is not retried: the data did not arrive in time.)
        ti_state = TaskState::UpForRetry;
        next_try_at = Some(to_micros(plus(
            end,
            task.retry.delay_before(c.try_number + 1, fastrand::f64()),
        )));
    }
    let rows_loaded = outcome.metrics.get("rows_loaded").map(|v| *v as i64);
    // Whole numbers are stored as integers (`"rows_loaded": 12417`, not `12417.0`).
    let metrics = (!outcome.metrics.is_empty()).then(|| {
        let map: serde_json::Map<String, serde_json::Value> = outcome
            .metrics
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
            &log_path,
            c.clock.as_ref(),
            &format!("try {} failed: {e}", c.try_number),
        );
    }
    let log_path_text = log_path.to_string_lossy().into_owned();
    let finish = FinishTry {
        ti_pk: c.ti.pk,
        try_number: c.try_number,
        owner: Some(&c.owner),
        end: to_micros(end),
        try_state,
        ti_state,
        next_try_at,
        exit_code,
        signal,
        error: error.as_deref(),
        metrics: metrics.as_deref(),
        rows_loaded,
        extra_tries,
        log_path: Some(&log_path_text),
        pid: spawned_pid,
    };
    // The store may be locked for a while (another process, a backup): keep trying, since
    // an unrecorded outcome would leave the task RUNNING until recovery.
    for attempt in 0..20 {
        match c.store.finish_try(&finish) {
            Ok(true) => break,
            Ok(false) => {
                warn!(task = %task.id, try_number = c.try_number, "outcome not recorded: the try lost its claim");
                break;
            }
            Err(e) => {
                error!(task = %task.id, error = %e, attempt, "cannot record the outcome; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{} ({sig})", s.as_str()),
        Err(_) => sig.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimClock;
    use proptest::prelude::*;

    fn project(
        dir: &std::path::Path,
        schedule: &str,
        zone: &str,
        start: &str,
        catchup: bool,
    ) -> Project {
        let src = format!(
            "name = \"p\"\nschedule = \"{schedule}\"\ntimezone = \"{zone}\"\nstart_date = \"{start}\"\ncatchup = {catchup}\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"
        );
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        std::fs::write(dir.join("pipelines/p.toml"), src).unwrap();
        project::load(dir).unwrap()
    }

    fn engine_at(dir: &std::path::Path, p: Project, now: Timestamp) -> Engine {
        let store = Arc::new(Store::open(&dir.join(".nightshift/nightshift.db")).unwrap());
        Engine::new(
            p,
            store,
            Arc::new(SimClock::new(now)),
            Mode::Scheduler { until: None },
            Options::default(),
        )
    }

    /// The intervals a catchup must have created by `now`, computed independently.
    fn expected(p: &Pipeline, now: Timestamp) -> Vec<(i64, String)> {
        let mut out = vec![];
        let mut start = p.schedule.next_fire_inclusive(p.start_instant()).unwrap();
        loop {
            let end = p.schedule.next_fire(start).unwrap();
            if end > now {
                return out;
            }
            out.push((
                to_micros(start),
                p.schedule.run_id(&DataInterval { start, end }),
            ));
            start = end;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Catchup over an arbitrary range, interrupted by a restart at an arbitrary point
        /// and repeated, creates exactly one run per interval.
        #[test]
        fn catchup_creates_one_run_per_interval(
            start_day in 1u8..28,
            first_hours in 1i64..(24 * 20),
            more_hours in 0i64..(24 * 20),
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York"]),
            schedule in prop::sample::select(vec!["0 0 * * *", "30 2 * * *", "0 */6 * * *", "15 3 * * 1-5"]),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let start = format!("2024-03-{start_day:02}");
            let base: Timestamp = format!("{start}T00:00:00Z").parse().unwrap();
            let now1 = base + SignedDuration::from_hours(first_hours);
            let now2 = now1 + SignedDuration::from_hours(more_hours);
            let p = project(dir.path(), schedule, zone, &start, true);
            let pipeline = p.pipelines["p"].pipeline.clone();
            let mut e1 = engine_at(dir.path(), p.clone(), now1);
            e1.schedule_due_runs(now1).unwrap();
            e1.schedule_due_runs(now1).unwrap();
            drop(e1);
            // A restart, and a second scheduler on the same store, both catching up.
            let mut e2 = engine_at(dir.path(), p.clone(), now2);
            let mut e3 = engine_at(dir.path(), p, now2);
            e2.schedule_due_runs(now2).unwrap();
            e3.schedule_due_runs(now2).unwrap();
            let runs = e2.store.runs("p", u32::MAX).unwrap();
            let got: Vec<(i64, String)> = runs.iter().map(|r| (r.data_interval_start, r.run_id.clone())).collect();
            prop_assert_eq!(got, expected(&pipeline, now2));
        }
    }

    #[test]
    fn without_catchup_only_the_latest_interval_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path(), "0 0 * * *", "UTC", "2024-01-01", false);
        let now: Timestamp = "2024-06-10T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p, now);
        e.schedule_due_runs(now).unwrap();
        let later: Timestamp = "2024-06-12T00:00:01Z".parse().unwrap();
        e.schedule_due_runs(later).unwrap();
        let ids: Vec<String> = e
            .store
            .runs("p", 100)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["20240610_0000", "20240611_0000", "20240612_0000"]);
    }

    #[test]
    fn the_next_fire_is_reported_for_the_sleep() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(
            dir.path(),
            "30 2 * * *",
            "Europe/Berlin",
            "2024-03-30",
            true,
        );
        let now: Timestamp = "2024-03-30T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p, now);
        let next = e.schedule_due_runs(now).unwrap();
        assert_eq!(
            next,
            Some("2024-03-31T01:00:00Z".parse().unwrap()),
            "spring forward: fires at the end of the gap"
        );
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;
    use crate::SimClock;

    /// With one free slot, a scheduled run's task is claimed before an older backfill's.
    #[tokio::test(flavor = "current_thread")]
    async fn backfill_work_yields_to_scheduled_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        std::fs::write(dir.path().join("nightshift.toml"), "parallelism = 1\n").unwrap();
        std::fs::write(
            dir.path().join("pipelines/p.toml"),
            "schedule = \"0 0 * * *\"\nstart_date = \"2024-06-01\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let project = project::load(dir.path()).unwrap();
        let lp = project.pipelines["p"].clone();
        let store = Arc::new(Store::open(&project.store_path()).unwrap());
        let now: Timestamp = "2024-06-03T00:00:00Z".parse().unwrap();
        let older = lp
            .pipeline
            .schedule
            .interval_ending_at("2024-06-02T00:00:00Z".parse().unwrap())
            .unwrap();
        let newer = lp.pipeline.schedule.interval_ending_at(now).unwrap();
        let backfill = create_run(&store, &lp, older, Trigger::Backfill, now)
            .unwrap()
            .pk();
        let scheduled = create_run(&store, &lp, newer, Trigger::Scheduled, now)
            .unwrap()
            .pk();
        let mut engine = Engine::new(
            project,
            store.clone(),
            Arc::new(SimClock::new(now)),
            Mode::Scheduler { until: None },
            Options::default(),
        );
        let out = engine.pass(now, true).unwrap();
        assert_eq!(out.claimed, 1);
        assert!(out.blocked);
        assert_eq!(
            store.task_instances(scheduled).unwrap()[0].state,
            TaskState::Running
        );
        assert_eq!(
            store.task_instances(backfill).unwrap()[0].state,
            TaskState::Queued
        );
    }
}
