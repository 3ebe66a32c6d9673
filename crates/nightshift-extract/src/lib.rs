//! Extract: source tables to date-partitioned Parquet, `<output>/<table>/dt=<ds>/`.
//!
//! # Layout
//! - [`run`]: one extract try (what `nightshift __extract REQUEST` executes).
//! - [`execute`]: one `sql` try (`nightshift __sql REQUEST`): statements in one transaction.
//! - `sqlite`: reading a query into Arrow batches with the interval bound as parameters.
//! - [`publish`]: write-audit-publish of tested dbt outputs into `published/`.
//! - `partition`: writing a partition aside and swapping it in atomically.
//!
//! A partition is written into a hidden folder next to its final place, fsynced, then
//! exchanged with the old one in one `renameat2(RENAME_EXCHANGE)`: readers see the old
//! partition or the new one, never a part; a retry or rerun replaces, never appends. All
//! tables are read in one read transaction (one snapshot) and checked before any partition
//! is swapped in.

#[cfg(feature = "postgres")]
mod load;
mod partition;
#[cfg(feature = "postgres")]
mod postgres;
mod publish;
mod sqlite;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use nightshift_core::clock::Clock;
use nightshift_core::kinds::{ExtractRequest, OnIncomplete};
use nightshift_core::project::Connection;

#[cfg(feature = "postgres")]
pub use load::{Loaded, load};
pub use partition::{PartitionWriter, swap_in};
pub use publish::publish;

/// Rows per Arrow batch: a source is read and written this many rows at a time.
const BATCH: usize = 65_536;

/// What a query's keys and the lineage columns are filled from.
pub(crate) struct Params<'a> {
    pub keys: &'a nightshift_core::RunKeys,
    /// Stamped into every row with `run_id`, for lineage and source freshness checks.
    pub extracted_at: &'a str,
    /// Whether rows get the lineage columns (an extract's do; a publish's are the model's).
    pub lineage: bool,
}

/// Columns added to every extracted row: which run loaded it, and when.
pub(crate) const LINEAGE: [&str; 2] = ["_run_id", "_extracted_at"];

/// The lineage columns of a batch of `n` rows, for those the query does not select itself.
pub(crate) fn lineage_arrays(
    names: &[String],
    p: &Params<'_>,
    n: usize,
) -> Vec<arrow_array::ArrayRef> {
    LINEAGE
        .iter()
        .zip([p.keys.run_id.as_str(), p.extracted_at])
        .filter(|(name, _)| p.lineage && !names.iter().any(|c| c == *name))
        .map(|(_, value)| {
            std::sync::Arc::new(arrow_array::StringArray::from(vec![value; n]))
                as arrow_array::ArrayRef
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("source `{path}`: {source}")]
    Source {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("writing `{path}`: {message}")]
    Write { path: PathBuf, message: String },
    #[error(
        "table `{table}`: loaded {loaded} rows but the source counts {expected} for the interval"
    )]
    CountMismatch {
        table: String,
        loaded: i64,
        expected: i64,
    },
    #[error("{0}")]
    Incomplete(String),
    #[error("sensor condition: {0}")]
    Condition(String),
    #[error("{0}")]
    Statement(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableResult {
    pub table: String,
    pub rows: i64,
    pub bytes: u64,
    pub partition: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub tables: Vec<TableResult>,
    pub warnings: Vec<String>,
}

impl Summary {
    pub fn rows_loaded(&self) -> i64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Figures for the metrics file: `rows_loaded`, and per table `rows.<table>`, `bytes.<table>`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        m.insert("rows_loaded".to_owned(), self.rows_loaded() as f64);
        for t in &self.tables {
            m.insert(format!("rows.{}", t.table), t.rows as f64);
            m.insert(format!("bytes.{}", t.table), t.bytes as f64);
        }
        m
    }
}

