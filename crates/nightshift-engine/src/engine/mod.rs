//! The scheduler loop: creates runs when their intervals end, moves runs forward by their
//! trigger rules, claims and runs tries, and recovers tries whose engine died.
//!
//! Everything it decides is read from and written to the store; the in-memory maps here
//! are caches and handles to child processes. A pass costs work proportional to the
//! active runs (indexed queries), never to the history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use nightshift_core::deadline::{self, DeadlineState, TaskProgress};
use nightshift_core::state::{advance, run_outcome};
use nightshift_core::time::{DataInterval, from_micros, to_micros};
use nightshift_core::{Pipeline, RunState, TaskState, Trigger};
use nightshift_store::{Claim, Created, FinishTry, NewRun, NewTask, RunRow, Store, TiRow};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

pub use claims::PassOutcome;
pub use nightshift_core::event::{Event, Stats};
pub use scheduler::{CATCHUP_BATCH, create_run, create_runs, rerun};

mod claims;
mod recovery;
mod scheduler;
mod upkeep;

use crate::attempt::{self, TryCtx, TryDone, plus, try_key};
use crate::contain::Containment;
pub use crate::crash::CrashPoint;
use crate::crash::crash_if;
use crate::executor::{KillReason, Stopper};
use crate::outcome::Writer;
use crate::procs::{self, Owner};
use crate::project::{self, LoadedPipeline, Project};
use nightshift_core::clock::{Clock, real_now_us};

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
}

/// What an engine works on.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `up`: execute all work, and, while it holds the scheduler role, create scheduled runs
    /// (catch-up), judge deadlines and apply retention; with `until`, stop there. Several
    /// `up` on one PostgreSQL store all execute; one at a time holds the role.
    Scheduler { until: Option<Timestamp> },
    /// `worker`: execute work only (tries of the pools it serves), never the role.
    Worker,
    /// `run` / `backfill`: execute these runs, return when all are finished.
    Runs(HashSet<i64>),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat: Duration,
    pub lease_ttl: Duration,
    /// Longest sleep between passes; bounds how late the engine notices other processes'
    /// changes and edited pipeline files. On PostgreSQL, work other processes queue wakes
    /// the engine at once (see `Store::watch_for_work`); the heartbeat bounds the sleep too.
    pub poll: Duration,
    pub crash_at: Option<CrashPoint>,
    /// How long the scheduler role outlives its holder's last renewal: a standby takes the
    /// role within `role_ttl` + `heartbeat` of the holder's death (12 s by default).
    pub role_ttl: Duration,
    /// The pools whose tries this engine runs (`None`: every pool). Tasks without a pool are
    /// in the pool named `default`.
    pub pools: Option<HashSet<String>>,
    /// Tries this engine runs at once (`None`: the project's `parallelism`).
    pub max_tasks: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            crash_at: None,
            role_ttl: Duration::from_secs(10),
            pools: None,
            max_tasks: None,
        }
    }
}

/// Longest wait for more free slots under a backlog (see `gather_slots`): short beside a
/// task, long beside a pass.
const GATHER: Duration = Duration::from_millis(25);

/// The pool a task without one belongs to, for `worker --pool`.
pub const DEFAULT_POOL: &str = "default";

/// Task instances by run, then by pk.
type TiCache = HashMap<i64, std::collections::BTreeMap<i64, TiRow>>;

/// Wakes the loop as a try's end does, with no try named (no slot is freed).
struct WakeOnWork(mpsc::UnboundedSender<TryDone>);

impl nightshift_store::WorkWatcher for WakeOnWork {
    fn wake(&self) -> bool {
        self.0
            .send(TryDone {
                ti_pk: 0,
                token: None,
            })
            .is_ok()
    }

    fn listening(&self) -> bool {
        !self.0.is_closed()
    }
}

struct RunningTry {
    stopper: Stopper,
    try_number: u32,
    token: u64,
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
    /// The state and try last reported per task instance, with its run (for pruning).
    seen: HashMap<i64, (i64, (TaskState, u32))>,
    /// The task instances of the runs the last pass looked at, by run and pk, kept current
    /// by delta reads (see `MetaStore::task_instances_delta`), and the cursor of the last.
    tis: TiCache,
    tis_cursor: Option<i64>,
    done_tx: mpsc::UnboundedSender<TryDone>,
    done_rx: mpsc::UnboundedReceiver<TryDone>,
    holds_scheduler_lease: bool,
    /// When the role was last taken or renewed (monotonic): a holder that could not renew
    /// within `role_ttl` stops scheduling on its own, before any standby may take over.
    role_renewed: Option<Instant>,
    /// Since when the store has answered this engine without a break. Another engine's
    /// expired lease is judged only once this is a lease TTL old: after an outage (or a
    /// start) every live engine first gets a full TTL to renew its leases.
    store_ok_since: Option<Instant>,
    /// When this engine first told the store it runs (by the store's clock).
    started_at: Option<i64>,
    /// The store's clock minus this host's real clock, as of the last heartbeat.
    store_clock_offset: i64,
    paused: HashSet<String>,
    /// Deadline state last written per active run, so unchanged states are not rewritten.
    deadline_seen: HashMap<i64, DeadlineState>,
    /// Duration estimates per run (from history before it), computed once per run.
    estimates: HashMap<i64, HashMap<String, i64>>,
    last_prune: Option<Instant>,
    stats: Arc<Stats>,
    /// Started on first use (the engine's own store connection stays free for the loop).
    writer: Option<Writer>,
    /// Started on first use, on a shared store only.
    shipper: Option<Option<crate::logship::Shipper>>,
    containment: Containment,
    next_token: u64,
    /// Ready work the last pass could not claim for want of slots.
    backlog: Option<claims::Backlog>,
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
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
            tis: HashMap::new(),
            tis_cursor: None,
            done_tx,
            done_rx,
            holds_scheduler_lease: false,
            role_renewed: None,
            store_ok_since: None,
            started_at: None,
            store_clock_offset: 0,
            paused: HashSet::new(),
            deadline_seen: HashMap::new(),
            estimates: HashMap::new(),
            last_prune: None,
            stats: Arc::new(Stats::default()),
            writer: None,
            shipper: None,
            containment: Containment::Subreaper,
            next_token: 0,
            backlog: None,
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
            self.store.location(),
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

