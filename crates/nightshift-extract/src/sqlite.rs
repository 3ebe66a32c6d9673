//! Reading a query from SQLite into Arrow batches, with the interval bound as parameters.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Statement};

use crate::{BATCH, Error, LINEAGE, Params, PartitionWriter, lineage_arrays};

pub(crate) fn open(path: &str) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Source {
        path: path.to_owned(),
        source: e,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| Error::Source {
            path: path.to_owned(),
            source: e,
        })?;
    Ok(conn)
}

/// Binds `:start`, `:end`, `:ds`, `:run_id` by name; never by splicing text.
fn bind(stmt: &mut Statement<'_>, p: &Params<'_>) -> Result<(), String> {
    for i in 1..=stmt.parameter_count() {
        let value = match stmt.parameter_name(i) {
            Some(":start") => p.keys.start_text(),
            Some(":end") => p.keys.end_text(),
            Some(":ds") => p.keys.ds_text(),
            Some(":run_id") => p.keys.run_id.clone(),
            other => {
                return Err(format!(
                    "unknown query parameter `{}`; use :start, :end, :ds or :run_id",
                    other.unwrap_or("?")
                ));
            }
        };
        stmt.raw_bind_parameter(i, value)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether a condition query holds: its first column of its first row is neither NULL, 0
/// nor empty (a sensor's poke). Same read-only connection and bound parameters as extracts.
/// Runs statements in one write transaction, each with the run's keys bound; returns the
/// rows each changed. Nothing is committed unless every statement succeeded.
pub(crate) fn execute(
    path: &str,
    statements: &[String],
    p: &Params<'_>,
) -> Result<Vec<usize>, String> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening `{path}`: {e}"))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| format!("starting a transaction on `{path}`: {e}"))?;
    let mut changed = vec![];
    for (i, sql) in statements.iter().enumerate() {
        let mut stmt = tx
            .prepare(sql)
            .map_err(|e| format!("statement {} `{sql}`: {e}", i + 1))?;
        bind(&mut stmt, p)?;
        let n = stmt
            .raw_execute()
            .map_err(|e| format!("statement {} `{sql}`: {e}", i + 1))?;
        changed.push(n);
    }
    tx.commit()
        .map_err(|e| format!("committing on `{path}`: {e}"))?;
    Ok(changed)
}

pub(crate) fn holds(conn: &Connection, sql: &str, p: &Params<'_>) -> Result<bool, String> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| format!("preparing `{sql}`: {e}"))?;
    bind(&mut stmt, p)?;
    let mut rows = stmt.raw_query();
    let Some(row) = rows.next().map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    Ok(match row.get_ref(0).map_err(|e| e.to_string())? {
        ValueRef::Null => false,
        ValueRef::Integer(n) => n != 0,
        ValueRef::Real(f) => f != 0.0,
        ValueRef::Text(t) => !t.is_empty(),
        ValueRef::Blob(b) => !b.is_empty(),
    })
}

pub(crate) fn count(conn: &Connection, sql: &str, p: &Params<'_>) -> Result<i64, String> {
    let sql = format!(
        "SELECT COUNT(*) FROM ({})",
        sql.trim().trim_end_matches(';')
    );
    let mut stmt = conn.prepare(&sql).map_err(|e| e.to_string())?;
    bind(&mut stmt, p)?;
    let mut rows = stmt.raw_query();
    let row = rows
        .next()
        .map_err(|e| e.to_string())?
        .ok_or("the count query returned nothing")?;
    row.get(0).map_err(|e| e.to_string())
}

fn type_of(decl: Option<&str>, sample: Option<&Value>) -> DataType {
    if let Some(d) = decl {
        let d = d.to_ascii_uppercase();
        if d.contains("INT") {
            return DataType::Int64;
        }
        if d.contains("REAL")
            || d.contains("FLOA")
            || d.contains("DOUB")
            || d.contains("NUMERIC")
            || d.contains("DECIMAL")
        {
            return DataType::Float64;
        }
        if d.contains("BLOB") {
            return DataType::Binary;
        }
        return DataType::Utf8;
    }
    match sample {
        Some(Value::Integer(_)) => DataType::Int64,
        Some(Value::Real(_)) => DataType::Float64,
        Some(Value::Blob(_)) => DataType::Binary,
        _ => DataType::Utf8,
    }
}

fn column(name: &str, ty: &DataType, values: &[&Value], row0: i64) -> Result<ArrayRef, String> {
    let bad = |i: usize, v: &Value, want: &str| {
        format!(
            "column `{name}`, row {}: {v:?} is not {want} (the first rows decided the column's type)",
            row0 + i as i64 + 1
        )
    };
    Ok(match ty {
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Integer(n) => b.append_value(*n),
                    Value::Real(f) if f.fract() == 0.0 => b.append_value(*f as i64),
                    Value::Text(t) => {
                        b.append_value(t.trim().parse().map_err(|_| bad(i, v, "an integer"))?)
                    }
                    _ => return Err(bad(i, v, "an integer")),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Integer(n) => b.append_value(*n as f64),
                    Value::Real(f) => b.append_value(*f),
                    Value::Text(t) => {
                        b.append_value(t.trim().parse().map_err(|_| bad(i, v, "a number"))?)
                    }
                    _ => return Err(bad(i, v, "a number")),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::Blob(x) => b.append_value(x),
                    Value::Text(t) => b.append_value(t.as_bytes()),
                    Value::Integer(n) => b.append_value(n.to_string().as_bytes()),
                    Value::Real(f) => b.append_value(f.to_string().as_bytes()),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::Text(t) => b.append_value(t),
                    Value::Integer(n) => b.append_value(n.to_string()),
                    Value::Real(f) => b.append_value(f.to_string()),
                    Value::Blob(x) => b.append_value(String::from_utf8_lossy(x)),
                }
            }
            Arc::new(b.finish())
        }
    })
}

