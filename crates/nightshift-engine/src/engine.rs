//! The scheduler loop: creates runs when their intervals end, moves runs forward by their
//! trigger rules, claims and runs tries, and recovers tries whose engine died.
//!
//! Everything it decides is read from and written to the store; the in-memory maps here
//! are caches and handles to child processes. A pass costs work proportional to the
//! active runs (indexed queries), never to the history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use nightshift_core::deadline::{self, DeadlineState, TaskProgress};
use nightshift_core::state::{advance, run_outcome};
use nightshift_core::time::{DataInterval, from_micros, to_micros};
use nightshift_core::{Pipeline, RunState, TaskState, Trigger};
use nightshift_store::{Claim, Created, FinishTry, NewRun, NewTask, RunRow, Store, TiRow};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::attempt::{self, TryCtx, TryDone, plus, try_key};
use crate::clock::{Clock, real_now_us};
use crate::contain::Containment;
pub use crate::crash::CrashPoint;
use crate::crash::crash_if;
use crate::executor::{KillReason, Stopper};
use crate::outcome::Writer;
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

/// Figures of the loop for metrics and health, readable from another thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// How late the last wake-up was against the time the loop meant to wake (µs).
    pub loop_lag_us: AtomicI64,
    /// Real time (µs) when the loop last came round; a stalled loop shows as its age.
    pub last_tick_us: AtomicI64,
    /// The store refuses the loop's reads or writes (locked, full, unreachable).
    pub store_degraded: AtomicBool,
    /// The outcome writer cannot write (outcomes wait in the journal).
    pub writer_degraded: Arc<AtomicBool>,
    /// Intervals skipped because the pipeline has `catchup = false`, per pipeline.
    pub skipped: std::sync::Mutex<HashMap<String, u64>>,
}

impl Stats {
    /// How far behind the loop is now: the lag of its last wake-up, or how long the
    /// current iteration has been stuck (a store call waiting on a lock), whichever is more.
    pub fn loop_lag(&self, poll: Duration) -> Duration {
        let tick = self.last_tick_us.load(Ordering::Relaxed);
        let stuck = if tick == 0 {
            0
        } else {
            (real_now_us() - tick - us(poll)).max(0)
        };
        let lag = self.loop_lag_us.load(Ordering::Relaxed).max(stuck);
        Duration::from_micros(u64::try_from(lag).unwrap_or(0))
    }