/// Checks a table's row count against the trailing average of earlier runs.
fn completeness(table: &str, rows: i64, history: &[i64], min_ratio: Option<f64>) -> Option<String> {
    let ratio = min_ratio?;
    if rows == 0 {
        return Some(format!(
            "table `{table}`: no rows for this interval (is the source loaded?)"
        ));
    }
    if history.is_empty() {
        return None;
    }
    let avg = history.iter().sum::<i64>() as f64 / history.len() as f64;
    ((rows as f64) < ratio * avg).then(|| {
        format!(
            "table `{table}`: {rows} rows is below {:.0}% of the trailing {}-run average ({avg:.0})",
            ratio * 100.0,
            history.len()
        )
    })
}

/// A sensor's SQL condition on its connection, for the run's interval.
pub fn condition_holds(
    req: &nightshift_core::kinds::SensorRequest,
    sql: &str,
) -> Result<bool, Error> {
    let params = Params {
        keys: &req.keys,
        extracted_at: "",
        lineage: false,
    };
    let table = |message: String| Error::Table {
        table: "(sensor)".to_owned(),
        message,
    };
    match &req.connection {
        Some(Connection::Sqlite { path }) => {
            if !Path::new(path).exists() {
                return Err(Error::Condition(format!(
                    "the source database `{path}` does not exist"
                )));
            }
            let conn = sqlite::open(path)?;
            sqlite::holds(&conn, sql, &params).map_err(table)
        }
        #[cfg(feature = "postgres")]
        Some(pg @ Connection::Postgres { .. }) => on_postgres(pg, &params, |tx| {
            postgres_source::holds(tx, sql).map_err(table)
        }),
        #[cfg(not(feature = "postgres"))]
        Some(Connection::Postgres { .. }) => Err(without_postgres()),
        None => Err(Error::Condition("the sensor has no connection".to_owned())),
    }
}

/// Runs a `sql` try: its statements in one transaction on its connection, with the run's
/// keys bound. Writes `rows_affected` to `metrics`; returns the rows each statement changed.
pub fn execute(
    req: &nightshift_core::kinds::SqlRequest,
    metrics: Option<&Path>,
) -> Result<Vec<usize>, Error> {
    let Connection::Sqlite { path } = &req.connection else {
        return Err(Error::Statement(
            "the `sql` kind runs on SQLite connections only, for now".to_owned(),
        ));
    };
    if !Path::new(path).exists() {
        return Err(Error::Statement(format!(
            "the database `{path}` does not exist"
        )));
    }
    let params = Params {
        keys: &req.keys,
        extracted_at: "",
        lineage: false,
    };
    let changed = sqlite::execute(path, &req.spec.statements, &params).map_err(Error::Statement)?;
    if let Some(m) = metrics {
        let total: usize = changed.iter().sum();
        append_metrics(
            m,
            &BTreeMap::from([("rows_affected".to_owned(), total as f64)]),
        )?;
    }
    Ok(changed)
}

/// Appends one line of figures to the try's metrics file (`NIGHTSHIFT_METRICS`).
fn append_metrics(path: &Path, figures: &BTreeMap<String, f64>) -> Result<(), Error> {
    let line = serde_json::to_string(figures).unwrap_or_default();
    let werr = |e: std::io::Error| Error::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(werr)?;
    writeln!(f, "{line}").map_err(werr)
}

/// Where an extract reads its tables: one snapshot of one source.
trait Source {
    /// The rows the query selects for the interval, counted apart from the read to check
    /// it; `None` where the read itself is the count (a single snapshot's `COPY`).
    fn count(&mut self, sql: &str, p: &Params<'_>) -> Result<Option<i64>, String>;
    /// Streams the query's rows into the partition; returns how many.
    fn read_into(
        &mut self,
        sql: &str,
        p: &Params<'_>,
        out: &mut PartitionWriter,
    ) -> Result<i64, String>;
}

impl Source for rusqlite::Transaction<'_> {
    fn count(&mut self, sql: &str, p: &Params<'_>) -> Result<Option<i64>, String> {
        sqlite::count(self, sql, p).map(Some)
    }

