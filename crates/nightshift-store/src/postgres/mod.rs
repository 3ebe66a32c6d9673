//! The PostgreSQL backend: one database shared by every scheduler and worker of a project,
//! on any host. Same tables and contract as SQLite; what differs is how concurrency is
//! made safe, because here writers really do run at once:
//! - every method is one transaction at READ COMMITTED; conditional updates (the fences)
//!   re-check their condition on the row's newest version, so a lost claim stays lost;
//! - a claim batch locks the task instances it takes with `FOR UPDATE SKIP LOCKED` (rows
//!   another claimer holds are skipped, never waited for), and serialises the count checks
//!   of each pool and pipeline it touches with transaction-scoped advisory locks, taken in
//!   one order so two batches cannot deadlock;
//! - leases are measured with the server's clock ([`PgStore::now_us`]).
//!
//! Connections come from a pool (r2d2); a connection broken by a server restart is dropped
//! by the pool and a new one is made on next use, so the store reconnects by itself once the
//! server is back. Until then every call fails fast with a transient error.
//!
//! Each connection keeps its prepared statements ([`conn`]).
//!
//! The driver (`postgres`) blocks on a runtime of its own, which tokio forbids on a thread
//! that drives async tasks: a call made from such a thread (the engine's loop) runs on a
//! short-lived helper thread instead ([`off_runtime`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nightshift_core::Trigger;
use postgres::{Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use conn::{Conn, Manager, Tx};

use crate::{Created, Error, NewRun, NewTask, PgLocation, Result, RunRow, TiRow, TryRow};

mod alerts;
mod conn;
mod leases;
pub(crate) mod listen;
mod ops;
#[doc(hidden)]
pub mod testing;
mod tls;
mod tries;
mod views;

type Client = r2d2::PooledConnection<Manager>;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("migration_2.sql")),
    (3, include_str!("migration_3.sql")),
    (4, include_str!("migration_4.sql")),
    (5, include_str!("migration_5.sql")),
];

/// Connections one process keeps at most: the scheduler loop, the outcome writer, the web
/// server's handlers and the alert sender each hold one briefly.
const POOL_SIZE: u32 = 8;

pub struct PgStore {
    /// Always `Some` until drop, which hands it to a helper thread (closing connections
    /// blocks).
    pool: Option<r2d2::Pool<Manager>>,
    /// The URL without its password, for messages.
    location: String,
}

/// What a closure over a connection can fail with: the driver, or a value the store should
/// never hold.
pub enum Fail {
    Db(postgres::Error),
    Corrupt(String),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

type Q<T> = std::result::Result<T, Fail>;

/// Runs `f` where the driver may block. The driver drives its own runtime, which cannot
/// start inside another: on a multi-threaded runtime (the binary's) `block_in_place` steps
/// out of it for the call, which costs nothing on the thread of `block_on`; on a
/// current-thread runtime (some tests) the call takes a thread of its own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => return f(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            return tokio::task::block_in_place(f);
        }
        Ok(_) => {}
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether a driver error is worth waiting out: the server is gone, restarting, out of
/// resources or disk, or the transaction lost a race (serialization failure, deadlock, a
/// lock or statement timeout). Anything else is a defect and is reported.
fn transient(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || matches!(c, "40001" | "40P01" | "55P03" | "57014" | "58030")
        }
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