    /// Whether the scheduler is running with its store unavailable.
    pub fn degraded(&self) -> bool {
        self.store_degraded.load(Ordering::Relaxed) || self.writer_degraded.load(Ordering::Relaxed)
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
    stopper: Stopper,
    try_number: u32,
    token: u64,
}

/// Runs created per pipeline in one loop iteration (one transaction each).
pub const CATCHUP_BATCH: usize = 200;

/// Queued runs per pipeline and class a scheduler pass considers (oldest first).
const QUEUED_WINDOW: u32 = 64;

/// Skipped intervals are counted up to this many (an every-minute pipeline started years
/// ago would otherwise be walked minute by minute).
const SKIP_COUNT_LIMIT: u64 = 10_000;

/// What scheduling found: the next fire time, and whether catch-up has more to create.
#[derive(Debug, Default)]
struct Scheduled {
    next_fire: Option<Timestamp>,
    more: bool,
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
    /// Started on first use (the engine's own store connection stays free for the loop).
    writer: Option<Writer>,
    containment: Containment,
    next_token: u64,
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
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

/// Creates the runs of many intervals of one pipeline in one transaction (catch-up);
/// intervals that have a run already are left alone. Returns the pks created.
pub fn create_runs(
    store: &Store,
    lp: &LoadedPipeline,
    ivs: &[DataInterval],
    trigger: Trigger,
    now: Timestamp,
) -> Result<Vec<i64>, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let tasks = new_tasks(p);
    let keys: Vec<(String, String)> = ivs
        .iter()
        .map(|iv| (p.schedule.run_id(iv), p.schedule.ds(iv).to_string()))
        .collect();
    let runs: Vec<NewRun<'_>> = ivs
        .iter()
        .zip(&keys)
        .map(|(iv, (run_id, ds))| NewRun {
            run_id,
            pipeline: &p.name,
            logical_date: ds,
            data_interval_start: to_micros(iv.start),
            data_interval_end: to_micros(iv.end),
            now: to_micros(now),
            trigger,
            version: &version,
        })
        .collect();
    Ok(store.create_runs(&runs, &tasks)?)
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
            writer: None,
            containment: Containment::Subreaper,
            next_token: 0,
        }
    }

    /// How this engine contains a try's processes (see [`crate::contain`]).
    pub fn with_containment(mut self, c: Containment) -> Self {
        self.containment = c;
        self
    }

    /// The outcome writer, started on first use; a journal left by a stopped engine is
    /// replayed then, before any orphan is judged.
    fn writer(&mut self) -> Result<Writer, Error> {
        if let Some(w) = &self.writer {
            return Ok(w.clone());
        }
        let journal = self.project.state_dir().join("outcomes");
        let done = self.done_tx.clone();
        let w = Writer::start(
            self.store.path(),
            journal.clone(),
            self.stats.writer_degraded.clone(),
            // Wakes the loop: the recorded outcome may let the run move on.
            Box::new(move |ti_pk| {
                let _ = done.send(TryDone { ti_pk, token: None });
            }),
        )?;
        let n = w.replay(&journal);
        if n > 0 {
            info!(
                outcomes = n,
                "outcomes journaled by a stopped scheduler are being recorded"
            );
        }
        self.writer = Some(w.clone());
        Ok(w)
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

    /// Creates the runs whose intervals have ended by `now` (one per interval, ever), at
    /// most [`CATCHUP_BATCH`] per pipeline per call, each batch in one transaction: a
    /// pipeline catching up on thousands of intervals proceeds in steps, and every other
    /// pipeline's due run is created in the same call.
    fn schedule_due_runs(&mut self, now: Timestamp) -> Result<Scheduled, Error> {
        let mut out = Scheduled::default();
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
                None => self.initial_cursor(&lp, first_start, now)?,
            };
            let mut batch = vec![];
            loop {
                let fire = p.schedule.next_fire(cursor)?;
                if fire > now {
                    out.next_fire = Some(out.next_fire.map_or(fire, |n: Timestamp| n.min(fire)));
                    break;
                }
                if batch.len() >= CATCHUP_BATCH {
                    out.more = true;
                    break;
                }
                let iv = p.schedule.interval_ending_at(fire)?;
                if p.in_range(&iv) {
                    batch.push(iv);
                }
                cursor = fire;
            }
            self.create_scheduled(&lp, &batch, now)?;
            self.cursors.insert(name, cursor);
        }
        Ok(out)
    }

    fn create_scheduled(
        &mut self,
        lp: &LoadedPipeline,
        ivs: &[DataInterval],
        now: Timestamp,
    ) -> Result<(), Error> {
        if ivs.is_empty() {
            return Ok(());
        }
        let created = create_runs(&self.store, lp, ivs, Trigger::Scheduled, now)?;
        match created.len() {
            0 => {}
            1 => {
                let iv = ivs.last().copied().unwrap_or(ivs[0]);
                info!(pipeline = %lp.pipeline.name, run_id = %lp.pipeline.schedule.run_id(&iv), run = created[0], "run created")
            }
            n => {
                let first = lp.pipeline.schedule.run_id(&ivs[0]);
                let last = lp.pipeline.schedule.run_id(&ivs[ivs.len() - 1]);
                info!(pipeline = %lp.pipeline.name, runs = n, from = %first, to = %last, "runs created")
            }
        }
        if !created.is_empty() {
            crash_if(&self.opts.crash_at, "after_run_created", None);
        }
        Ok(())
    }

    /// Where scheduling of a pipeline starts when this engine first sees it: with catchup,
    /// after its latest scheduled run (or at start_date), so every missed interval gets a
    /// run; without, at the latest ended interval, whose run is created now — and the
    /// intervals passed over are counted and said once.
    fn initial_cursor(
        &mut self,
        lp: &LoadedPipeline,
        first_start: Timestamp,
        now: Timestamp,
    ) -> Result<Timestamp, Error> {
        let p = lp.pipeline.clone();
        let latest_run = self
            .store
            .latest_interval_start(&p.name, Some(Trigger::Scheduled))?
            .map(from_micros);
        let from = latest_run.map_or(first_start, |l| l.max(first_start));
        if p.catchup {
            return Ok(from);
        }
        let latest = if p.schedule.next_fire_inclusive(now)? == now {
            now
        } else {
            p.schedule.prev_fire(now)?
        };
        if latest <= first_start {
            return Ok(first_start);
        }
        let iv = p.schedule.interval_ending_at(latest)?;
        // Intervals that ended between where scheduling stood and the latest one: the range
        // is exact, the count is walked up to a bound (an every-minute pipeline started
        // years ago would otherwise cost a million schedule steps).
        let first_end = p.schedule.next_fire(from)?;
        let last_end = p.schedule.prev_fire(latest)?;
        if first_end < latest && last_end >= first_end {
            let first = p.schedule.interval_ending_at(first_end)?;
            let last = p.schedule.interval_ending_at(last_end)?;
            let mut skipped = 0u64;
            let mut at = from;
            while skipped < SKIP_COUNT_LIMIT {
                let end = p.schedule.next_fire(at)?;
                if end >= latest {
                    break;
                }
                skipped += 1;
                at = end;
            }
            let more = if skipped >= SKIP_COUNT_LIMIT {
                "more than "
            } else {
                ""
            };
            info!(
                pipeline = %p.name,
                "catchup = false: skipped {more}{skipped} interval(s) from {} to {} (runs {} to {}); running only the latest",
                first.start, last.end, p.schedule.run_id(&first), p.schedule.run_id(&last)
            );
            let mut map = self.stats.skipped.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(p.name.clone()).or_insert(0) += skipped;
        }
        if p.in_range(&iv) {
            self.create_scheduled(lp, &[iv], now)?;
        }
        Ok(latest)
    }

    /// The runs a pass looks at: the scheduler takes a bounded window of each pipeline's
    /// queued runs (a catch-up of thousands costs a pass no more than a few); `run` and
    /// `backfill` take their own runs.
    fn working_runs(&self) -> Result<Vec<RunRow>, Error> {
        let runs = match &self.mode {
            Mode::Scheduler { .. } => self.store.working_runs(QUEUED_WINDOW)?,
            Mode::Runs(_) => self.store.active_runs()?,
        };
        Ok(runs.into_iter().filter(|r| self.in_scope(r)).collect())
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
        let mut runs: Vec<RunRow> = self.working_runs()?;
        runs.sort_by_key(|r| (r.trigger.priority(), r.data_interval_start, r.pk));
        out.active_runs = runs.len();
        let mut tis_by_run: HashMap<i64, Vec<TiRow>> = HashMap::new();
        if !runs.is_empty() {
            let pks: Vec<i64> = runs.iter().map(|r| r.pk).collect();
            for ti in self.store.task_instances_of(&pks)? {
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
        let mut full: HashSet<(String, bool)> = HashSet::new();
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
                let class = (run.pipeline.clone(), run.trigger == Trigger::Backfill);
                if full.contains(&class) {
                    continue;
                }
                if !self.store.activate_run(run.pk, now_us, p.max_active_runs)? {
                    // The class is at its limit: later queued runs of it would be refused
                    // too, one write each.
                    full.insert(class);
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
                        self.start_try(p, run, ti, try_number)?;
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
        for run in self.working_runs()? {
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

    fn start_try(
        &mut self,
        p: Arc<Pipeline>,
        run: RunRow,
        ti: TiRow,
        try_number: u32,
    ) -> Result<(), Error> {
        let ti_pk = ti.pk;
        self.next_token += 1;
        let token = self.next_token;
        let ctx = TryCtx {
            secrets: crate::kinds::secret_values(&self.project.settings),
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
            log_max_bytes: self.project.settings.log_max_bytes,
            crash_at: self.opts.crash_at.clone(),
            writer: self.writer()?,
            containment: self.containment.clone(),
            done: self.done_tx.clone(),
            token,
        };
        if let Some(stopper) = attempt::start(ctx) {
            self.running.insert(
                ti_pk,
                RunningTry {
                    stopper,
                    try_number,
                    token,
                },
            );
        }
        Ok(())
    }

    /// Renews leases, stops tries that lost their claim, and recovers orphans.
    fn heartbeat(&mut self) -> Result<(), Error> {
        let real = real_now_us();
        let owned: HashSet<(i64, u32)> = self
            .store
            .renew_leases(&self.owner, real + us(self.opts.lease_ttl))?
            .into_iter()
            .collect();
        while let Ok(d) = self.done_rx.try_recv() {
            self.forget_try(d);
        }
        for (ti, rt) in &self.running {
            if owned.contains(&(*ti, rt.try_number)) {
                continue;
            }
            // Not RUNNING any more: its run was cancelled, or another engine took it over. (A
            // try that ended a moment ago is not RUNNING either: its supervisor is gone and
            // refuses the stop.)
            let cancelled = self.store.task_state(*ti)? == Some(TaskState::Cancelled);
            let reason = if cancelled {
                KillReason::Cancelled
            } else {
                KillReason::LostClaim
            };
            if rt.stopper.stop(reason) {
                if cancelled {
                    info!(
                        ti,
                        try_number = rt.try_number,
                        "run cancelled; stopping the try"
                    );
                } else {
                    warn!(
                        ti,
                        try_number = rt.try_number,
                        "try lost its claim; stopping its process"
                    );
                }
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
        let writer = self.writer()?;
        for ti in self.store.running_task_instances()? {
            // A try still running here, or one whose outcome waits for the writer, is no
            // orphan whatever the store says.
            if self.running.contains_key(&ti.pk) || writer.is_pending(ti.pk) {
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
                if !procs::kill_by_env("NIGHTSHIFT_TRY_KEY", &key, self.project.settings.kill_grace)
                    .is_empty()
                {
                    warn!(task = %ti.task_id, "killed the processes of an orphaned try found by its key");
                }
            }
            let now = self.clock.now();
            // The scheduler's death is not the task's failure: the try is given back, unless
            // the task keeps being interrupted.
            let (ti_state, next_try_at, extra_tries) =
                attempt::after_interruption(&ti, to_micros(now));
            let retry = (ti_state, next_try_at);
            let who = owner
                .map(|o| format!("pid {} on `{}`", o.pid, o.host))
                .unwrap_or_else(|| "unknown".into());
            let mut msg = format!(
                "interrupted: the scheduler running this try ({who}) stopped; the try's processes were killed"
            );
            if ti_state == TaskState::Failed {
                msg = format!(
                    "interrupted {} times in a row; last: {msg}",
                    ti.interruptions + 1
                );
            }
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
                extra_tries,
                log_path: None,
                pid: None,
                interrupted: true,
                warning: None,
            })?;
            if written {
                warn!(pipeline = %ti.pipeline, task = %ti.task_id, try_number = ti.try_number, next = %retry.0, "recovered an orphaned try");
            }
        }
        Ok(())
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

    /// Runs until the mode's work is done, `until` is reached, or `shutdown` says stop.
    /// `shutdown` counts stop requests: on the first, running tries get the project's
    /// `shutdown_grace`, then are killed; on a second, they are killed at once. Either way
    /// they are recorded as interrupted (a restart runs them again without using a retry)
    /// and runs left with nothing running go back to QUEUED.
    pub async fn run(mut self, mut shutdown: watch::Receiver<u32>) -> Result<(), Error> {
        let result = self.run_inner(&mut shutdown).await;
        self.settle_on_exit().await;
        if self.holds_scheduler_lease {
            let _ = self.store.release_scheduler_lease(&self.owner);
        }
        self.containment.cleanup();
        result
    }

    /// After the loop: outcomes reach the store (bounded: an unavailable store leaves them
    /// in the journal for the next start), and runs this engine was moving forward that have
    /// nothing running go back to QUEUED.
    async fn settle_on_exit(&mut self) {
        if let Some(w) = self.writer.clone()
            && w.has_pending()
            && !tokio::task::spawn_blocking(move || w.flush(Duration::from_secs(5)))
                .await
                .unwrap_or(false)
        {
            warn!(
                "the metadata store did not take every outcome; they are journaled and recorded at the next start"
            );
        }
        let Ok(active) = self.store.active_runs() else {
            return;
        };
        let mine: Vec<i64> = active
            .iter()
            .filter(|r| r.status == RunState::Running && self.in_scope(r))
            .map(|r| r.pk)
            .collect();
        if !mine.is_empty() {
            match self
                .store
                .requeue_idle_runs(&mine, to_micros(self.clock.now()))
            {
                Ok(n) if n > 0 => {
                    info!(
                        runs = n,
                        "runs with nothing running went back to QUEUED; a restart continues them"
                    )
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot put interrupted runs back to QUEUED"),
            }
        }
    }

    /// Outcomes decided but not yet in the store (their runs cannot move on yet).
    fn outcomes_pending(&self) -> bool {
        self.writer.as_ref().is_some_and(Writer::has_pending)
    }

    fn receive_done(&mut self, d: TryDone) {
        self.forget_try(d);
        while let Ok(d) = self.done_rx.try_recv() {
            self.forget_try(d);
        }
    }

    /// A try's processes are gone: its slot is free. Only the start the message names: a
    /// sensor's next poke may already run under the same task instance.
    fn forget_try(&mut self, d: TryDone) {
        if d.token.is_some() && self.running.get(&d.ti_pk).map(|r| r.token) == d.token {
            self.running.remove(&d.ti_pk);
        }
    }

    async fn run_inner(&mut self, shutdown: &mut watch::Receiver<u32>) -> Result<(), Error> {
        self.writer()?;
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
            self.stats
                .last_tick_us
                .store(real_now_us(), Ordering::Relaxed);
            let stops = *shutdown.borrow_and_update();
            if stops >= 1 && drain.is_none() {
                info!(
                    running = self.running.len(),
                    "shutting down: waiting for running tasks (a second signal stops them now)"
                );
                drain = Some(Instant::now() + self.project.settings.shutdown_grace);
            }
            if let Some(deadline) = drain {
                if self.running.is_empty() {
                    return Ok(());
                }
                let force = stops >= 2;
                if (force || Instant::now() >= deadline) && !killed {
                    warn!(
                        running = self.running.len(),
                        "{}: stopping running tasks",
                        if force {
                            "second stop signal"
                        } else {
                            "grace period over"
                        }
                    );
                    for rt in self.running.values() {
                        if force {
                            rt.stopper.kill_now(KillReason::Shutdown);
                        } else {
                            rt.stopper.stop(KillReason::Shutdown);
                        }
                    }
                    killed = true;
                } else if force && killed {
                    // A second signal after the grace ran out: make sure no stop is gentle.
                    for rt in self.running.values() {
                        rt.stopper.kill_now(KillReason::Shutdown);
                    }
                }
                tokio::select! {
                    Some(d) = self.done_rx.recv() => self.receive_done(d),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if last_heartbeat.elapsed() >= self.opts.heartbeat {
                last_heartbeat = Instant::now();
                if let Err(e) = self.heartbeat() {
                    self.store_trouble(e, shutdown).await?;
                    continue;
                }
            }
            let now = self.clock.now();
            let past_until = until.is_some_and(|u| now >= u);
            let mut next_fire = None;
            let mut more_to_create = false;
            if scheduling && !past_until {
                if last_reload.elapsed() >= self.opts.poll {
                    last_reload = Instant::now();
                    self.reload_if_changed();
                }
                match self.schedule_due_runs(now) {
                    Ok(s) => {
                        next_fire = s.next_fire;
                        more_to_create = s.more;
                    }
                    Err(e) => {
                        self.store_trouble(e, shutdown).await?;
                        continue;
                    }
                }
            }
            let pass = match self.pass(now, !past_until) {
                Ok(p) => p,
                Err(e) => {
                    self.store_trouble(e, shutdown).await?;
                    continue;
                }
            };
            if scheduling && !past_until {
                let next_deadline = match self.check_deadlines(now) {
                    Ok(n) => n,
                    Err(e) => {
                        self.store_trouble(e, shutdown).await?;
                        continue;
                    }
                };
                next_fire = [next_fire, next_deadline].into_iter().flatten().min();
            }
            if self.stats.store_degraded.swap(false, Ordering::Relaxed) {
                info!("the metadata store is available again; scheduling resumes");
            }
            let settled = self.running.is_empty() && !self.outcomes_pending();
            if past_until && settled && !more_to_create {
                info!(until = %until.unwrap_or(now), "reached the end of the simulation");
                return Ok(());
            }
            if !scheduling && settled && self.my_runs_finished()? {
                return Ok(());
            }
            if more_to_create {
                // Catch-up continues next iteration, after everything else had its turn.
                tokio::task::yield_now().await;
                while let Ok(d) = self.done_rx.try_recv() {
                    self.forget_try(d);
                }
                continue;
            }
            let next_due = [pass.next_due, next_fire].into_iter().flatten().min();
            if self.clock.is_simulated() && settled && pass.claimed == 0 && !pass.blocked {
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
                Some(d) = self.done_rx.recv() => self.receive_done(d),
                _ = tokio::time::sleep(sleep_for) => {
                    let late = slept.elapsed().saturating_sub(sleep_for);
                    self.stats.loop_lag_us.store(i64::try_from(late.as_micros()).unwrap_or(i64::MAX), Ordering::Relaxed);
                }
                _ = shutdown.changed() => {}
            }
        }
    }
}

impl Engine {
    /// The store failed: when the failure is transient (locked, full, unavailable), say so
    /// once, wait a second and let the loop try again — running tries go on meanwhile, their
    /// outcomes wait in the writer; stop otherwise.
    async fn store_trouble(
        &mut self,
        e: Error,
        shutdown: &mut watch::Receiver<u32>,
    ) -> Result<(), Error> {
        let transient = matches!(&e, Error::Store(s) if s.is_transient());
        if !transient {
            return Err(e);
        }
        if !self.stats.store_degraded.swap(true, Ordering::Relaxed) {
            warn!(error = %e, "the metadata store is unavailable: no new runs or claims until it is back; running tries go on");
        }
        tokio::select! {
            Some(d) = self.done_rx.recv() => self.receive_done(d),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
        Ok(())
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
        let next = e.schedule_due_runs(now).unwrap().next_fire;
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
