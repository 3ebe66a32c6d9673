//! The metadata store: the one source of truth for runs, task instances, tries and leases.
//!
//! Callers see one interface, [`MetaStore`], through [`Store`]; the backend behind it is
//! SQLite ([`sqlite`], the `sqlite` feature, on by default: one file, one machine) or
//! PostgreSQL ([`postgres`], the `postgres` feature: several schedulers and workers on
//! several hosts). [`Location`] says which. Nothing outside this crate names a driver type:
//! errors say whether they are worth waiting out ([`Error::is_transient`]).
//!
//! # Contract (what the engine relies on, whatever the backend)
//! - `create_run` is idempotent: `UNIQUE(pipeline, data_interval_start)` and
//!   `UNIQUE(pipeline, run_id)` make a second create a no-op that returns the existing run.
//! - `claim` is one conditional UPDATE: a task instance moves to RUNNING with a new try
//!   number only if it was claimable, its pool had a free slot and its pipeline was under
//!   `max_active_tasks`, all checked in the same write transaction.
//! - Every later write about a try (`record_spawn`, `finish_try`, `renew_leases`) is fenced
//!   on (task instance, try number, owner): a try that lost its claim cannot overwrite its
//!   successor.
//! - Every method is a short transaction, so several processes can share the store.
//! - Leases are compared with the store's own clock ([`MetaStore::now_us`]): on PostgreSQL
//!   the database's `clock_timestamp()`, so hosts whose clocks disagree still agree on
//!   whose lease has expired.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashMap;

use nightshift_core::{RunState, TaskState, Trigger};

#[cfg(test)]
mod contract;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub mod copy;
mod location;
#[cfg(feature = "postgres")]
pub mod postgres;
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use location::{Location, PgLocation, redact_url};

pub use rows::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend failed; `transient` says whether waiting may help (decided by the
    /// backend from its own error codes, so no caller needs to know the driver).
    #[error("metadata store `{location}`: {source}")]
    Backend {
        location: String,
        transient: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("creating the folder of the metadata store `{path}`")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the metadata store `{location}` has schema version {found}, newer than this nightshift knows ({known}); upgrade nightshift"
    )]
    NewerSchema {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("the metadata store holds an invalid value: {0}")]
    Corrupt(String),
    /// The store's settings are wrong (a URL that does not parse, a backend this build
    /// lacks); the message says what to change.
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the failure is worth waiting out: the store is locked, busy, briefly
    /// unreadable, or its disk is full. Callers retry these with backoff; anything else is a
    /// defect or a broken store and is reported.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend { transient, .. } => *transient,
            Error::Dir { .. } => true,
            _ => false,
        }
    }
}

/// Declares the store's interface once: the trait, and its implementation for each backend
/// by delegation to the backend's own methods of the same name.
macro_rules! interface {
    ($($(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*) => {
        /// Everything nightshift asks of its metadata store. Each backend implements it with
        /// the same contract (see the crate's documentation).
        pub trait MetaStore: Send + Sync {
            $($(#[$meta])* fn $name(&self $(, $arg: $ty)*) -> $ret;)*
        }

        #[cfg(feature = "sqlite")]
        impl MetaStore for sqlite::SqliteStore {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                sqlite::SqliteStore::$name(self $(, $arg)*)
            })*
        }

        #[cfg(feature = "postgres")]
        impl MetaStore for postgres::PgStore {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                postgres::PgStore::$name(self $(, $arg)*)
            })*
        }
    };
}