fn parse<T: FromStr<Err = String>>(s: String) -> Q<T> {
    s.parse().map_err(Fail::Corrupt)
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(crate) const RUN_COLS: &str = "id, run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, start_time, end_time, status, rows_loaded, \"trigger\", version";
pub(crate) const TI_COLS: &str = "id, run, pipeline, task_id, state, try_number, max_tries, next_try_at, pool, owner, host, pid, pid_start, lease_until, waiting_since, pokes, interruptions";
pub(crate) const TRY_COLS: &str = "ti, run, task_id, try_number, state, start_time, end_time, duration_ms, exit_code, signal, pid, host, log_path, error, metrics, rows_loaded, warning";

pub(crate) fn run_row(r: &Row) -> Q<RunRow> {
    let ds: String = r.try_get(3)?;
    Ok(RunRow {
        pk: r.try_get(0)?,
        run_id: r.try_get(1)?,
        pipeline: r.try_get(2)?,
        ds: ds
            .parse()
            .map_err(|e: jiff::Error| Fail::Corrupt(format!("logical_date `{ds}`: {e}")))?,
        data_interval_start: r.try_get(4)?,
        data_interval_end: r.try_get(5)?,
        queued_at: r.try_get(6)?,
        start_time: r.try_get(7)?,
        end_time: r.try_get(8)?,
        status: parse(r.try_get(9)?)?,
        rows_loaded: r.try_get(10)?,
        trigger: parse(r.try_get(11)?)?,
        version: r.try_get(12)?,
    })
}

pub(crate) fn ti_row(r: &Row) -> Q<TiRow> {
    ti_row_at(r, 0)
}

/// A task instance whose [`TI_COLS`] start at column `at`.
pub(crate) fn ti_row_at(r: &Row, at: usize) -> Q<TiRow> {
    Ok(TiRow {
        pk: r.try_get(at)?,
        run_pk: r.try_get(at + 1)?,
        pipeline: r.try_get(at + 2)?,
        task_id: r.try_get(at + 3)?,
        state: parse(r.try_get(at + 4)?)?,
        try_number: u32_of(r.try_get(at + 5)?),
        max_tries: u32_of(r.try_get(at + 6)?),
        next_try_at: r.try_get(at + 7)?,
        pool: r.try_get(at + 8)?,
        owner: r.try_get(at + 9)?,
        host: r.try_get(at + 10)?,
        pid: r.try_get(at + 11)?,
        pid_start: r.try_get(at + 12)?,
        lease_until: r.try_get(at + 13)?,
        waiting_since: r.try_get(at + 14)?,
        pokes: u32_of(r.try_get(at + 15)?),
        interruptions: u32_of(r.try_get(at + 16)?),
    })
}

pub(crate) fn try_row(r: &Row) -> Q<TryRow> {
    Ok(TryRow {
        ti_pk: r.try_get(0)?,
        run_pk: r.try_get(1)?,
        task_id: r.try_get(2)?,
        try_number: u32_of(r.try_get(3)?),
        state: parse(r.try_get(4)?)?,
        start_time: r.try_get(5)?,
        end_time: r.try_get(6)?,
        duration_ms: r.try_get(7)?,
        exit_code: r.try_get(8)?,
        signal: r.try_get(9)?,
        pid: r.try_get(10)?,
        host: r.try_get(11)?,
        log_path: r.try_get(12)?,
        error: r.try_get(13)?,
        metrics: r.try_get(14)?,
        rows_loaded: r.try_get(15)?,
        warning: r.try_get(16)?,
    })
}

pub(crate) fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Q<T>) -> Q<Vec<T>> {
    rows.iter().map(f).collect()
}

pub(crate) fn event(
    tx: &mut Tx<'_>,
    at: i64,
    run: i64,
    task: Option<&str>,
    try_number: Option<u32>,
    state: &str,
    detail: Option<&str>,
) -> Q<()> {
    tx.execute(
        "INSERT INTO task_events (at, run, task_id, try_number, state, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&at, &run, &task, &try_number.map(i64::from), &state, &detail],
    )?;
    Ok(())
}

/// Serialises, until the transaction ends, every transaction that takes the same named
/// locks. Names are sorted first, so two transactions never wait on each other in a cycle.
pub(crate) fn lock_names(tx: &mut Tx<'_>, names: BTreeSet<String>) -> Q<()> {
    for name in names {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&name],
        )?;
    }
    Ok(())
}

