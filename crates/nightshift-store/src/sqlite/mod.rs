//! The SQLite backend: one file, WAL, one writer at a time, `BEGIN IMMEDIATE` for
//! read-modify-write. Every method is a short transaction, so several processes on one
//! machine can share the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nightshift_core::Trigger;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{Created, Error, NewRun, NewTask, Result, RunRow, TiRow, TryRow, version_hash};

mod alerts;
mod leases;
mod ops;
mod tries;
mod views;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("migration_2.sql")),
    (3, include_str!("migration_3.sql")),
    (4, include_str!("migration_4.sql")),
    (5, include_str!("migration_5.sql")),
    (6, include_str!("migration_6.sql")),
    (7, include_str!("migration_7.sql")),
    (8, include_str!("migration_8.sql")),
    (9, include_str!("migration_9.sql")),
    (10, include_str!("migration_10.sql")),
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// A driver error as the interface's [`Error`]: the store's file, and whether waiting may
/// help (locked, busy, briefly unreadable, disk full).
fn backend_error(path: &Path, source: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::*;
    let transient = matches!(
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
    );
    Error::Backend {
        location: path.display().to_string(),
        transient,
        source: Box::new(source),
    }
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

/// A store made before nightshift created its files for their owner only is tightened
/// when opened: the file and its journals 0600 (its folder may be the project's own, which
/// is left as it is).
fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |p: &Path, mode: u32| {
        if let Ok(m) = std::fs::metadata(p)
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        tighten(Path::new(&p), 0o600);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path` and applies pending migrations;
    /// one statement waits up to `busy` for another process's lock.
    pub fn open(path: &Path, busy: Duration) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let wrap = |source| backend_error(path, source);
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
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        };
        store.migrate()?;
        owner_only(path);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One machine, one clock: the lease clock is this host's.
    pub fn now_us(&self) -> Result<i64> {
        Ok(nightshift_core::clock::real_now_us())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        backend_error(&self.path, source)
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
                location: self.path.display().to_string(),
                found,
                known,
            });
        }
        Ok(())
    }

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

    pub fn runs_with_id(&self, run_id: &str) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE run_id = ?1 ORDER BY pipeline"
            ))?;
            s.query_map([run_id], run_row)?.collect()
        })
    }

    pub fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare(&format!(
                "SELECT * FROM (SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 ORDER BY data_interval_start DESC LIMIT ?2) ORDER BY data_interval_start"
            ))?;
            s.query_map(params![pipeline, limit], run_row)?.collect()
        })
    }

    pub fn active_runs(&self) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') ORDER BY data_interval_start, id"
            ))?;
            s.query_map([], run_row)?.collect()
        })
    }

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

    pub fn count(&self, table: &str) -> Result<i64> {
        let table = match table {
            "pipeline_runs" | "task_instances" | "task_tries" | "task_events" => table,
            other => return Err(Error::Corrupt(format!("no table `{other}`"))),
        };
        self.read(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
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
