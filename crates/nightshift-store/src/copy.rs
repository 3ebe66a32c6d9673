//! Moving a project's history from its SQLite file into an empty PostgreSQL store
//! (`nightshift store copy --to URL`): every table, ids kept, in one transaction on the
//! destination (all or nothing), streamed with binary COPY.

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use rusqlite::types::Value;

use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::{Error, Result};

/// The tables that hold history, parents first. Leases and the process list are not
/// history: they belong to the processes running now.
const TABLES: &[&str] = &[
    "pipeline_versions",
    "pipeline_runs",
    "task_instances",
    "task_tries",
    "task_events",
    "dbt_nodes",
    "alerts",
    "pipeline_flags",
    "audit_log",
];

/// Rows copied, per table.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies every row of `from` into `to`, which must hold no run yet.
pub fn sqlite_to_postgres(from: &SqliteStore, to: &PgStore) -> Result<Copied> {
    let existing = to.count("pipeline_runs")?;
    if existing > 0 {
        return Err(Error::Config(format!(
            "`{}` already holds {existing} run(s); copy into an empty database (nothing was written)",
            to.location()
        )));
    }
    to.write(|tx| {
        let mut copied = vec![];
        for table in TABLES {
            let probe = tx.prepare(&format!("SELECT * FROM {table} LIMIT 0"))?;
            let columns: Vec<(String, Type)> = probe
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_().clone()))
                .collect();
            let names: Vec<String> = columns.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            let types: Vec<Type> = columns.iter().map(|(_, t)| t.clone()).collect();
            let rows = from
                .bulk(|c| {
                    let mut s = c.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
                    let n = names.len();
                    s.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<Value>>>())?
                        .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
                })
                .map_err(|e| super::postgres::Fail::Corrupt(format!("reading `{table}` from SQLite: {e}")))?;
            let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", names.join(", ")))?;
            let mut writer = BinaryCopyInWriter::new(sink, &types);
            for row in &rows {
                let values = row
                    .iter()
                    .zip(&types)
                    .map(|(v, t)| to_pg(v, t, table))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
                writer.write(&refs)?;
            }
            writer.finish()?;
            if columns.iter().any(|(n, _)| n == "id") {
                // New rows after the copy continue after the copied ids.
                tx.execute(
                    &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST(COALESCE(MAX(id), 0), 1)) FROM {table}"),
                    &[],
                )?;
            }
            copied.push((*table, rows.len() as u64));
        }
        Ok(copied)
    })
}

/// One SQLite value as the destination column's type.
fn to_pg(
    v: &Value,
    t: &Type,
    table: &str,
) -> std::result::Result<Box<dyn ToSql + Sync>, super::postgres::Fail> {
    let wrong = || {
        super::postgres::Fail::Corrupt(format!(
            "`{table}` holds {v:?} where PostgreSQL expects {t}"
        ))
    };
    Ok(match (v, t) {
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::FLOAT8) => Box::new(None::<f64>),
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Integer(i), &Type::INT8) => Box::new(*i),
        (Value::Integer(i), &Type::BOOL) => Box::new(*i != 0),
        (Value::Integer(i), &Type::FLOAT8) => Box::new(*i as f64),
        (Value::Integer(i), &Type::TEXT) => Box::new(i.to_string()),
        (Value::Real(f), &Type::FLOAT8) => Box::new(*f),
        (Value::Text(s), &Type::TEXT) => Box::new(s.clone()),
        _ => return Err(wrong()),
    })
}
