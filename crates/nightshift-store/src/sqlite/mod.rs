//! The SQLite backend: one file, WAL, one writer at a time, `BEGIN IMMEDIATE` for
//! read-modify-write. Every method is a short transaction, so several processes on one
//! machine can share the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nightshift_core::{RunState, TaskState, Trigger};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    Claim, Created, DbtNode, Error, FinishTry, LeaseHolder, NewRun, NewTask, Result, RunRow, TiRow,
    TryRow, version_hash,
};

mod alerts;
mod ops;
mod views;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("migration_2.sql")),
    (3, include_str!("migration_3.sql")),
    (4, include_str!("migration_4.sql")),
    (5, include_str!("migration_5.sql")),
    (6, include_str!("migration_6.sql")),
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
                path: self.path.clone(),
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

    pub fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE run = ?1 ORDER BY id"
            ))?;
            s.query_map([run_pk], ti_row)?.collect()
        })
    }

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

    pub fn claim(&self, c: &Claim<'_>) -> Result<Option<u32>> {
        Ok(self.claim_batch(std::slice::from_ref(c))?.pop().flatten())
    }

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

    pub fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<Vec<(i64, u32)>> {
        self.write(|tx| {
            let mut s = tx.prepare("UPDATE task_instances SET lease_until = ?2 WHERE owner = ?1 AND state = 'RUNNING' RETURNING id, try_number")?;
            s.query_map(params![owner, lease_until], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    pub fn running_task_instances(&self) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE state = 'RUNNING'"
            ))?;
            s.query_map([], ti_row)?.collect()
        })
    }

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

    pub fn count(&self, table: &str) -> Result<i64> {
        let table = match table {
            "pipeline_runs" | "task_instances" | "task_tries" | "task_events" => table,
            other => return Err(Error::Corrupt(format!("no table `{other}`"))),
        };
        self.read(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
    }

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