    fn read_into(
        &mut self,
        sql: &str,
        p: &Params<'_>,
        out: &mut PartitionWriter,
    ) -> Result<i64, String> {
        sqlite::read_into(self, sql, p, out)
    }
}

#[cfg(feature = "postgres")]
use postgres as postgres_source;

#[cfg(feature = "postgres")]
impl Source for ::postgres::Transaction<'_> {
    /// The `COPY` reads the query's rows in one `REPEATABLE READ` snapshot: a separate
    /// count would read the table twice to learn the same number.
    fn count(&mut self, _: &str, _: &Params<'_>) -> Result<Option<i64>, String> {
        Ok(None)
    }

    fn read_into(
        &mut self,
        sql: &str,
        p: &Params<'_>,
        out: &mut PartitionWriter,
    ) -> Result<i64, String> {
        postgres_source::read_into(self, sql, p, out)
    }
}

/// The crate's one reader of the environment: a connection's URL named by `url_env`.
#[cfg(feature = "postgres")]
#[allow(clippy::disallowed_methods)]
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs `f` in one read-only snapshot of a PostgreSQL connection with the run's keys set.
#[cfg(feature = "postgres")]
fn on_postgres<T: Send>(
    connection: &Connection,
    p: &Params<'_>,
    f: impl FnOnce(&mut ::postgres::Transaction<'_>) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    with_postgres(connection, |client| {
        let mut tx = postgres_source::begin(client, p).map_err(|message| Error::Table {
            table: "(connection)".to_owned(),
            message,
        })?;
        let out = f(&mut tx)?;
        drop(tx);
        Ok(out)
    })
}

/// Runs `f` on a new connection to a PostgreSQL database. On a thread of its own: the
/// driver blocks on a runtime of its own, which cannot run inside the command's.
#[cfg(feature = "postgres")]
fn with_postgres<T: Send>(
    connection: &Connection,
    f: impl FnOnce(&mut ::postgres::Client) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let Connection::Postgres {
        url,
        url_env,
        password_env,
    } = connection
    else {
        return Err(Error::Statement("not a PostgreSQL connection".to_owned()));
    };
    let source = |message: String| Error::Table {
        table: "(connection)".to_owned(),
        message,
    };
    let url = match (url, url_env) {
        (Some(u), _) => u.clone(),
        (None, Some(var)) => env_var(var).ok_or_else(|| {
            source(format!(
                "`url_env` names `{var}`, which is not set; export it with the database's URL"
            ))
        })?,
        (None, None) => return Err(source("the connection has no URL".to_owned())),
    };
    let location = nightshift_store::PgLocation {
        url,
        password_env: password_env.clone(),
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client =
                nightshift_store::postgres::connect(&location, "the connection").map_err(source)?;
            f(&mut client)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(source(
                "the PostgreSQL reader stopped unexpectedly".to_owned(),
            ))
        })
    })
}

#[cfg(not(feature = "postgres"))]
fn without_postgres() -> Error {
    Error::Statement("this nightshift was built without PostgreSQL connections".to_owned())
}