interface! {
    /// The store's clock, in microseconds since the Unix epoch: what leases and heartbeats
    /// are measured against. SQLite lives on one machine and uses its clock; PostgreSQL
    /// answers with the database server's, shared by every host.
    fn now_us(&self) -> Result<i64>;
    /// Records a pipeline file version; returns its hash.
    fn put_version(&self, pipeline: &str, source: &str, now: i64) -> Result<String>;
    fn version_source(&self, hash: &str) -> Result<Option<(String, String)>>;
    /// Creates a run and its task instances, or returns the run that already holds this
    /// interval (or this run id).
    fn create_run(&self, run: &NewRun<'_>, tasks: &[NewTask<'_>]) -> Result<Created>;
    /// Creates many runs of one pipeline version in one transaction (catch-up), skipping
    /// intervals that already have a run. Returns the pks of the runs it created.
    fn create_runs(&self, runs: &[NewRun<'_>], tasks: &[NewTask<'_>]) -> Result<Vec<i64>>;
    /// After a shutdown: RUNNING runs among `pks` with no task RUNNING go back to QUEUED, so
    /// no run looks in progress without a live owner; the next scheduler starts them again.
    fn requeue_idle_runs(&self, pks: &[i64], now: i64) -> Result<usize>;
    fn run(&self, pk: i64) -> Result<Option<RunRow>>;
    fn find_run(&self, pipeline: &str, run_id: &str) -> Result<Option<RunRow>>;
    fn find_run_by_interval(&self, pipeline: &str, start: i64) -> Result<Option<RunRow>>;
    /// Runs with this run id, across pipelines.
    fn runs_with_id(&self, run_id: &str) -> Result<Vec<RunRow>>;
    /// A pipeline's runs, oldest interval first; at most `limit` of the newest.
    fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<RunRow>>;
    /// QUEUED and RUNNING runs: the scheduler's working set. Indexed, so its cost follows
    /// active work, not history.
    fn active_runs(&self) -> Result<Vec<RunRow>>;
    /// The scheduler's working set: every RUNNING run, and the `queued` oldest QUEUED runs
    /// of each pipeline and class (backfill or not) — enough to fill any `max_active_runs`
    /// that makes sense, however many runs a catch-up has queued. Ordered by interval.
    fn working_runs(&self, queued: u32) -> Result<Vec<RunRow>>;
    /// The latest data interval start among a pipeline's runs (of one trigger, if given).
    fn latest_interval_start(&self, pipeline: &str, trigger: Option<Trigger>) -> Result<Option<i64>>;
    /// QUEUED → RUNNING if fewer than `max_active` runs of the same class (backfill or not)
    /// of this pipeline are running.
    fn activate_run(&self, pk: i64, now: i64, max_active: u32) -> Result<bool>;
    fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>>;
    /// Applies decisions about PENDING task instances (queued, upstream failed, skipped).
    fn decide_pending(&self, run_pk: i64, decisions: &[(String, TaskState)], now: i64) -> Result<usize>;
    /// Claims a task instance for a new try; returns the try number, or `None` when the
    /// instance was not claimable or a limit was reached.
    fn claim(&self, c: &Claim<'_>) -> Result<Option<u32>>;
    /// Claims up to `most` of several task instances in one transaction (one commit for a
    /// whole pass), trying them in the order given, each with the same conditions as
    /// [`Store::claim`]; later claims see earlier ones, so pool and task limits hold within
    /// the batch too. Instances another claimer holds are skipped, not waited for, so
    /// claimers handed overlapping lists each fill their slots from what is left.
    fn claim_batch(&self, claims: &[Claim<'_>], most: usize) -> Result<Vec<Option<u32>>>;
    /// A sensor's try found its condition false: the task goes back to QUEUED until
    /// `next_poke`, its try number and try row are given back (a poke is not a try), and it
    /// holds no slot meanwhile. Fenced like [`Store::finish_try`]. Returns when the waiting
    /// began.
    fn reschedule(&self, ti_pk: i64, try_number: u32, owner: &str, started: i64, next_poke: i64) -> Result<Option<i64>>;
    /// Records the process of a claimed try. Fenced: false if the claim was lost.
    fn record_spawn(&self, ti_pk: i64, try_number: u32, owner: &str, pid: u32, pid_start: Option<u64>, log_path: &str) -> Result<bool>;
    /// Records a try's outcome and the task instance's next state in one transaction.
    /// Fenced on (instance, try number, owner, RUNNING): false means the claim was lost and
    /// nothing was written.
    fn finish_try(&self, f: &FinishTry) -> Result<bool>;
    /// [`MetaStore::finish_try`] for several tries in one transaction: each fenced on its
    /// own, one answer per try in order. An error writes none of them.
    fn finish_tries(&self, fs: &[FinishTry]) -> Result<Vec<bool>>;
    /// RUNNING → terminal, with `rows_loaded` summed from the successful tries.
    fn finish_run(&self, pk: i64, state: RunState, now: i64) -> Result<bool>;
    /// Extends the leases of this owner's running tries; returns the (instance, try) pairs it
    /// still owns, so the caller can stop any try that lost its claim.
    fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<Vec<(i64, u32)>>;
    /// Every RUNNING task instance (for orphan detection).
    fn running_task_instances(&self) -> Result<Vec<TiRow>>;
    /// Figures (the metrics JSON) of a task's successful tries in the `limit` latest runs
    /// whose interval starts before `before`, newest first.
    fn recent_metrics(&self, pipeline: &str, task_id: &str, before: i64, limit: u32) -> Result<Vec<String>>;
    fn tries(&self, run_pk: i64) -> Result<Vec<TryRow>>;
    /// The tries named by (task instance, try number), in one read; the ones not found are
    /// left out.
    fn tries_of(&self, keys: &[(i64, u32)]) -> Result<Vec<TryRow>>;
    /// Puts a finished run back to be run again, on pipeline version `version` (the file as
    /// it is now: a rerun is how a fixed pipeline is applied to a failed day). New tries get
    /// new numbers and history stays. Tasks new in this version are added; tasks it no
    /// longer has are marked SKIPPED.
    fn reset_run(&self, pk: i64, now: i64, trigger: Trigger, version: &str, tasks: &[NewTask<'_>]) -> Result<bool>;
    /// Takes the project's scheduler lease if it is free, expired, or already ours.
    /// Returns the holder when someone else has it.
    fn acquire_scheduler_lease(&self, owner: &str, host: &str, pid: u32, now: i64, ttl_us: i64) -> Result<Option<LeaseHolder>>;
    fn scheduler_lease(&self) -> Result<Option<LeaseHolder>>;
    /// Drops a lease whose holder is known to be dead (same host, process gone).
    fn break_scheduler_lease(&self, dead_owner: &str) -> Result<bool>;
    fn renew_scheduler_lease(&self, owner: &str, now: i64, ttl_us: i64) -> Result<bool>;
    fn release_scheduler_lease(&self, owner: &str) -> Result<()>;
    fn set_paused(&self, pipeline: &str, paused: bool, now: i64) -> Result<()>;
    fn paused_pipelines(&self) -> Result<Vec<String>>;
    /// Row counts per table, for diagnostics and benchmarks.
    fn count(&self, table: &str) -> Result<i64>;
    /// Stores the dbt node results of one try (replacing any recorded before for it).
    fn record_dbt_nodes(&self, run: i64, ti: i64, try_number: u32, task_id: &str, nodes: &[DbtNode]) -> Result<()>;
    /// dbt node results of a run, by task and try.
    fn dbt_nodes(&self, run: i64) -> Result<Vec<(String, u32, DbtNode)>>;
    /// Puts finished tasks of a run back to be run again: each named task gets PENDING and
    /// room for `max_tries` more tries (new try numbers; the history of earlier tries stays),
    /// and a finished run is queued again. Tasks still queued or running are left alone.
    /// Returns the tasks that were cleared.
    fn clear_tasks(&self, run_pk: i64, tasks: &[(&str, u32)], now: i64, reason: &str) -> Result<Vec<String>>;
    /// Cancels unfinished runs: each becomes CANCELLED with every task that has not finished;
    /// a running try is recorded CANCELLED at once (its engine sees the claim gone at its
    /// next heartbeat and kills its processes; the outcome it would write is fenced out).
    /// Finished runs are left alone. Returns the runs cancelled and the tries that were
    /// running.
    fn cancel_runs(&self, run_pks: &[i64], now: i64, reason: &str) -> Result<(Vec<String>, Vec<CancelledTry>)>;
    /// Unfinished backfill runs of a pipeline (for `cancel --backfill`).
    fn unfinished_backfill_runs(&self, pipeline: &str) -> Result<Vec<i64>>;
    /// The state of one task instance.
    fn task_state(&self, ti_pk: i64) -> Result<Option<TaskState>>;
    /// Sets a finished or waiting task's state by hand (an operator fixed things outside
    /// nightshift), recorded in the run's history with the reason. Refused for a task
    /// that is running. Returns the state it had, or `None` when it was running or missing.
    fn mark_task(&self, run_pk: i64, task: &str, state: &str, reason: &str, now: i64) -> Result<Option<String>>;
    /// Sets a run's final state from its tasks after a hand edit (`None`: not finished, so
    /// the run is queued for the scheduler to carry on).
    fn settle_run(&self, run_pk: i64, outcome: Option<&str>, now: i64) -> Result<()>;
    /// Running task instances using a pool, across runs (for `explain`).
    fn pool_users(&self, pool: &str) -> Result<Vec<(String, String, String)>>;
    /// Running runs of a pipeline, by trigger class (backfill or not), for `explain`.
    fn running_runs(&self, pipeline: &str) -> Result<Vec<crate::RunRow>>;
    /// One page of a pipeline's runs, newest interval first, starting before `before`
    /// (a data_interval_start; `None` for the newest), only runs that `filter` matches.
    fn runs_page(&self, pipeline: &str, before: Option<i64>, limit: u32, filter: RunFilter) -> Result<Vec<RunRow>>;
    /// A pipeline's runs whose interval starts in [from, to).
    fn runs_between(&self, pipeline: &str, from: i64, to: i64) -> Result<Vec<RunRow>>;
    /// Task instances of several runs at once (a grid page).
    fn task_instances_of(&self, run_pks: &[i64]) -> Result<Vec<TiRow>>;
    /// What a scheduler pass needs to know of its runs' task instances: every one of the
    /// `whole` runs, and of the `since` runs those changed after the read that returned
    /// `cursor` (maybe more: a row may come again unchanged). Returns the rows and the
    /// cursor for the next read; `None` when the backend cannot tell changes apart, and
    /// then every row of the `since` runs comes too. A wide run's passes read what moved,
    /// not the whole run each time.
    fn task_instances_delta(&self, whole: &[i64], since: &[i64], cursor: Option<i64>) -> Result<(Vec<TiRow>, Option<i64>)>;
    /// The newest run of a pipeline, and the newest finished one.
    fn last_runs(&self, pipeline: &str) -> Result<(Option<RunRow>, Option<RunRow>)>;
    /// Durations (ms) of each task's successful tries in its `per_task` newest runs before
    /// `before`: the history a deadline forecast estimates from.
    fn recent_durations(&self, pipeline: &str, before: i64, per_task: u32) -> Result<HashMap<String, Vec<i64>>>;
    /// Records a run's deadline standing; returns whether the state changed (so exactly one
    /// process raises the alert for a change).
    fn set_deadline(&self, run_pk: i64, deadline_at: i64, state: &str, forecast_at: Option<i64>) -> Result<bool>;
    fn deadline(&self, run_pk: i64) -> Result<DeadlineRow>;
    /// Deadline standings of several runs.
    fn deadlines_of(&self, run_pks: &[i64]) -> Result<HashMap<i64, DeadlineRow>>;
    /// Task instances by (pipeline, state) among active runs: the queued and running gauges.
    fn live_task_counts(&self) -> Result<Vec<(String, String, i64)>>;
    /// Removes finished runs whose interval ended before `cutoff`, with their task
    /// instances, tries, events, dbt results and alerts. Runs in batches so no write
    /// transaction is long.
    fn prune(&self, cutoff: i64, batch: u32) -> Result<Pruned>;
    /// A run's state changes in order (invariant 4's history).
    fn events(&self, run_pk: i64) -> Result<Vec<EventRecord>>;
    /// Records an alert; returns its id if this call created it (the caller delivers it),
    /// `None` if the same event was already recorded for the channel.
    fn enqueue_alert(&self, a: &NewAlert<'_>) -> Result<Option<i64>>;
    /// Claims pending alerts whose claim lapsed (their process died before delivering).
    fn claim_stale_alerts(&self, owner: &str, now: i64, claim_until: i64) -> Result<Vec<i64>>;
    fn alert(&self, id: i64) -> Result<Option<AlertRow>>;
    /// Records the outcome of a delivery; `sent_at` is when the delivery finished, either way.
    fn finish_alert(&self, id: i64, sent: bool, attempts: u32, error: Option<&str>, now: i64) -> Result<()>;
    /// Alerts, newest first; of one pipeline when given.
    fn alerts(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<AlertRow>>;
    /// Whether a failure alert sent to `channel` about `pipeline` is still open: sent after
    /// the last `recovered` alert of that channel and pipeline.
    fn open_incident(&self, channel: &str, pipeline: &str) -> Result<bool>;
    /// Records that this process is alive and what it does (upsert by owner), at `now` by
    /// the store's clock.
    fn beat(&self, e: &EngineRow) -> Result<()>;
    /// Every process that beat, the latest first, with its running tries.
    fn engines(&self) -> Result<Vec<EngineRow>>;
    /// Removes a process's row (it stopped cleanly), and rows of processes whose last beat
    /// is older than `stale_before`.
    fn forget_engine(&self, owner: &str, stale_before: i64) -> Result<()>;
    /// Stores a piece of a try's log that starts at byte `offset` (again: a no-op).
    fn append_log(&self, ti: i64, try_number: u32, offset: i64, data: &[u8]) -> Result<()>;
    /// Up to about `max` bytes of a try's shipped log from byte `offset` (fewer: the end of
    /// what was shipped so far).
    fn read_log(&self, ti: i64, try_number: u32, offset: i64, max: usize) -> Result<Vec<u8>>;
    /// How many finished runs of `pipeline` failed in a row, newest first, among runs whose
    /// interval starts at or before `up_to`.
    fn consecutive_failed_runs(&self, pipeline: &str, up_to: i64) -> Result<u32>;
    /// Appends an entry to the audit log (its `id` is ignored); returns the new id.
    fn record_audit(&self, e: &AuditRow) -> Result<i64>;
    /// The audit log, newest first, at most `limit` entries older than `before` (an id).
    fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>>;
}

/// Who [`Store::watch_for_work`] wakes.
pub trait WorkWatcher: Send + 'static {
    /// Work may be claimable: look now. False: nobody listens any more.
    fn wake(&self) -> bool;
    /// Whether anybody still listens (asked between hints, to end the watch).
    fn listening(&self) -> bool;
}

/// The store a project uses, behind the [`MetaStore`] interface.
pub struct Store {
    backend: Backend,
    location: Location,
}

enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (creating if needed) the store at `location` and applies pending migrations.
    /// One statement waits for another process's lock up to
    /// `NIGHTSHIFT_STORE_BUSY_TIMEOUT_MS` (default 30 s); the engine's callers retry
    /// transient failures, so a longer lock only delays them.
    pub fn open(location: &Location) -> Result<Store> {
        let busy_ms = env_var("NIGHTSHIFT_STORE_BUSY_TIMEOUT_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        Store::open_waiting(location, Duration::from_millis(busy_ms))
    }

    /// Opens the store with a chosen bound on how long one statement waits for a lock (the
    /// web server answers 503 rather than hang behind a locked store).
    pub fn open_waiting(location: &Location, busy: Duration) -> Result<Store> {
        let backend = match location {
            #[cfg(feature = "sqlite")]
            Location::Sqlite(path) => Backend::Sqlite(sqlite::SqliteStore::open(path, busy)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(pg) => Backend::Postgres(postgres::PgStore::open(pg, busy)?),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::Config(format!(
                    "this nightshift was built without support for the store `{other}`; build it with the `{}` feature",
                    other.backend_name()
                )));
            }
        };
        Ok(Store {
            backend,
            location: location.clone(),
        })
    }

    /// Opens a SQLite store file (tests, benches, tools).
    pub fn open_file(path: &Path) -> Result<Store> {
        Store::open(&Location::Sqlite(path.to_owned()))
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The SQLite backend itself, for benchmarks and tests that seed history in bulk.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&sqlite::SqliteStore> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Wakes `watcher` whenever another process may have made work claimable (queued tasks,
    /// created or cleared runs), until it stops listening; a hint to look now rather than at
    /// the next poll, never a promise that there is work. Returns false when this store
    /// sends no such hints (SQLite: everything is on one machine and a poll is cheap).
    pub fn watch_for_work(&self, watcher: Box<dyn WorkWatcher>) -> bool {
        match &self.location {
            #[cfg(feature = "postgres")]
            Location::Postgres(pg) => match postgres::listen::start(pg.clone(), watcher) {
                Ok(()) => true,
                // Without the thread the engine polls, as on SQLite.
                Err(_) => false,
            },
            _ => {
                drop(watcher);
                false
            }
        }
    }

    /// The PostgreSQL backend itself, for benchmarks and tests that seed history in bulk.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&postgres::PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn MetaStore;

    fn deref(&self) -> &Self::Target {
        match &self.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(s) => s,
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => s,
        }
    }
}

/// The store's one reader of the environment: its tuning knobs and the PostgreSQL password.
#[allow(clippy::disallowed_methods)]
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A stable content hash (FNV-1a, 64 bit) naming a pipeline version.
pub fn version_hash(pipeline: &str, source: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in pipeline.bytes().chain([0u8]).chain(source.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}