    /// The log shipper: on a PostgreSQL store, every try's log is copied into the store so
    /// other hosts can read it; on SQLite there is none.
    fn shipper(&mut self) -> Result<Option<crate::logship::Shipper>, Error> {
        if let Some(s) = &self.shipper {
            return Ok(s.clone());
        }
        let s = match self.store.location() {
            nightshift_store::Location::Postgres(_) => {
                Some(crate::logship::Shipper::start(self.store.location())?)
            }
            nightshift_store::Location::Sqlite(_) => None,
        };
        self.shipper = Some(s.clone());
        Ok(s)
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

    /// The clock the engine takes data time from, for the web server and the alerter.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
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
        debug!(
            passes = self.stats.passes.load(Ordering::Relaxed),
            pass_ms = self.stats.pass_us.load(Ordering::Relaxed) / 1000,
            "the loop's passes"
        );
        // Gone cleanly: off the status list (with rows of processes dead for a day).
        if let Ok(now) = self.store.now_us() {
            let _ = self.store.forget_engine(&self.owner, now - 86_400_000_000);
        }
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

    /// Under a backlog (the last pass left ready work for want of slots), a pass per freed
    /// slot would read the whole working set for one claim each: a wide fan-out's passes
    /// would cost more than its tries. Waits until half of the slots are free, or
    /// [`GATHER`] has passed, whichever comes first.
    async fn gather_slots(&mut self) {
        let want = (self.slots() / 2).max(1);
        let until = tokio::time::Instant::now() + GATHER;
        while self.slots().saturating_sub(self.running.len()) < want {
            match tokio::time::timeout_at(until, self.done_rx.recv()).await {
                Ok(Some(d)) => self.receive_done(d),
                _ => break,
            }
        }
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
        // On a shared store, work queued by another engine wakes this one at once instead of
        // at its next poll: idle engines join a wide fan-out while it starts.
        self.store
            .watch_for_work(Box::new(WakeOnWork(self.done_tx.clone())));
        let now = self.sync_store_clock()?;
        self.beat(now)?;
        self.paused = self.store.paused_pipelines()?.into_iter().collect();
        self.recover_orphans()?;
        // The helper starts while the loop's first pass reads the store; started only once
        // start-up went well, so an engine that fails here leaves no helper behind.
        self.containment.warm();
        let until = match &self.mode {
            Mode::Scheduler { until } => *until,
            Mode::Runs(_) | Mode::Worker => None,
        };
        let mut last_heartbeat = Instant::now();
        let mut last_reload = Instant::now();
        let mut drain: Option<Instant> = None;
        let mut killed = false;
        loop {
            // Other tasks of this runtime (signal watchers, the web server's hand-offs) get
            // their turn every iteration, however busy the loop is.
            tokio::task::yield_now().await;
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
                match self.heartbeat() {
                    Ok(()) => {
                        self.store_ok_since.get_or_insert(last_heartbeat);
                    }
                    Err(e) => {
                        self.store_trouble(e, shutdown).await?;
                        continue;
                    }
                }
            }
            let scheduling = self.schedules();
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
            // Taken before the pass: an outcome the writer records during the pass would
            // make the pass's view stale, and the clock must not jump on a stale view.
            let idle_before = self.running.is_empty() && !self.outcomes_pending();
            let quick = if past_until {
                Ok(None)
            } else {
                self.claim_backlog(now)
            };
            let pass = match quick {
                Ok(Some(claimed)) => Ok(claimed),
                Ok(None) => {
                    let pass_began = Instant::now();
                    let pass = self.pass(now, !past_until);
                    self.stats.passes.fetch_add(1, Ordering::Relaxed);
                    self.stats.pass_us.fetch_add(
                        u64::try_from(pass_began.elapsed().as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    pass
                }
                Err(e) => Err(e),
            };
            let pass = match pass {
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
            let settled = idle_before && self.running.is_empty() && !self.outcomes_pending();
            if past_until && settled && !more_to_create {
                info!(until = %until.unwrap_or(now), "reached the end of the simulation");
                return Ok(());
            }
            if matches!(self.mode, Mode::Runs(_)) && settled && self.my_runs_finished()? {
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
            // The heartbeat renews this engine's leases: no sleep may outlast it.
            let mut sleep_for = self
                .opts
                .poll
                .min(self.opts.heartbeat.saturating_sub(last_heartbeat.elapsed()));
            if let Some(due) = next_due {
                let wait = SignedDuration::from_micros(to_micros(due) - to_micros(now));
                sleep_for = sleep_for.min(Duration::try_from(wait).unwrap_or(Duration::ZERO));
            }
            let slept = Instant::now();
            tokio::select! {
                Some(d) = self.done_rx.recv() => {
                    self.receive_done(d);
                    if pass.blocked {
                        self.gather_slots().await;
                    }
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
        self.store_ok_since = None;
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
