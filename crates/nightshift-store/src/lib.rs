//! The metadata store: the one source of truth for runs, task instances, tries and leases.
//!
//! # Contract (what the engine relies on)
//! - `create_run` is idempotent: `UNIQUE(pipeline, data_interval_start)` and
//!   `UNIQUE(pipeline, run_id)` make a second create a no-op that returns the existing run.
//! - `claim` is one conditional UPDATE: a task instance moves to RUNNING with a new try
//!   number only if it was claimable, its pool had a free slot and its pipeline was under
//!   `max_active_tasks`, all checked in the same write transaction.
//! - Every later write about a try (`record_spawn`, `finish_try`, `renew_leases`) is fenced
//!   on (task instance, try number, owner): a try that lost its claim cannot overwrite its
//!   successor.
//!
//! SQLite today (WAL, one writer at a time, `BEGIN IMMEDIATE` for read-modify-write). Every
//! method is a short transaction, so several processes can share the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nightshift_core::{RunState, TaskState, Trigger};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod alerts;
mod ops;
mod views;

pub use alerts::{AlertRow, NewAlert};
pub use ops::CancelledTry;
pub use views::{DeadlineRow, EventRecord, Pruned};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("migration_2.sql")),
    (3, include_str!("migration_3.sql")),
    (4, include_str!("migration_4.sql")),
    (5, include_str!("migration_5.sql")),
    (6, include_str!("migration_6.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata store `{path}`: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("creating the folder of the metadata store `{path}`")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the metadata store `{path}` has schema version {found}, newer than this nightshift knows ({known}); upgrade nightshift"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the metadata store holds an invalid value: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the failure is worth waiting out: the store is locked, busy, briefly
    /// unreadable, or its disk is full. Callers retry these with backoff; anything else is a
    /// defect or a broken store and is reported.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            Error::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    DatabaseBusy
                        | DatabaseLocked
                        | CannotOpen
                        | SystemIoFailure
                        | DiskFull
                        | ReadOnly
                        | FileLockingProtocolFailed
                )
            ),
            Error::Dir { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub pk: i64,
    pub run_id: String,
    pub pipeline: String,
    pub ds: jiff::civil::Date,
    pub data_interval_start: i64,
    pub data_interval_end: i64,
    pub queued_at: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub status: RunState,
    pub rows_loaded: i64,
    pub trigger: Trigger,
    pub version: String,
}