/// Runs one extract: reads every table for the interval, checks counts, swaps the
/// partitions in, and writes the figures to `metrics` (the `NIGHTSHIFT_METRICS` file).
pub fn run(
    req: &ExtractRequest,
    clock: &dyn Clock,
    metrics: Option<&Path>,
    log: &mut dyn Write,
) -> Result<Summary, Error> {
    // `_extracted_at` is when the rows were loaded, which dbt's source freshness compares
    // with the warehouse's clock: the caller passes the real one.
    let extracted_at = clock.now().to_string();
    let params = Params {
        keys: &req.keys,
        extracted_at: &extracted_at,
        lineage: true,
    };
    let summary = match &req.connection {
        Connection::Sqlite { path } => {
            let conn = sqlite::open(path)?;
            let mut tx = conn.unchecked_transaction().map_err(|e| Error::Source {
                path: path.clone(),
                source: e,
            })?;
            extract_from(&mut tx, req, &params, log)?
        }
        #[cfg(not(feature = "postgres"))]
        Connection::Postgres { .. } => return Err(without_postgres()),
        #[cfg(feature = "postgres")]
        pg @ Connection::Postgres { .. } => {
            let mut buffered = vec![];
            let s = on_postgres(pg, &params, |tx| {
                extract_from(tx, req, &params, &mut buffered)
            })?;
            let _ = log.write_all(&buffered);
            s
        }
    };
    if let Some(m) = metrics {
        append_metrics(m, &summary.metrics())?;
    }
    Ok(summary)
}