/// The driver's settings and TLS connector for a database at `pg`; `what` names it in
/// messages ("the PostgreSQL store", "connection `shop`").
fn connect_config(pg: &PgLocation, what: &str) -> Result<(postgres::Config, MakeRustlsConnect)> {
    let config_err = |msg: String| {
        Error::Config(format!(
            "{what} `{}`: {msg}",
            crate::location::redact_url(&pg.url)
        ))
    };
    let url = pg.url.trim();
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(config_err(
            "write the store as a URL, e.g. `postgresql://user@host:5432/db`".into(),
        ));
    }
    // sslmode and sslrootcert are read here (the driver knows only disable, prefer and
    // require, and no root file); everything else goes to the driver.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = tls::SslMode::Prefer;
    let mut rootcert = None;
    let mut rest = vec![];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = tls::SslMode::parse(v).map_err(config_err)?,
            Some(("sslrootcert", v)) => rootcert = Some(PathBuf::from(v)),
            _ => rest.push(pair),
        }
    }
    let driver_url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config =
        postgres::Config::from_str(&driver_url).map_err(|e| config_err(e.to_string()))?;
    if config.get_password().is_none() {
        let password = match &pg.password_env {
            Some(var) => Some(crate::env_var(var).ok_or_else(|| {
                config_err(format!(
                    "`password_env` names `{var}`, which is not set; export it, or remove `password_env` to use PGPASSWORD"
                ))
            })?),
            None => crate::env_var("PGPASSWORD"),
        };
        if let Some(p) = password {
            config.password(p);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name("nightshift");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A server that vanishes without closing its connections (a host lost, a network cut)
    // must fail our calls within seconds, not after the kernel's default of minutes.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.tcp_user_timeout(Duration::from_secs(20));
    config.ssl_mode(mode.driver_mode());
    let tls = tls::connector(mode, rootcert.as_deref()).map_err(config_err)?;
    Ok((config, tls))
}

/// One connection, outside any pool, to a database nightshift reads from or loads into (a
/// `postgres` connection of the project): the store's rules for the URL (`sslmode`,
/// `sslrootcert`) and the password (`password_env`, else `PGPASSWORD`). Blocks: call it
/// off any tokio runtime, as with the client it returns.
pub fn connect(pg: &PgLocation, what: &str) -> std::result::Result<postgres::Client, String> {
    let (config, tls) = connect_config(pg, what).map_err(|e| e.to_string())?;
    config.connect(tls).map_err(|e| {
        format!(
            "{what} `{}`: cannot connect: {}",
            crate::location::redact_url(&pg.url),
            driver_message(&e)
        )
    })
}

/// A driver error with its cause (the driver's own text often stops at "db error").
pub fn driver_message(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.to_string(),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// Per-connection settings: how long one statement waits for a row lock, and for itself.
#[derive(Debug)]
struct Session {
    busy: Duration,
}

impl r2d2::CustomizeConnection<Conn, postgres::Error> for Session {
    fn on_acquire(&self, c: &mut Conn) -> std::result::Result<(), postgres::Error> {
        let lock_ms = self.busy.as_millis().max(1);
        let statement_ms = lock_ms + 30_000;
        c.batch_execute(&format!(
            "SET lock_timeout = {lock_ms}; SET statement_timeout = {statement_ms}; SET idle_in_transaction_session_timeout = {statement_ms}"
        ))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            off_runtime(move || drop(pool));
        }
    }
}

impl PgStore {
    /// Connects to the database at `pg`, and brings its schema up to date (or refuses a
    /// newer one). One statement waits up to `busy` for another transaction's lock.
    pub fn open(pg: &PgLocation, busy: Duration) -> Result<PgStore> {
        let location = crate::location::redact_url(&pg.url);
        let (config, tls) = connect_config(pg, "the PostgreSQL store")?;
        let manager = Manager(PostgresConnectionManager::new(config, tls));
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            // While the server is away a call fails after this long instead of hanging; the
            // caller retries transient failures with backoff.
            .connection_timeout(busy.clamp(Duration::from_millis(500), Duration::from_secs(3)))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connection_customizer(Box::new(Session { busy }))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let store = PgStore {
            pool: Some(pool),
            location,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn err(&self, e: Fail) -> Error {
        match e {
            Fail::Db(source) => Error::Backend {
                location: self.location.clone(),
                transient: transient(&source),
                source: Box::new(source),
            },
            Fail::Corrupt(msg) => Error::Corrupt(msg),
        }
    }

    fn client(&self) -> Result<Client> {
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| Error::Corrupt("store closed".into()))?;
        pool.get().map_err(|source| Error::Backend {
            location: self.location.clone(),
            transient: true,
            source: Box::new(source),
        })
    }

    /// One transaction; rolled back when `f` fails.
    pub(crate) fn write<T: Send>(&self, f: impl FnOnce(&mut Tx<'_>) -> Q<T> + Send) -> Result<T> {
        off_runtime(|| {
            let mut c = self.client()?;
            let mut tx = c.begin().map_err(|e| self.err(e.into()))?;
            let out = f(&mut tx).map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e.into()))?;
            Ok(out)
        })
    }

    /// Reads outside an explicit transaction (each statement sees committed data).
    pub(crate) fn read<T: Send>(&self, f: impl FnOnce(&mut Conn) -> Q<T> + Send) -> Result<T> {
        off_runtime(|| {
            let mut c = self.client()?;
            f(&mut c).map_err(|e| self.err(e))
        })
    }

    fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let found = self.write(|tx| {
            // One migrator at a time, whichever host starts first; the others wait here and
            // then find nothing left to do.
            tx.batch_execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('nightshift:migrate', 0));
                 CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )?;
            let current: i64 = tx
                .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations", &[])?
                .try_get(0)?;
            if current > known {
                return Ok(current);
            }
            for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                    &[v],
                )?;
            }
            Ok(current)
        })?;
        if found > known {
            return Err(Error::NewerSchema {
                location: self.location.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// The database server's clock: what every host's leases are measured against.
    pub fn now_us(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.query_one(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT",
                &[],
            )?
            .try_get(0)?)
        })
    }

    /// Runs a closure inside one transaction; used by benchmarks and tests to seed history
    /// quickly.
    pub fn bulk<T: Send>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<T, postgres::Error> + Send,
    ) -> Result<T> {
        self.write(|tx| f(tx).map_err(Fail::Db))
    }

    pub fn put_version(&self, pipeline: &str, source: &str, now: i64) -> Result<String> {
        let hash = crate::version_hash(pipeline, source);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pipeline_versions (hash, pipeline, source, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&hash, &pipeline, &source, &now],
            )?;
            Ok(())
        })?;
        Ok(hash)
    }

    pub fn version_source(&self, hash: &str) -> Result<Option<(String, String)>> {
        self.read(|c| {
            let row = c.query_opt(
                "SELECT pipeline, source FROM pipeline_versions WHERE hash = $1",
                &[&hash],
            )?;
            Ok(match row {
                Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                None => None,
            })
        })
    }

    /// Inserts one run and its task instances; `None` when the interval or run id is taken.
    fn insert_run(tx: &mut Tx<'_>, run: &NewRun<'_>, tasks: &[NewTask<'_>]) -> Q<Option<i64>> {
        let row = tx.query_opt(
            "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, status, \"trigger\", version)
             VALUES ($1, $2, $3, $4, $5, $6, 'QUEUED', $7, $8) ON CONFLICT DO NOTHING RETURNING id",
            &[&run.run_id, &run.pipeline, &run.ds.to_string(), &run.data_interval_start, &run.data_interval_end, &run.now, &run.trigger.as_str(), &run.version],
        )?;
        let Some(row) = row else { return Ok(None) };
        let pk: i64 = row.try_get(0)?;
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id).collect();
        let max: Vec<i64> = tasks.iter().map(|t| i64::from(t.max_tries)).collect();
        let pools: Vec<Option<&str>> = tasks.iter().map(|t| t.pool).collect();
        tx.execute(
            "INSERT INTO task_instances (run, pipeline, task_id, state, max_tries, pool, updated_at)
             SELECT $1, $2, t.task_id, 'PENDING', t.max_tries, t.pool, $6
             FROM UNNEST($3::TEXT[], $4::BIGINT[], $5::TEXT[]) AS t(task_id, max_tries, pool)",
            &[&pk, &run.pipeline, &ids, &max, &pools, &run.now],
        )?;
        event(
            tx,
            run.now,
            pk,
            None,
            None,
            "QUEUED",
            Some(run.trigger.as_str()),
        )?;
        Ok(Some(pk))
    }

    pub fn create_run(&self, run: &NewRun<'_>, tasks: &[NewTask<'_>]) -> Result<Created> {
        self.write(|tx| {
            if let Some(pk) = Self::insert_run(tx, run, tasks)? {
                listen::notify(tx)?;
                return Ok(Created::New(pk));
            }
            let pk: i64 = tx
                .query_one(
                    "SELECT id FROM pipeline_runs WHERE pipeline = $1 AND (data_interval_start = $2 OR run_id = $3) ORDER BY id LIMIT 1",
                    &[&run.pipeline, &run.data_interval_start, &run.run_id],
                )?
                .try_get(0)?;
            Ok(Created::Existing(pk))
        })
    }

    pub fn create_runs(&self, runs: &[NewRun<'_>], tasks: &[NewTask<'_>]) -> Result<Vec<i64>> {
        self.write(|tx| {
            let mut created = vec![];
            for run in runs {
                if let Some(pk) = Self::insert_run(tx, run, tasks)? {
                    created.push(pk);
                }
            }
            if !created.is_empty() {
                listen::notify(tx)?;
            }
            Ok(created)
        })
    }

    pub fn requeue_idle_runs(&self, pks: &[i64], now: i64) -> Result<usize> {
        self.write(|tx| {
            let requeued = tx.query(
                "UPDATE pipeline_runs SET status = 'QUEUED', start_time = NULL WHERE id = ANY($1) AND status = 'RUNNING'
                   AND NOT EXISTS (SELECT 1 FROM task_instances WHERE run = pipeline_runs.id AND state = 'RUNNING')
                 RETURNING id",
                &[&pks],
            )?;
            for r in &requeued {
                event(tx, now, r.try_get(0)?, None, None, "QUEUED", Some("interrupted: the scheduler shut down"))?;
            }
            if !requeued.is_empty() {
                listen::notify(tx)?;
            }
            Ok(requeued.len())
        })
    }

    fn one_run(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<RunRow>> {
        self.read(|c| c.query_opt(sql, params)?.as_ref().map(run_row).transpose())
    }

    fn many_runs(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RunRow>> {
        self.read(|c| rows(c.query(sql, params)?, run_row))
    }

    pub fn run(&self, pk: i64) -> Result<Option<RunRow>> {
        self.one_run(
            &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE id = $1"),
            &[&pk],
        )
    }

    pub fn find_run(&self, pipeline: &str, run_id: &str) -> Result<Option<RunRow>> {
        self.one_run(
            &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND run_id = $2"),
            &[&pipeline, &run_id],
        )
    }

    pub fn find_run_by_interval(&self, pipeline: &str, start: i64) -> Result<Option<RunRow>> {
        self.one_run(
            &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND data_interval_start = $2"),
            &[&pipeline, &start],
        )
    }

    pub fn runs_with_id(&self, run_id: &str) -> Result<Vec<RunRow>> {
        self.many_runs(
            &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE run_id = $1 ORDER BY pipeline"),
            &[&run_id],
        )
    }

    pub fn runs(&self, pipeline: &str, limit: u32) -> Result<Vec<RunRow>> {
        self.many_runs(
            &format!(
                "SELECT * FROM (SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 ORDER BY data_interval_start DESC LIMIT $2) AS newest ORDER BY data_interval_start"
            ),
            &[&pipeline, &i64::from(limit)],
        )
    }

    pub fn active_runs(&self) -> Result<Vec<RunRow>> {
        self.many_runs(
            &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') ORDER BY data_interval_start, id"),
            &[],
        )
    }

    pub fn working_runs(&self, queued: u32) -> Result<Vec<RunRow>> {
        self.many_runs(
            &format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') AND status = 'RUNNING'
                 UNION ALL
                 SELECT {RUN_COLS} FROM (
                     SELECT *, ROW_NUMBER() OVER (PARTITION BY pipeline, (\"trigger\" = 'backfill') ORDER BY data_interval_start, id) AS n
                     FROM pipeline_runs WHERE status IN ('QUEUED', 'RUNNING') AND status = 'QUEUED') AS queued
                 WHERE n <= $1
                 ORDER BY data_interval_start, id"
            ),
            &[&i64::from(queued)],
        )
    }

    pub fn latest_interval_start(
        &self,
        pipeline: &str,
        trigger: Option<Trigger>,
    ) -> Result<Option<i64>> {
        let trigger = trigger.map(|t| t.as_str());
        self.read(|c| {
            Ok(c.query_one(
                "SELECT MAX(data_interval_start) FROM pipeline_runs WHERE pipeline = $1 AND ($2::TEXT IS NULL OR \"trigger\" = $2)",
                &[&pipeline, &trigger],
            )?
            .try_get(0)?)
        })
    }

    pub fn activate_run(&self, pk: i64, now: i64, max_active: u32) -> Result<bool> {
        self.write(|tx| {
            let Some(row) = tx.query_opt("SELECT pipeline FROM pipeline_runs WHERE id = $1", &[&pk])? else {
                return Ok(false);
            };
            let pipeline: String = row.try_get(0)?;
            // The count below must see every other activation of this pipeline.
            lock_names(tx, BTreeSet::from([format!("runs:{pipeline}")]))?;
            let n = tx.execute(
                "UPDATE pipeline_runs SET status = 'RUNNING', start_time = $2
                 WHERE id = $1 AND status = 'QUEUED'
                   AND (SELECT COUNT(*) FROM pipeline_runs o
                        WHERE o.pipeline = pipeline_runs.pipeline AND o.status = 'RUNNING'
                          AND (o.\"trigger\" = 'backfill') = (pipeline_runs.\"trigger\" = 'backfill')) < $3",
                &[&pk, &now, &i64::from(max_active)],
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
        self.read(|c| {
            Ok(c.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .try_get(0)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestCluster;
    use crate::{Location, PgLocation, Store};

    fn open(url: String) -> crate::Result<Store> {
        Store::open(&Location::Postgres(PgLocation {
            url,
            password_env: None,
        }))
    }

    fn encrypted(s: &Store) -> bool {
        s.postgres()
            .unwrap()
            .bulk(|tx| {
                tx.query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .map(|r| r.get::<_, bool>(0))
            })
            .unwrap()
    }

    #[test]
    fn sslmode_is_honoured_against_a_real_tls_server() {
        let pg = TestCluster::start().unwrap();
        pg.database("tls").unwrap();
        let ca = pg.enable_tls().unwrap();
        let base = format!("postgresql://nightshift@localhost:{}/tls", pg.port());
        assert!(!encrypted(
            &open(format!("{base}?sslmode=disable")).unwrap()
        ));
        assert!(encrypted(&open(format!("{base}?sslmode=require")).unwrap()));
        assert!(
            encrypted(&open(base.clone()).unwrap()),
            "prefer is the default"
        );
        let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
        assert!(encrypted(&open(verified).unwrap()));
        // The public roots do not know this self-signed certificate.
        let untrusted = open(format!("{base}?sslmode=verify-full"))
            .err()
            .expect("refused");
        assert!(
            untrusted
                .to_string()
                .to_lowercase()
                .contains("tls handshake"),
            "{untrusted}"
        );
        // verify-ca checks the chain but not the name; verify-full checks both.
        let by_ip = format!("postgresql://nightshift@127.0.0.1:{}/tls", pg.port());
        assert!(
            open(format!(
                "{by_ip}?sslmode=verify-ca&sslrootcert={}",
                ca.display()
            ))
            .is_ok()
        );
        assert!(
            open(format!(
                "{by_ip}?sslmode=verify-full&sslrootcert={}",
                ca.display()
            ))
            .is_ok(),
            "the certificate names 127.0.0.1 too"
        );
        let bad = open(format!("{base}?sslmode=sometimes"))
            .err()
            .expect("refused");
        assert!(
            bad.to_string().contains("unknown sslmode `sometimes`"),
            "{bad}"
        );
    }
}