impl RunRow {
    /// The run's keys as every request and template context carries them.
    pub fn keys(&self) -> nightshift_core::RunKeys {
        nightshift_core::RunKeys {
            pipeline: self.pipeline.clone(),
            run_id: self.run_id.clone(),
            ds: self.ds,
            interval: nightshift_core::DataInterval {
                start: nightshift_core::time::from_micros(self.data_interval_start),
                end: nightshift_core::time::from_micros(self.data_interval_end),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TiRow {
    pub pk: i64,
    pub run_pk: i64,
    pub pipeline: String,
    pub task_id: String,
    pub state: TaskState,
    pub try_number: u32,
    pub max_tries: u32,
    pub next_try_at: Option<i64>,
    pub pool: Option<String>,
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub pid_start: Option<i64>,
    pub lease_until: Option<i64>,
    /// For sensors: when the first poke began.
    pub waiting_since: Option<i64>,
    /// For sensors: pokes that found the condition false.
    pub pokes: u32,
    /// Tries in a row that nightshift itself interrupted (crash, kill, shutdown).
    pub interruptions: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TryRow {
    pub ti_pk: i64,
    pub run_pk: i64,
    pub task_id: String,
    pub try_number: u32,
    pub state: TaskState,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub pid: Option<i64>,
    pub host: String,
    pub log_path: Option<String>,
    pub error: Option<String>,
    pub metrics: Option<String>,
    pub rows_loaded: Option<i64>,
    /// A problem that did not change the outcome (the log could not be written).
    pub warning: Option<String>,
}

pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub pipeline: &'a str,
    pub ds: jiff::civil::Date,
    pub data_interval_start: i64,
    pub data_interval_end: i64,
    pub now: i64,
    pub trigger: Trigger,
    pub version: &'a str,
}

pub struct NewTask<'a> {
    pub task_id: &'a str,
    pub max_tries: u32,
    pub pool: Option<&'a str>,
}

pub struct Claim<'a> {
    pub ti_pk: i64,
    pub owner: &'a str,
    pub host: &'a str,
    pub now: i64,
    pub lease_until: i64,
    /// (pool, slots)
    pub pool: Option<(&'a str, u32)>,
    /// (pipeline, max_active_tasks)
    pub pipeline_limit: (&'a str, u32),
}

pub struct FinishTry<'a> {
    pub ti_pk: i64,
    pub try_number: u32,
    /// The claim's owner; `None` finishes a try whatever owns it (recovery of a dead owner,
    /// still fenced on the try number).
    pub owner: Option<&'a str>,
    pub end: i64,
    pub try_state: TaskState,
    pub ti_state: TaskState,
    pub next_try_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<&'a str>,
    pub metrics: Option<&'a str>,
    pub rows_loaded: Option<i64>,
    /// Tries added to the task's budget (a try stopped by a shutdown does not count).
    pub extra_tries: u32,
    /// The try's log, when it was not recorded at spawn.
    pub log_path: Option<&'a str>,
    /// The try's process, when it was not recorded at spawn (a short try).
    pub pid: Option<u32>,
    /// nightshift itself ended this try (crash, kill, shutdown): counts towards the task's
    /// interruptions in a row instead of its retries. Any other outcome resets the count.
    pub interrupted: bool,
    /// A problem that did not change the outcome, kept on the try.
    pub warning: Option<&'a str>,
}

/// One dbt node's result in one try.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbtNode {
    pub unique_id: String,
    pub resource_type: String,
    pub status: String,
    pub execution_time: Option<f64>,
    pub failures: Option<i64>,
    pub rows_affected: Option<i64>,
    pub message: Option<String>,
    pub invocation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseHolder {
    pub owner: String,
    pub host: String,
    pub pid: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New(i64),
    Existing(i64),
}

impl Created {
    pub fn pk(self) -> i64 {
        match self {
            Created::New(pk) | Created::Existing(pk) => pk,
        }
    }
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
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

const RUN_COLS: &str = "id, run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, start_time, end_time, status, rows_loaded, \"trigger\", version";
const TI_COLS: &str = "id, run, pipeline, task_id, state, try_number, max_tries, next_try_at, pool, owner, host, pid, pid_start, lease_until, waiting_since, pokes, interruptions";
const TRY_COLS: &str = "ti, run, task_id, try_number, state, start_time, end_time, duration_ms, exit_code, signal, pid, host, log_path, error, metrics, rows_loaded, warning";

fn parse<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        pk: r.get(0)?,
        run_id: r.get(1)?,
        pipeline: r.get(2)?,
        ds: {
            let text: String = r.get(3)?;
            text.parse().map_err(|e: jiff::Error| {
                rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
            })?
        },
        data_interval_start: r.get(4)?,
        data_interval_end: r.get(5)?,
        queued_at: r.get(6)?,
        start_time: r.get(7)?,
        end_time: r.get(8)?,
        status: parse(r.get(9)?)?,
        rows_loaded: r.get(10)?,
        trigger: parse(r.get(11)?)?,
        version: r.get(12)?,
    })
}

fn ti_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TiRow> {
    Ok(TiRow {
        pk: r.get(0)?,
        run_pk: r.get(1)?,
        pipeline: r.get(2)?,
        task_id: r.get(3)?,
        state: parse(r.get(4)?)?,
        try_number: r.get(5)?,
        max_tries: r.get(6)?,
        next_try_at: r.get(7)?,
        pool: r.get(8)?,
        owner: r.get(9)?,
        host: r.get(10)?,
        pid: r.get(11)?,
        pid_start: r.get(12)?,
        lease_until: r.get(13)?,
        waiting_since: r.get(14)?,
        pokes: r.get(15)?,
        interruptions: r.get(16)?,
    })
}

fn try_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TryRow> {
    Ok(TryRow {
        ti_pk: r.get(0)?,
        run_pk: r.get(1)?,
        task_id: r.get(2)?,
        try_number: r.get(3)?,
        state: parse(r.get(4)?)?,
        start_time: r.get(5)?,
        end_time: r.get(6)?,
        duration_ms: r.get(7)?,
        exit_code: r.get(8)?,
        signal: r.get(9)?,
        pid: r.get(10)?,
        host: r.get(11)?,
        log_path: r.get(12)?,
        error: r.get(13)?,
        metrics: r.get(14)?,
        rows_loaded: r.get(15)?,
        warning: r.get(16)?,
    })
}

fn event(
    tx: &Connection,
    at: i64,
    run: i64,
    task: Option<&str>,
    try_number: Option<u32>,
    state: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO task_events (at, run, task_id, try_number, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![at, run, task, try_number, state, detail],
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `path` and applies pending migrations. One
    /// statement waits for another process's lock up to `NIGHTSHIFT_STORE_BUSY_TIMEOUT_MS`
    /// (default 30 s); the engine's callers retry transient failures, so a longer lock only
    /// delays them.
    pub fn open(path: &Path) -> Result<Store> {
        #[allow(clippy::disallowed_methods)]
        let busy_ms = std::env::var("NIGHTSHIFT_STORE_BUSY_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        Store::open_waiting(path, Duration::from_millis(busy_ms))
    }

    /// Opens the store with a chosen bound on how long one statement waits for a lock (the
    /// web server answers 503 rather than hang behind a locked store).
    pub fn open_waiting(path: &Path, busy: Duration) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let wrap = |source| Error::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(busy).map_err(wrap)?;
        // WAL lets readers (the CLI, the UI) work while the scheduler writes; NORMAL sync is
        // durable against process crashes, which is the failure the engine must survive.
        // Switching to WAL takes a lock without the busy handler; skip it when it is already
        // on (another process has the store open) and retry briefly while it is contended.
        let mut tries = 0;
        loop {
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(wrap)?;
            if mode.eq_ignore_ascii_case("wal") {
                break;
            }
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(e)
                    if tries < busy.as_millis() / 100
                        && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(wrap(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(wrap)?;
        let store = Store {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn();
        f(&conn).map_err(|e| self.err(e))
    }

    fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        // Some migrations rebuild a table (SQLite cannot change a constraint in place), which
        // needs foreign keys off outside the transaction; they are checked before the commit.
        self.conn()
            .pragma_update(None, "foreign_keys", "OFF")
            .map_err(|e| self.err(e))?;
        let found = self.write(|tx| {
            tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")?;
            let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
            if current > known {
                return Ok(current);
            }
            for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.execute_batch(sql)?;
                tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))", [v])?;
            }
            let broken: Option<String> = tx
                .query_row("SELECT \"table\" FROM pragma_foreign_key_check LIMIT 1", [], |r| r.get(0))
                .optional()?;
            if let Some(table) = broken {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("migration left a broken reference in `{table}`")),
                ));
            }
            Ok(current)
        });
        self.conn()
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err(e))?;
        let found = found?;
        if found > known {
            return Err(Error::NewerSchema {
                path: self.path.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Records a pipeline file version; returns its hash.
    pub fn put_version(&self, pipeline: &str, source: &str, now: i64) -> Result<String> {
        let hash = version_hash(pipeline, source);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pipeline_versions (hash, pipeline, source, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![hash, pipeline, source, now],
            )
        })?;
        Ok(hash)
    }

    pub fn version_source(&self, hash: &str) -> Result<Option<(String, String)>> {
        self.read(|c| {
            c.prepare_cached("SELECT pipeline, source FROM pipeline_versions WHERE hash = ?1")?
                .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
    }

    /// Creates a run and its task instances, or returns the run that already holds this
    /// interval (or this run id).
    pub fn create_run(&self, run: &NewRun<'_>, tasks: &[NewTask<'_>]) -> Result<Created> {
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, status, \"trigger\", version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'QUEUED', ?7, ?8) ON CONFLICT DO NOTHING",
                params![run.run_id, run.pipeline, run.ds.to_string(), run.data_interval_start, run.data_interval_end, run.now, run.trigger.as_str(), run.version],
            )?;
            if inserted == 0 {
                let pk: i64 = tx.query_row(
                    "SELECT id FROM pipeline_runs WHERE pipeline = ?1 AND (data_interval_start = ?2 OR run_id = ?3) ORDER BY id LIMIT 1",
                    params![run.pipeline, run.data_interval_start, run.run_id],
                    |r| r.get(0),
                )?;
                return Ok(Created::Existing(pk));
            }
            let pk = tx.last_insert_rowid();
            let mut stmt = tx.prepare(
                "INSERT INTO task_instances (run, pipeline, task_id, state, max_tries, pool, updated_at) VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6)",
            )?;
            for t in tasks {
                stmt.execute(params![pk, run.pipeline, t.task_id, t.max_tries, t.pool, run.now])?;
            }
            event(tx, run.now, pk, None, None, "QUEUED", Some(run.trigger.as_str()))?;
            Ok(Created::New(pk))
        })
    }

    /// Creates many runs of one pipeline version in one transaction (catch-up), skipping
    /// intervals that already have a run. Returns the pks of the runs it created.
    pub fn create_runs(&self, runs: &[NewRun<'_>], tasks: &[NewTask<'_>]) -> Result<Vec<i64>> {
        self.write(|tx| {
            let mut created = vec![];
            let mut ins = tx.prepare_cached(
                "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, status, \"trigger\", version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'QUEUED', ?7, ?8) ON CONFLICT DO NOTHING",
            )?;
            let mut ti = tx.prepare_cached(
                "INSERT INTO task_instances (run, pipeline, task_id, state, max_tries, pool, updated_at) VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6)",
            )?;
            for run in runs {
                let inserted = ins.execute(params![run.run_id, run.pipeline, run.ds.to_string(), run.data_interval_start, run.data_interval_end, run.now, run.trigger.as_str(), run.version])?;
                if inserted == 0 {
                    continue;
                }
                let pk = tx.last_insert_rowid();
                for t in tasks {
                    ti.execute(params![pk, run.pipeline, t.task_id, t.max_tries, t.pool, run.now])?;
                }
                event(tx, run.now, pk, None, None, "QUEUED", Some(run.trigger.as_str()))?;
                created.push(pk);
            }
            Ok(created)
        })
    }

    /// After a shutdown: RUNNING runs among `pks` with no task RUNNING go back to QUEUED, so
    /// no run looks in progress without a live owner; the next scheduler starts them again.
    pub fn requeue_idle_runs(&self, pks: &[i64], now: i64) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for pk in pks {
                let changed = tx.prepare_cached(
                    "UPDATE pipeline_runs SET status = 'QUEUED', start_time = NULL WHERE id = ?1 AND status = 'RUNNING'
                       AND NOT EXISTS (SELECT 1 FROM task_instances WHERE run = ?1 AND state = 'RUNNING')",
                )?
                .execute([pk])?;
                if changed == 1 {
                    event(tx, now, *pk, None, None, "QUEUED", Some("interrupted: the scheduler shut down"))?;
                }
                n += changed;
            }
            Ok(n)
        })
    }

    pub fn run(&self, pk: i64) -> Result<Option<RunRow>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE id = ?1"
            ))?
            .query_row([pk], run_row)
            .optional()
        })
    }

    pub fn find_run(&self, pipeline: &str, run_id: &str) -> Result<Option<RunRow>> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 AND run_id = ?2"
                ),
                [pipeline, run_id],
                run_row,
            )
            .optional()
        })
    }

    pub fn find_run_by_interval(&self, pipeline: &str, start: i64) -> Result<Option<RunRow>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 AND data_interval_start = ?2"),
                params![pipeline, start],
                run_row,
            )
            .optional()
        })
    }

    /// Runs with this run id, across pipelines.
    pub fn runs_with_id(&self, run_id: &str) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE run_id = ?1 ORDER BY pipeline"
            ))?;
            s.query_map([run_id], run_row)?.collect()
        })
    }

    /// A pipeline's runs, oldest interval first; at most `limit` of the newest.
    pub fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare(&format!(
                "SELECT * FROM (SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 ORDER BY data_interval_start DESC LIMIT ?2) ORDER BY data_interval_start"
            ))?;
            s.query_map(params![pipeline, limit], run_row)?.collect()
        })
    }

    /// QUEUED and RUNNING runs: the scheduler's working set. Indexed, so its cost follows
    /// active work, not history.
    pub fn active_runs(&self) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') ORDER BY data_interval_start, id"
            ))?;
            s.query_map([], run_row)?.collect()
        })
    }

    /// The scheduler's working set: every RUNNING run, and the `queued` oldest QUEUED runs
    /// of each pipeline and class (backfill or not) — enough to fill any `max_active_runs`
    /// that makes sense, however many runs a catch-up has queued. Ordered by interval.
    pub fn working_runs(&self, queued: u32) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                // `status IN (…)` repeats the partial index's condition so SQLite uses it.
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') AND status = 'RUNNING'
                 UNION ALL
                 SELECT {RUN_COLS} FROM (
                     SELECT *, ROW_NUMBER() OVER (PARTITION BY pipeline, (\"trigger\" = 'backfill') ORDER BY data_interval_start, id) AS n
                     FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') AND status = 'QUEUED')
                 WHERE n <= ?1
                 ORDER BY data_interval_start, id"
            ))?;
            s.query_map([queued], run_row)?.collect()
        })
    }

    /// The latest data interval start among a pipeline's runs (of one trigger, if given).
    pub fn latest_interval_start(
        &self,
        pipeline: &str,
        trigger: Option<Trigger>,
    ) -> Result<Option<i64>> {
        self.read(|c| {
            c.query_row(
                "SELECT MAX(data_interval_start) FROM pipeline_runs WHERE pipeline = ?1 AND (?2 IS NULL OR \"trigger\" = ?2)",
                params![pipeline, trigger.map(|t| t.as_str())],
                |r| r.get(0),
            )
        })
    }

    /// QUEUED → RUNNING if fewer than `max_active` runs of the same class (backfill or not)
    /// of this pipeline are running.
    pub fn activate_run(&self, pk: i64, now: i64, max_active: u32) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE pipeline_runs SET status = 'RUNNING', start_time = ?2
                 WHERE id = ?1 AND status = 'QUEUED'
                   AND (SELECT COUNT(*) FROM pipeline_runs o
                        WHERE o.pipeline = pipeline_runs.pipeline AND o.status = 'RUNNING'
                          AND (o.\"trigger\" = 'backfill') = (pipeline_runs.\"trigger\" = 'backfill')) < ?3")?.execute(params![pk, now, max_active],
            )?;
            if n == 1 {
                event(tx, now, pk, None, None, "RUNNING", None)?;
            }
            Ok(n == 1)
        })
    }

    pub fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE run = ?1 ORDER BY id"
            ))?;
            s.query_map([run_pk], ti_row)?.collect()
        })
    }

    /// Applies decisions about PENDING task instances (queued, upstream failed, skipped).
    pub fn decide_pending(
        &self,
        run_pk: i64,
        decisions: &[(String, TaskState)],
        now: i64,
    ) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for (task, state) in decisions {
                let changed = tx.prepare_cached("UPDATE task_instances SET state = ?3, updated_at = ?4 WHERE run = ?1 AND task_id = ?2 AND state = 'PENDING'")?.execute(params![run_pk, task, state.as_str(), now],
                )?;
                if changed == 1 {
                    event(tx, now, run_pk, Some(task), None, state.as_str(), None)?;
                }
                n += changed;
            }
            Ok(n)
        })
    }

    /// Claims a task instance for a new try; returns the try number, or `None` when the
    /// instance was not claimable or a limit was reached.
    pub fn claim(&self, c: &Claim<'_>) -> Result<Option<u32>> {
        Ok(self.claim_batch(std::slice::from_ref(c))?.pop().flatten())
    }

    /// Claims several task instances in one transaction (one commit for a whole pass), each
    /// with the same conditions as [`Store::claim`]; later claims see earlier ones, so pool
    /// and task limits hold within the batch too.
    pub fn claim_batch(&self, claims: &[Claim<'_>]) -> Result<Vec<Option<u32>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(claims.len());
            for c in claims {
                let (pool, slots) = c.pool.map(|(p, s)| (Some(p), s)).unwrap_or((None, 0));
                let claimed: Option<(u32, i64, String)> = tx
                    .prepare_cached(
                        "UPDATE task_instances
                         SET state = 'RUNNING', try_number = try_number + 1, owner = ?2, host = ?3, lease_until = ?4,
                             pid = NULL, pid_start = NULL, next_try_at = NULL, updated_at = ?5
                         WHERE id = ?1 AND state IN ('QUEUED', 'UP_FOR_RETRY') AND (next_try_at IS NULL OR next_try_at <= ?5)
                           AND (?6 IS NULL OR (SELECT COUNT(*) FROM task_instances WHERE state = 'RUNNING' AND pool = ?6) < ?7)
                           AND (SELECT COUNT(*) FROM task_instances WHERE state = 'RUNNING' AND pipeline = ?8) < ?9
                         RETURNING try_number, run, task_id",
                    )?
                    .query_row(
                        params![c.ti_pk, c.owner, c.host, c.lease_until, c.now, pool, slots, c.pipeline_limit.0, c.pipeline_limit.1],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((n, run, task)) = &claimed {
                    tx.prepare_cached(
                        "INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, host) VALUES (?1, ?2, ?3, ?4, 'RUNNING', ?5, ?6)",
                    )?
                    .execute(params![c.ti_pk, run, task, n, c.now, c.host])?;
                    // The try row records this change with its time; no separate event.
                }
                out.push(claimed.map(|c| c.0));
            }
            Ok(out)
        })
    }

    /// A sensor's try found its condition false: the task goes back to QUEUED until
    /// `next_poke`, its try number and try row are given back (a poke is not a try), and it
    /// holds no slot meanwhile. Fenced like [`Store::finish_try`]. Returns when the waiting
    /// began.
    pub fn reschedule(
        &self,
        ti_pk: i64,
        try_number: u32,
        owner: &str,
        started: i64,
        next_poke: i64,
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let since: Option<i64> = tx
                .prepare_cached(
                    "UPDATE task_instances SET state = 'QUEUED', try_number = try_number - 1, next_try_at = ?4, owner = NULL,
                         pid = NULL, pid_start = NULL, lease_until = NULL, updated_at = ?5,
                         waiting_since = COALESCE(waiting_since, ?5), pokes = pokes + 1
                     WHERE id = ?1 AND try_number = ?2 AND owner = ?3 AND state = 'RUNNING'
                     RETURNING waiting_since",
                )?
                .query_row(params![ti_pk, try_number, owner, next_poke, started], |r| r.get(0))
                .optional()?;
            if since.is_some() {
                tx.prepare_cached("DELETE FROM task_tries WHERE ti = ?1 AND try_number = ?2")?.execute(params![ti_pk, try_number])?;
            }
            Ok(since)
        })
    }

    /// Records the process of a claimed try. Fenced: false if the claim was lost.
    pub fn record_spawn(
        &self,
        ti_pk: i64,
        try_number: u32,
        owner: &str,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE task_instances SET pid = ?4, pid_start = ?5 WHERE id = ?1 AND try_number = ?2 AND owner = ?3 AND state = 'RUNNING'")?.execute(params![ti_pk, try_number, owner, pid, pid_start.map(|p| p as i64)],
            )?;
            if n == 1 {
                tx.prepare_cached("UPDATE task_tries SET pid = ?3, log_path = ?4 WHERE ti = ?1 AND try_number = ?2")?.execute(params![ti_pk, try_number, pid, log_path],
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Records a try's outcome and the task instance's next state in one transaction.
    /// Fenced on (instance, try number, owner, RUNNING): false means the claim was lost and
    /// nothing was written.
    pub fn finish_try(&self, f: &FinishTry<'_>) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE task_instances SET state = ?4, next_try_at = ?5, lease_until = NULL, updated_at = ?6, max_tries = max_tries + ?7,
                     interruptions = CASE WHEN ?8 THEN interruptions + 1 ELSE 0 END
                 WHERE id = ?1 AND try_number = ?2 AND (?3 IS NULL OR owner = ?3) AND state = 'RUNNING'")?.execute(params![f.ti_pk, f.try_number, f.owner, f.ti_state.as_str(), f.next_try_at, f.end, f.extra_tries, f.interrupted],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.prepare_cached("UPDATE task_tries SET state = ?3, end_time = ?4, duration_ms = (?4 - start_time) / 1000, exit_code = ?5, signal = ?6,
                        error = ?7, metrics = ?8, rows_loaded = ?9, log_path = COALESCE(log_path, ?10), pid = COALESCE(pid, ?11), warning = ?12
                 WHERE ti = ?1 AND try_number = ?2")?.execute(params![f.ti_pk, f.try_number, f.try_state.as_str(), f.end, f.exit_code, f.signal, f.error, f.metrics, f.rows_loaded, f.log_path, f.pid, f.warning],
            )?;
            // The try row holds start, end and outcome; the event log adds the task's next
            // state only when it is not simply the try's success.
            if f.ti_state != TaskState::Success {
                let (run, task): (i64, String) = tx
                    .prepare_cached("SELECT run, task_id FROM task_instances WHERE id = ?1")?
                    .query_row([f.ti_pk], |r| Ok((r.get(0)?, r.get(1)?)))?;
                event(tx, f.end, run, Some(&task), Some(f.try_number), f.ti_state.as_str(), f.error)?;
            }
            Ok(true)
        })
    }

    /// RUNNING → terminal, with `rows_loaded` summed from the successful tries.
    pub fn finish_run(&self, pk: i64, state: RunState, now: i64) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE pipeline_runs SET status = ?2, end_time = ?3,
                    rows_loaded = (SELECT COALESCE(SUM(t.rows_loaded), 0) FROM task_tries t JOIN task_instances i
                                   ON t.ti = i.id AND t.try_number = i.try_number
                                   WHERE i.run = ?1 AND i.state = 'SUCCESS')
                 WHERE id = ?1 AND status = 'RUNNING'")?.execute(params![pk, state.as_str(), now],
            )?;
            if n == 1 {
                event(tx, now, pk, None, None, state.as_str(), None)?;
            }
            Ok(n == 1)
        })
    }

    /// Extends the leases of this owner's running tries; returns the (instance, try) pairs it
    /// still owns, so the caller can stop any try that lost its claim.
    pub fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<Vec<(i64, u32)>> {
        self.write(|tx| {
            let mut s = tx.prepare("UPDATE task_instances SET lease_until = ?2 WHERE owner = ?1 AND state = 'RUNNING' RETURNING id, try_number")?;
            s.query_map(params![owner, lease_until], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// Every RUNNING task instance (for orphan detection).
    pub fn running_task_instances(&self) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE state = 'RUNNING'"
            ))?;
            s.query_map([], ti_row)?.collect()
        })
    }

    /// Figures (the metrics JSON) of a task's successful tries in the `limit` latest runs
    /// whose interval starts before `before`, newest first.
    pub fn recent_metrics(
        &self,
        pipeline: &str,
        task_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT t.metrics FROM task_tries t JOIN pipeline_runs r ON r.id = t.run
                 WHERE r.pipeline = ?1 AND t.task_id = ?2 AND t.state = 'SUCCESS' AND r.data_interval_start < ?3
                   AND t.metrics IS NOT NULL
                 ORDER BY r.data_interval_start DESC, t.try_number DESC LIMIT ?4",
            )?;
            s.query_map(params![pipeline, task_id, before, limit], |r| r.get(0))?.collect()
        })
    }

    pub fn tries(&self, run_pk: i64) -> Result<Vec<TryRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TRY_COLS} FROM task_tries WHERE run = ?1 ORDER BY start_time, id"
            ))?;
            s.query_map([run_pk], try_row)?.collect()
        })
    }

    /// Puts a finished run back to be run again, on pipeline version `version` (the file as
    /// it is now: a rerun is how a fixed pipeline is applied to a failed day). New tries get
    /// new numbers and history stays. Tasks new in this version are added; tasks it no
    /// longer has are marked SKIPPED.
    pub fn reset_run(
        &self,
        pk: i64,
        now: i64,
        trigger: Trigger,
        version: &str,
        tasks: &[NewTask<'_>],
    ) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE pipeline_runs SET status = 'QUEUED', start_time = NULL, end_time = NULL, rows_loaded = 0, queued_at = ?2,
                     \"trigger\" = ?3, version = ?4
                 WHERE id = ?1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')",
                params![pk, now, trigger.as_str(), version],
            )?;
            if n == 0 {
                return Ok(false);
            }
            let pipeline: String = tx.query_row("SELECT pipeline FROM pipeline_runs WHERE id = ?1", [pk], |r| r.get(0))?;
            tx.execute(
                "UPDATE task_instances SET state = 'SKIPPED', next_try_at = NULL, owner = NULL, updated_at = ?2 WHERE run = ?1",
                params![pk, now],
            )?;
            for t in tasks {
                tx.execute(
                    "INSERT INTO task_instances (run, pipeline, task_id, state, max_tries, pool, updated_at) VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6)
                     ON CONFLICT (run, task_id) DO UPDATE SET state = 'PENDING', next_try_at = NULL, owner = NULL, pid = NULL,
                         pid_start = NULL, waiting_since = NULL, pokes = 0, interruptions = 0, lease_until = NULL, pool = excluded.pool,
                         max_tries = task_instances.try_number + excluded.max_tries, updated_at = excluded.updated_at",
                    params![pk, pipeline, t.task_id, t.max_tries, t.pool, now],
                )?;
            }
            event(tx, now, pk, None, None, "QUEUED", Some("rerun"))?;
            Ok(true)
        })
    }

    /// Takes the project's scheduler lease if it is free, expired, or already ours.
    /// Returns the holder when someone else has it.
    pub fn acquire_scheduler_lease(
        &self,
        owner: &str,
        host: &str,
        pid: u32,
        now: i64,
        ttl_us: i64,
    ) -> Result<Option<LeaseHolder>> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO scheduler_lease (name, owner, host, pid, heartbeat_at, expires_at) VALUES ('scheduler', ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
                     heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
                 WHERE scheduler_lease.expires_at < ?4 OR scheduler_lease.owner = excluded.owner",
                params![owner, host, pid, now, now + ttl_us],
            )?;
            let holder = tx.query_row(
                "SELECT owner, host, pid, heartbeat_at, expires_at FROM scheduler_lease WHERE name = 'scheduler'",
                [],
                |r| Ok(LeaseHolder { owner: r.get(0)?, host: r.get(1)?, pid: r.get(2)?, heartbeat_at: r.get(3)?, expires_at: r.get(4)? }),
            )?;
            Ok((holder.owner != owner).then_some(holder))
        })
    }

    pub fn scheduler_lease(&self) -> Result<Option<LeaseHolder>> {
        self.read(|c| {
            c.query_row("SELECT owner, host, pid, heartbeat_at, expires_at FROM scheduler_lease WHERE name = 'scheduler'", [], |r| {
                Ok(LeaseHolder { owner: r.get(0)?, host: r.get(1)?, pid: r.get(2)?, heartbeat_at: r.get(3)?, expires_at: r.get(4)? })
            })
            .optional()
        })
    }

    /// Drops a lease whose holder is known to be dead (same host, process gone).
    pub fn break_scheduler_lease(&self, dead_owner: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = ?1",
                [dead_owner],
            )
            .map(|n| n == 1)
        })
    }

    pub fn renew_scheduler_lease(&self, owner: &str, now: i64, ttl_us: i64) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "UPDATE scheduler_lease SET heartbeat_at = ?2, expires_at = ?3 WHERE name = 'scheduler' AND owner = ?1",
                params![owner, now, now + ttl_us],
            )
            .map(|n| n == 1)
        })
    }

    pub fn release_scheduler_lease(&self, owner: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = ?1",
                [owner],
            )
        })?;
        Ok(())
    }

    pub fn set_paused(&self, pipeline: &str, paused: bool, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pipeline_flags (pipeline, paused, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                params![pipeline, paused, now],
            )
        })?;
        Ok(())
    }

    pub fn paused_pipelines(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached("SELECT pipeline FROM pipeline_flags WHERE paused = 1")?;
            s.query_map([], |r| r.get(0))?.collect()
        })
    }

    /// Row counts per table, for diagnostics and benchmarks.
    pub fn count(&self, table: &str) -> Result<i64> {
        let table = match table {
            "pipeline_runs" | "task_instances" | "task_tries" | "task_events" => table,
            other => return Err(Error::Corrupt(format!("no table `{other}`"))),
        };
        self.read(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
    }

    /// Stores the dbt node results of one try (replacing any recorded before for it).
    pub fn record_dbt_nodes(
        &self,
        run: i64,
        ti: i64,
        try_number: u32,
        task_id: &str,
        nodes: &[DbtNode],
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM dbt_nodes WHERE ti = ?1 AND try_number = ?2", params![ti, try_number])?;
            let mut s = tx.prepare_cached(
                "INSERT INTO dbt_nodes (run, ti, try_number, task_id, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for n in nodes {
                s.execute(params![
                    run, ti, try_number, task_id, n.unique_id, n.resource_type, n.status, n.execution_time, n.failures, n.rows_affected, n.message,
                    n.invocation_id
                ])?;
            }
            Ok(())
        })
    }

    /// dbt node results of a run, by task and try.
    pub fn dbt_nodes(&self, run: i64) -> Result<Vec<(String, u32, DbtNode)>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT task_id, try_number, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id
                 FROM dbt_nodes WHERE run = ?1 ORDER BY task_id, try_number, id",
            )?;
            s.query_map([run], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    DbtNode {
                        unique_id: r.get(2)?,
                        resource_type: r.get(3)?,
                        status: r.get(4)?,
                        execution_time: r.get(5)?,
                        failures: r.get(6)?,
                        rows_affected: r.get(7)?,
                        message: r.get(8)?,
                        invocation_id: r.get(9)?,
                    },
                ))
            })?
            .collect()
        })
    }

    /// Runs a closure inside one write transaction; used by benchmarks and tests to seed
    /// history quickly.
    pub fn bulk<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.write(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join(".nightshift/nightshift.db")).unwrap();
        (dir, s)
    }

    fn new_run<'a>(run_id: &'a str, start: i64, version: &'a str) -> NewRun<'a> {
        NewRun {
            run_id,
            pipeline: "nightly",
            ds: jiff::civil::date(2024, 6, 1),
            data_interval_start: start,
            data_interval_end: start + 1,
            now: 0,
            trigger: Trigger::Scheduled,
            version,
        }
    }

    #[test]
    fn one_run_per_interval() {
        let (_d, s) = store();
        let v = s.put_version("nightly", "src", 0).unwrap();
        let tasks = [NewTask {
            task_id: "a",
            max_tries: 1,
            pool: None,
        }];
        let a = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap();
        let b = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap();
        let c = s
            .create_run(&new_run("r1-other-id", 10, &v), &tasks)
            .unwrap();
        assert!(matches!(a, Created::New(_)));
        assert_eq!(b, Created::Existing(a.pk()));
        assert_eq!(c, Created::Existing(a.pk()));
        assert_eq!(s.count("pipeline_runs").unwrap(), 1);
        assert_eq!(s.count("task_instances").unwrap(), 1);
        // A second connection (another process) sees the same constraint.
        let s2 = Store::open(s.path()).unwrap();
        assert!(matches!(
            s2.create_run(&new_run("r1", 10, &v), &tasks).unwrap(),
            Created::Existing(_)
        ));
    }

    #[test]
    fn cancelling_a_run_records_its_running_try_and_fences_its_outcome() {
        let (_d, s) = store();
        let v = s.put_version("nightly", "src", 0).unwrap();
        let tasks = [
            NewTask {
                task_id: "a",
                max_tries: 1,
                pool: None,
            },
            NewTask {
                task_id: "b",
                max_tries: 1,
                pool: None,
            },
        ];
        let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
        s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
            .unwrap();
        let a = s.task_instances(run).unwrap()[0].pk;
        let claim = Claim {
            ti_pk: a,
            owner: "A",
            host: "h",
            now: 5,
            lease_until: 100,
            pool: None,
            pipeline_limit: ("nightly", 16),
        };
        assert_eq!(s.claim(&claim).unwrap(), Some(1));
        let (runs, tries) = s.cancel_runs(&[run], 7, "test").unwrap();
        assert_eq!(runs, ["r1"]);
        assert_eq!(tries.len(), 1);
        assert_eq!(tries[0].task_id, "a");
        let states: Vec<TaskState> = s
            .task_instances(run)
            .unwrap()
            .iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(states, [TaskState::Cancelled, TaskState::Cancelled]);
        assert_eq!(s.run(run).unwrap().unwrap().status, RunState::Cancelled);
        let t = &s.tries(run).unwrap()[0];
        assert_eq!(t.state, TaskState::Cancelled);
        assert_eq!(t.error.as_deref(), Some("cancelled: test"));
        // The engine's outcome for the killed try is fenced out.
        let fin = FinishTry {
            ti_pk: a,
            try_number: 1,
            owner: Some("A"),
            end: 9,
            try_state: TaskState::Failed,
            ti_state: TaskState::UpForRetry,
            next_try_at: Some(9),
            exit_code: None,
            signal: Some(9),
            error: None,
            metrics: None,
            rows_loaded: None,
            extra_tries: 1,
            log_path: None,
            pid: None,
            interrupted: true,
            warning: None,
        };
        assert!(!s.finish_try(&fin).unwrap());
        assert_eq!(s.task_state(a).unwrap(), Some(TaskState::Cancelled));
        assert_eq!(s.cancel_runs(&[run], 8, "again").unwrap().0.len(), 0);
        assert!(
            s.reset_run(run, 9, Trigger::Manual, &v, &tasks).unwrap(),
            "a cancelled run can run again"
        );
    }

    #[test]
    fn claims_are_fenced() {
        let (_d, s) = store();
        let v = s.put_version("nightly", "src", 0).unwrap();
        let run = s
            .create_run(
                &new_run("r1", 10, &v),
                &[NewTask {
                    task_id: "a",
                    max_tries: 3,
                    pool: Some("p"),
                }],
            )
            .unwrap()
            .pk();
        let ti = s.task_instances(run).unwrap()[0].pk;
        let claim = |owner: &'static str| Claim {
            ti_pk: ti,
            owner,
            host: "h",
            now: 5,
            lease_until: 100,
            pool: Some(("p", 1)),
            pipeline_limit: ("nightly", 16),
        };
        assert_eq!(
            s.claim(&claim("A")).unwrap(),
            None,
            "PENDING is not claimable"
        );
        s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
            .unwrap();
        assert_eq!(s.claim(&claim("A")).unwrap(), Some(1));
        assert_eq!(s.claim(&claim("B")).unwrap(), None, "already running");
        let fin = |owner: &'static str, try_number| FinishTry {
            ti_pk: ti,
            try_number,
            owner: Some(owner),
            end: 9,
            try_state: TaskState::Failed,
            ti_state: TaskState::UpForRetry,
            next_try_at: Some(9),
            exit_code: Some(1),
            signal: None,
            error: None,
            metrics: None,
            rows_loaded: None,
            extra_tries: 0,
            log_path: None,
            pid: None,
            interrupted: false,
            warning: None,
        };
        assert!(!s.finish_try(&fin("B", 1)).unwrap(), "wrong owner");
        assert!(s.finish_try(&fin("A", 1)).unwrap());
        assert!(!s.finish_try(&fin("A", 1)).unwrap(), "already finished");
        assert_eq!(
            s.claim(&Claim {
                now: 10,
                ..claim("B")
            })
            .unwrap(),
            Some(2)
        );
        assert!(
            !s.record_spawn(ti, 1, "A", 1, None, "x").unwrap(),
            "stale try cannot write"
        );
        assert!(s.record_spawn(ti, 2, "B", 1, None, "x").unwrap());
        assert_eq!(s.renew_leases("A", 200).unwrap(), vec![]);
        assert_eq!(s.renew_leases("B", 200).unwrap(), vec![(ti, 2)]);
        assert_eq!(s.tries(run).unwrap().len(), 2);
    }

    #[test]
    fn pool_slots_are_shared() {
        let (_d, s) = store();
        let v = s.put_version("nightly", "src", 0).unwrap();
        let tasks = [
            NewTask {
                task_id: "a",
                max_tries: 1,
                pool: Some("p"),
            },
            NewTask {
                task_id: "b",
                max_tries: 1,
                pool: Some("p"),
            },
        ];
        let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
        s.decide_pending(
            run,
            &[
                ("a".into(), TaskState::Queued),
                ("b".into(), TaskState::Queued),
            ],
            1,
        )
        .unwrap();
        let tis = s.task_instances(run).unwrap();
        let claim = |ti: i64| Claim {
            ti_pk: ti,
            owner: "A",
            host: "h",
            now: 5,
            lease_until: 100,
            pool: Some(("p", 1)),
            pipeline_limit: ("nightly", 16),
        };
        assert_eq!(s.claim(&claim(tis[0].pk)).unwrap(), Some(1));
        assert_eq!(s.claim(&claim(tis[1].pk)).unwrap(), None);
    }

    #[test]
    fn scheduler_lease_is_exclusive() {
        let (_d, s) = store();
        assert_eq!(s.acquire_scheduler_lease("A", "h", 1, 0, 10).unwrap(), None);
        assert_eq!(
            s.acquire_scheduler_lease("B", "h", 2, 5, 10)
                .unwrap()
                .unwrap()
                .owner,
            "A"
        );
        assert!(s.renew_scheduler_lease("A", 6, 10).unwrap());
        assert_eq!(
            s.acquire_scheduler_lease("B", "h", 2, 17, 10).unwrap(),
            None,
            "expired lease is taken over"
        );
        assert!(!s.renew_scheduler_lease("A", 18, 10).unwrap());
    }
}