/// Streams the query's rows into the partition in batches; returns the row count.
pub(crate) fn read_into(
    conn: &Connection,
    sql: &str,
    p: &Params<'_>,
    out: &mut PartitionWriter,
) -> Result<i64, String> {
    let mut stmt = conn
        .prepare(sql.trim().trim_end_matches(';'))
        .map_err(|e| e.to_string())?;
    bind(&mut stmt, p)?;
    let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let decls: Vec<Option<String>> = stmt
        .columns()
        .map(|c| c.decl_type().map(str::to_owned))
        .collect();
    let ncol = names.len();
    let mut schema: Option<Arc<Schema>> = None;
    let mut buf: Vec<Vec<Value>> = vec![Vec::with_capacity(BATCH); ncol];
    let mut total: i64 = 0;
    let mut rows = stmt.raw_query();
    let mut flush = |buf: &mut Vec<Vec<Value>>,
                     schema: &mut Option<Arc<Schema>>,
                     total: i64|
     -> Result<(), String> {
        let s = schema
            .get_or_insert_with(|| {
                Arc::new(Schema::new(
                    (0..ncol)
                        .map(|c| {
                            let sample = buf[c].iter().find(|v| !matches!(v, Value::Null));
                            Field::new(&names[c], type_of(decls[c].as_deref(), sample), true)
                        })
                        .chain(
                            LINEAGE
                                .iter()
                                .filter(|l| p.lineage && !names.iter().any(|n| n == *l))
                                .map(|l| Field::new(*l, DataType::Utf8, false)),
                        )
                        .collect::<Vec<_>>(),
                ))
            })
            .clone();
        let n = buf.first().map(Vec::len).unwrap_or(0) as i64;
        let mut arrays = (0..ncol)
            .map(|c| {
                column(
                    &names[c],
                    s.field(c).data_type(),
                    &buf[c].iter().collect::<Vec<_>>(),
                    total - n,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        arrays.extend(lineage_arrays(&names, p, n as usize));
        let batch = RecordBatch::try_new(s, arrays).map_err(|e| e.to_string())?;
        out.write(&batch).map_err(|e| e.to_string())?;
        for b in buf.iter_mut() {
            b.clear();
        }
        Ok(())
    };
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        for (c, col) in buf.iter_mut().enumerate() {
            col.push(row.get::<_, Value>(c).map_err(|e| e.to_string())?);
        }
        total += 1;
        if buf[0].len() >= BATCH {
            flush(&mut buf, &mut schema, total)?;
        }
    }
    // Always write the last (possibly empty) batch, so the file carries the schema.
    if ncol > 0 && (!buf[0].is_empty() || schema.is_none()) {
        flush(&mut buf, &mut schema, total)?;
    }
    Ok(total)
}