/// Reads every table from one snapshot, checks it, then swaps all partitions in.
fn extract_from(
    source: &mut dyn Source,
    req: &ExtractRequest,
    params: &Params<'_>,
    log: &mut dyn Write,
) -> Result<Summary, Error> {
    let output = Path::new(&req.project_dir).join(&req.spec.output);
    let ds = req.keys.ds_text();
    let mut staged = vec![];
    let mut warnings = vec![];
    for table in &req.spec.tables {
        let dir = output.join(&table.name);
        let mut writer = PartitionWriter::new(&dir, &ds)?;
        let in_table = |message: String| Error::Table {
            table: table.name.clone(),
            message,
        };
        let expected = source.count(&table.sql, params).map_err(in_table)?;
        let rows = source
            .read_into(&table.sql, params, &mut writer)
            .map_err(in_table)?;
        if let Some(expected) = expected.filter(|e| *e != rows) {
            return Err(Error::CountMismatch {
                table: table.name.clone(),
                loaded: rows,
                expected,
            });
        }
        let history = req
            .history
            .get(&table.name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if let Some(problem) = completeness(&table.name, rows, history, req.spec.min_ratio) {
            match req.spec.on_incomplete {
                OnIncomplete::Fail => return Err(Error::Incomplete(problem)),
                OnIncomplete::Warn => {
                    let _ = writeln!(log, "warning: {problem}");
                    warnings.push(problem);
                }
            }
        }
        let bytes = writer.finish()?;
        let _ = writeln!(
            log,
            "{}: {rows} rows ({bytes} bytes) staged for dt={}",
            table.name, ds
        );
        staged.push((table.name.clone(), rows, bytes, writer));
    }
    let mut tables = vec![];
    for (table, rows, bytes, writer) in staged {
        let partition = swap_in(writer)?;
        let _ = writeln!(log, "{table}: {rows} rows → {}", partition.display());
        tables.push(TableResult {
            table,
            rows,
            bytes,
            partition,
        });
    }
    Ok(Summary { tables, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_core::clock::SystemClock;
    use nightshift_core::kinds::{ExtractSpec, ExtractTable};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn source(dir: &Path, n: i64) -> String {
        let path = dir.join("src.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, amount REAL, note TEXT);
             DELETE FROM t;",
        )
        .unwrap();
        for i in 0..n {
            let day = if i % 2 == 0 {
                "2024-06-01"
            } else {
                "2024-06-02"
            };
            c.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![i, format!("{day}T10:00:00Z"), i as f64 / 2.0, "x"],
            )
            .unwrap();
        }
        path.to_string_lossy().into_owned()
    }

    fn request(dir: &Path, db: &str, min_ratio: Option<f64>, history: Vec<i64>) -> ExtractRequest {
        ExtractRequest {
            spec: ExtractSpec {
                connection: "s".into(),
                tables: vec![ExtractTable {
                    name: "t".into(),
                    sql: "SELECT * FROM t WHERE ts >= :start AND ts < :end".into(),
                }],
                output: "raw".into(),
                min_ratio,
                on_incomplete: OnIncomplete::Fail,
            },
            connection: Connection::Sqlite {
                path: db.to_owned(),
            },
            project_dir: dir.to_string_lossy().into_owned(),
            keys: nightshift_core::RunKeys {
                pipeline: "nightly".into(),
                run_id: "20240602_0000".into(),
                ds: jiff::civil::date(2024, 6, 1),
                interval: nightshift_core::DataInterval {
                    start: "2024-06-01T00:00:00Z".parse().unwrap(),
                    end: "2024-06-02T00:00:00Z".parse().unwrap(),
                },
            },
            history: BTreeMap::from([("t".to_owned(), history)]),
        }
    }

    fn parquet_rows(path: &Path) -> i64 {
        let f = std::fs::File::open(path.join("part-0.parquet")).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows() as i64)
            .sum()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn extracts_the_interval_and_a_rerun_replaces_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let db = source(dir.path(), 100);
        let metrics = dir.path().join("m.jsonl");
        let s = run(
            &request(dir.path(), &db, None, vec![]),
            &SystemClock,
            Some(&metrics),
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!(s.rows_loaded(), 50, "only the interval's rows");
        let part = dir.path().join("raw/t/dt=2024-06-01");
        assert_eq!(parquet_rows(&part), 50);
        // Rerun with more source rows: the partition is replaced, not appended to.
        let db = source(dir.path(), 120);
        run(
            &request(dir.path(), &db, None, vec![]),
            &SystemClock,
            Some(&metrics),
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!(parquet_rows(&part), 60);
        assert_eq!(
            entries(&dir.path().join("raw/t")),
            ["dt=2024-06-01"],
            "no leftovers beside the partition"
        );
        let text = std::fs::read_to_string(&metrics).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains("\"rows_loaded\":50.0")
                || text.contains("\"rows_loaded\":50"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_extract_leaves_the_previous_partition_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = source(dir.path(), 100);
        run(
            &request(dir.path(), &db, None, vec![]),
            &SystemClock,
            None,
            &mut std::io::sink(),
        )
        .unwrap();
        let part = dir.path().join("raw/t/dt=2024-06-01");
        // Far fewer rows than usual: the completeness check refuses to publish them.
        let db = source(dir.path(), 10);
        let err = run(
            &request(dir.path(), &db, Some(0.5), vec![50, 52, 49]),
            &SystemClock,
            None,
            &mut std::io::sink(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("5 rows is below 50% of the trailing 3-run average (50)"),
            "{err}"
        );
        assert_eq!(
            parquet_rows(&part),
            50,
            "the old partition is still there, whole"
        );
        assert_eq!(entries(&dir.path().join("raw/t")), ["dt=2024-06-01"]);
        // Zero rows is never complete when a bound is set.
        let db = source(dir.path(), 0);
        let err = run(
            &request(dir.path(), &db, Some(0.5), vec![]),
            &SystemClock,
            None,
            &mut std::io::sink(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no rows for this interval"),
            "{err}"
        );
    }

    #[test]
    fn parameters_are_bound_not_spliced() {
        let dir = tempfile::tempdir().unwrap();
        let db = source(dir.path(), 10);
        let mut req = request(dir.path(), &db, None, vec![]);
        req.spec.tables[0].sql = "SELECT * FROM t WHERE substr(ts, 1, 10) = :run_id".into();
        req.keys.run_id = "2024-06-01".into();
        let s = run(&req, &SystemClock, None, &mut std::io::sink()).unwrap();
        assert_eq!(s.rows_loaded(), 5);
        // Spliced into the text this would select every row; bound, it is just a string.
        req.keys.run_id = "2024-06-01' OR '1'='1".into();
        let s = run(&req, &SystemClock, None, &mut std::io::sink()).unwrap();
        assert_eq!(s.rows_loaded(), 0);
    }
}
