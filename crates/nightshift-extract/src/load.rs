//! Loading the run's Parquet partitions into PostgreSQL warehouse tables: per table, the
//! rows of the run's ds are deleted and the partition is copied in with binary `COPY FROM`,
//! all tables in one transaction, so a rerun replaces exactly its ds and a failed load
//! leaves the previous rows as they were.
//!
//! A table is created on its first load from the partition's schema, with the ds in its
//! partition column; a column the source adds later is added. A column whose type changed
//! is refused with what to do, since binary `COPY` would otherwise fail obscurely.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatchReader};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use nightshift_core::kinds::LoadRequest;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use postgres::Transaction;

use crate::postgres::message;
use crate::{BATCH, Error};

/// One table's load.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub table: String,
    /// Rows of the ds the table held before, now replaced.
    pub replaced: i64,
    pub rows: i64,
}

/// 2000-01-01, PostgreSQL's epoch, in days and microseconds after 1970-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// `name` as a PostgreSQL identifier: quoted, so any Parquet column name is taken as is.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The column type a warehouse table gets for an Arrow type, or `None` when load cannot
/// write it.
fn pg_type(dt: &DataType) -> Option<String> {
    Some(match dt {
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Utf8 => "text".into(),
        DataType::Binary => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp without time zone".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "timestamp with time zone".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::List(item) => format!("{}[]", pg_type(item.data_type())?),
        _ => return None,
    })
}

/// Whether an existing column of type `existing` (as `format_type` prints it) takes the
/// binary form of `dt`: the same type, or one with the same binary form (`varchar` for
/// text, another precision for numeric).
fn compatible(existing: &str, dt: &DataType) -> bool {
    let Some(want) = pg_type(dt) else {
        return false;
    };
    let family = |t: &str| -> String {
        let (base, array) = match t.strip_suffix("[]") {
            Some(b) => (b, "[]"),
            None => (t, ""),
        };
        let base = base.split('(').next().unwrap_or(base).trim();
        let base = match base {
            "character varying" | "character" | "bpchar" | "name" => "text",
            other => other,
        };
        format!("{base}{array}")
    };
    family(existing) == family(&want)
}

/// The partition files of one table for the ds, in name order.
fn partition_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "no partition at `{}` ({e}); did the extract of this ds succeed?",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "the partition `{}` holds no Parquet file",
            dir.display()
        ));
    }
    Ok(files)
}

fn reader(file: &Path) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("`{}`: {e}", file.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.with_batch_size(BATCH).build())
        .map_err(|e| format!("`{}`: {e}", file.display()))
}

/// Loads every table of the request in one transaction; writes the figures to `metrics`.
pub fn load(
    req: &LoadRequest,
    metrics: Option<&Path>,
    log: &mut dyn Write,
) -> Result<Vec<Loaded>, Error> {
    let ds = req.keys.ds_text();
    let from = Path::new(&req.project_dir).join(&req.spec.from);
    // Everything the files say is checked before the warehouse is touched.
    let mut plans = vec![];
    for table in &req.spec.tables {
        let in_table = |message: String| Error::Table {
            table: table.clone(),
            message,
        };
        let files =
            partition_files(&from.join(table).join(format!("dt={ds}"))).map_err(in_table)?;
        let schema = reader(&files[0]).map_err(in_table)?.schema();
        for f in &schema.fields()[..] {
            if pg_type(f.data_type()).is_none() {
                return Err(in_table(format!(
                    "column `{}` is {} in Parquet, which load cannot write to PostgreSQL",
                    f.name(),
                    f.data_type()
                )));
            }
            if f.name() == &req.spec.partition_column {
                return Err(in_table(format!(
                    "the partition has a column `{}`, the partition column load fills with the ds; set another `partition_column`",
                    f.name()
                )));
            }
        }
        plans.push((table.clone(), files, schema));
    }
    let mut buffered = vec![];
    let loaded = crate::with_postgres(&req.connection, |client| {
        let mut tx = client.transaction().map_err(|e| pg_err(&e))?;
        tx.batch_execute("SET LOCAL TimeZone = 'UTC'")
            .map_err(|e| pg_err(&e))?;
        // Loads of the same tables take turns (a delete and a copy racing another pair
        // would leave both copies); names sorted, so two loads never wait in a cycle.
        let locks: BTreeSet<String> = std::iter::once(format!("schema:{}", req.spec.schema))
            .chain(
                plans
                    .iter()
                    .map(|(t, _, _)| format!("table:{}.{t}", req.spec.schema)),
            )
            .collect();
        for name in locks {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("nightshift:load:{name}")],
            )
            .map_err(|e| pg_err(&e))?;
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            ident(&req.spec.schema)
        ))
        .map_err(|e| pg_err(&e))?;
        let mut out = vec![];
        for (table, files, schema) in &plans {
            let loaded = load_table(&mut tx, req, table, files, schema, &ds, &mut buffered)
                .map_err(|message| Error::Table {
                    table: table.to_string(),
                    message,
                })?;
            out.push(loaded);
        }
        tx.commit().map_err(|e| pg_err(&e))?;
        Ok(out)
    })?;
    let _ = log.write_all(&buffered);
    if let Some(m) = metrics {
        // Not `rows_loaded`: the extract before it counted these rows into the run already.
        let mut figures = BTreeMap::new();
        figures.insert(
            "rows_written".to_owned(),
            loaded.iter().map(|t| t.rows).sum::<i64>() as f64,
        );
        figures.insert(
            "rows_replaced".to_owned(),
            loaded.iter().map(|t| t.replaced).sum::<i64>() as f64,
        );
        for t in &loaded {
            figures.insert(format!("rows_written.{}", t.table), t.rows as f64);
        }
        crate::append_metrics(m, &figures)?;
    }
    Ok(loaded)
}

fn pg_err(e: &postgres::Error) -> Error {
    Error::Statement(message(e))
}

/// Creates or widens the table, deletes the ds and copies the partition in.
fn load_table(
    tx: &mut Transaction<'_>,
    req: &LoadRequest,
    table: &str,
    files: &[PathBuf],
    schema: &Arc<Schema>,
    ds: &str,
    log: &mut Vec<u8>,
) -> Result<Loaded, String> {
    let qualified = format!("{}.{}", ident(&req.spec.schema), ident(table));
    let part = &req.spec.partition_column;
    let existing: BTreeMap<String, String> = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&qualified],
        )
        .map_err(|e| message(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if existing.is_empty() {
        let mut cols = vec![format!("{} date NOT NULL", ident(part))];
        for f in schema.fields() {
            cols.push(format!(
                "{} {}",
                ident(f.name()),
                pg_type(f.data_type()).unwrap_or_default()
            ));
        }
        tx.batch_execute(&format!(
            "CREATE TABLE {qualified} ({}); CREATE INDEX ON {qualified} ({})",
            cols.join(", "),
            ident(part)
        ))
        .map_err(|e| message(&e))?;
        let _ = writeln!(log, "{table}: created {qualified}");
    } else {
        match existing.get(part) {
            Some(t) if t == "date" => {}
            Some(t) => {
                return Err(format!(
                    "the warehouse column `{part}` of {qualified} is `{t}`, not the `date` a partition column is"
                ));
            }
            None => {
                return Err(format!(
                    "{qualified} has no column `{part}` to hold the ds; set `partition_column`, or add the column"
                ));
            }
        }
        for f in schema.fields() {
            match existing.get(f.name()) {
                Some(t) if compatible(t, f.data_type()) => {}
                Some(t) => {
                    return Err(format!(
                        "the warehouse column `{}` of {qualified} is `{t}`, but the partition's is `{}`; alter the column, or drop the table so the next load creates it",
                        f.name(),
                        pg_type(f.data_type()).unwrap_or_default()
                    ));
                }
                None => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {qualified} ADD COLUMN {} {}",
                        ident(f.name()),
                        pg_type(f.data_type()).unwrap_or_default()
                    ))
                    .map_err(|e| message(&e))?;
                    let _ = writeln!(log, "{table}: added column `{}`", f.name());
                }
            }
        }
    }
    let day: jiff::civil::Date = ds.parse().map_err(|e| format!("ds `{ds}`: {e}"))?;
    let replaced = tx
        .execute(
            format!(
                "DELETE FROM {qualified} WHERE {} = $1::text::date",
                ident(part)
            )
            .as_str(),
            &[&ds],
        )
        .map_err(|e| message(&e))? as i64;
    let columns: Vec<String> = std::iter::once(ident(part))
        .chain(schema.fields().iter().map(|f| ident(f.name())))
        .collect();
    let mut w = tx
        .copy_in(
            format!(
                "COPY {qualified} ({}) FROM STDIN (FORMAT binary)",
                columns.join(", ")
            )
            .as_str(),
        )
        .map_err(|e| message(&e))?;
    let io = |e: std::io::Error| format!("sending rows: {e}");
    w.write_all(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0")
        .map_err(io)?;
    let ds_days = day
        .since(jiff::civil::date(2000, 1, 1))
        .map_err(|e| e.to_string())?
        .get_days();
    let mut rows = 0i64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let ncol = i16::try_from(columns.len()).map_err(|_| "too many columns".to_owned())?;
    for file in files {
        for batch in reader(file)? {
            let batch = batch.map_err(|e| format!("`{}`: {e}", file.display()))?;
            // A later file of the partition must have the first one's columns.
            if batch.schema().fields() != schema.fields() {
                return Err(format!(
                    "`{}`: its columns differ from the partition's first file",
                    file.display()
                ));
            }
            for row in 0..batch.num_rows() {
                buf.extend(ncol.to_be_bytes());
                buf.extend(4i32.to_be_bytes());
                buf.extend(ds_days.to_be_bytes());
                for (c, col) in batch.columns().iter().enumerate() {
                    encode(col, row, &mut buf).map_err(|e| {
                        format!("column `{}`, row {}: {e}", schema.field(c).name(), rows + 1)
                    })?;
                }
                rows += 1;
                if buf.len() >= 1 << 20 {
                    w.write_all(&buf).map_err(io)?;
                    buf.clear();
                }
            }
        }
    }
    buf.extend((-1i16).to_be_bytes());
    w.write_all(&buf).map_err(io)?;
    let copied = w.finish().map_err(|e| message(&e))?;
    if copied as i64 != rows {
        return Err(format!("sent {rows} rows but the server took {copied}"));
    }
    let _ = writeln!(
        log,
        "{table}: {replaced} rows of {part} = {ds} replaced by {rows} in {qualified}"
    );
    Ok(Loaded {
        table: table.to_owned(),
        replaced,
        rows,
    })
}

/// Appends one value in PostgreSQL's binary form, with its length.
fn encode(col: &ArrayRef, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if col.is_null(row) {
        out.extend((-1i32).to_be_bytes());
        return Ok(());
    }
    let with_len = |out: &mut Vec<u8>, bytes: &[u8]| -> Result<(), String> {
        let n = i32::try_from(bytes.len()).map_err(|_| "a value over 2 GiB".to_owned())?;
        out.extend(n.to_be_bytes());
        out.extend_from_slice(bytes);
        Ok(())
    };
    match col.data_type() {
        DataType::Int16 => with_len(
            out,
            &col.as_primitive::<Int16Type>().value(row).to_be_bytes(),
        ),
        DataType::Int32 => with_len(
            out,
            &col.as_primitive::<Int32Type>().value(row).to_be_bytes(),
        ),
        DataType::Int64 => with_len(
            out,
            &col.as_primitive::<Int64Type>().value(row).to_be_bytes(),
        ),
        DataType::Float32 => with_len(
            out,
            &col.as_primitive::<Float32Type>().value(row).to_be_bytes(),
        ),
        DataType::Float64 => with_len(
            out,
            &col.as_primitive::<Float64Type>().value(row).to_be_bytes(),
        ),
        DataType::Boolean => with_len(out, &[u8::from(col.as_boolean().value(row))]),
        DataType::Utf8 => with_len(out, col.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => with_len(out, col.as_binary::<i32>().value(row)),
        DataType::Date32 => {
            let d = col.as_primitive::<Date32Type>().value(row) - PG_EPOCH_DAYS;
            with_len(out, &d.to_be_bytes())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let t = col.as_primitive::<TimestampMicrosecondType>().value(row) - PG_EPOCH_US;
            with_len(out, &t.to_be_bytes())
        }
        DataType::Decimal128(_, scale) => with_len(
            out,
            &numeric_bytes(col.as_primitive::<Decimal128Type>().value(row), *scale),
        ),
        DataType::List(item) => {
            let list = col.as_list::<i32>();
            let values = list.value(row);
            let mut body = vec![];
            body.extend(1i32.to_be_bytes());
            body.extend(i32::from(values.null_count() > 0).to_be_bytes());
            body.extend(element_oid(item).to_be_bytes());
            body.extend(
                i32::try_from(values.len())
                    .map_err(|_| "an array too long".to_owned())?
                    .to_be_bytes(),
            );
            body.extend(1i32.to_be_bytes());
            for i in 0..values.len() {
                encode(&values, i, &mut body)?;
            }
            if values.is_empty() {
                // An empty array has no dimensions.
                body = [
                    0i32.to_be_bytes(),
                    0i32.to_be_bytes(),
                    element_oid(item).to_be_bytes(),
                ]
                .concat();
            }
            with_len(out, &body)
        }
        other => Err(format!("{other} cannot be written")),
    }
}

/// The element type's oid that an array's binary form names.
fn element_oid(item: &Field) -> u32 {
    use postgres::types::Type;
    match item.data_type() {
        DataType::Int16 => Type::INT2.oid(),
        DataType::Int32 => Type::INT4.oid(),
        DataType::Int64 => Type::INT8.oid(),
        DataType::Float32 => Type::FLOAT4.oid(),
        DataType::Float64 => Type::FLOAT8.oid(),
        DataType::Boolean => Type::BOOL.oid(),
        DataType::Binary => Type::BYTEA.oid(),
        DataType::Date32 => Type::DATE.oid(),
        DataType::Timestamp(_, None) => Type::TIMESTAMP.oid(),
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ.oid(),
        DataType::Decimal128(_, _) => Type::NUMERIC.oid(),
        _ => Type::TEXT.oid(),
    }
}

/// A decimal128 value (`v` / 10^scale) in numeric's binary form: base-10000 digits around
/// the decimal point, the weight of the first, the sign and the scale shown.
fn numeric_bytes(v: i128, scale: i8) -> Vec<u8> {
    let scale = usize::try_from(scale.max(0)).unwrap_or(0);
    let mut text = v.unsigned_abs().to_string();
    if text.len() <= scale {
        text = format!("{}{text}", "0".repeat(scale + 1 - text.len()));
    }
    let (int, frac) = text.split_at(text.len() - scale);
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| {
                std::str::from_utf8(c)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    };
    let mut digits = group(&int);
    let int_groups = digits.len() as i32;
    digits.extend(group(&frac));
    // Leading zero groups lower the weight; trailing ones are dropped.
    let lead = digits.iter().take_while(|d| **d == 0).count();
    let mut weight = int_groups - 1 - lead as i32;
    digits.drain(..lead);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if v < 0 && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend((digits.len() as i16).to_be_bytes());
    out.extend((weight as i16).to_be_bytes());
    out.extend(sign.to_be_bytes());
    out.extend((scale as u16).to_be_bytes());
    for d in digits {
        out.extend(d.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_encode_as_numeric_digits() {
        // 12345.678: digits 1|2345|6780, weight 1, scale 3.
        assert_eq!(
            numeric_bytes(12_345_678, 3),
            [
                &3i16.to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &0u16.to_be_bytes(),
                &3u16.to_be_bytes(),
                &1i16.to_be_bytes(),
                &2345i16.to_be_bytes(),
                &6780i16.to_be_bytes()
            ]
            .concat()
        );
        // -0.05: digit 500 at weight -1.
        assert_eq!(
            numeric_bytes(-5, 2),
            [
                &1i16.to_be_bytes()[..],
                &(-1i16).to_be_bytes(),
                &0x4000u16.to_be_bytes(),
                &2u16.to_be_bytes(),
                &500i16.to_be_bytes()
            ]
            .concat()
        );
        assert_eq!(
            numeric_bytes(0, 2),
            [
                &0i16.to_be_bytes()[..],
                &0i16.to_be_bytes(),
                &0u16.to_be_bytes(),
                &2u16.to_be_bytes()
            ]
            .concat()
        );
        // Round trip through the reader's decoding.
        for (v, s) in [
            (12_345_678i128, 3i8),
            (-5, 2),
            (100_000_000, 0),
            (1, 10),
            (-99_999_999_999, 4),
        ] {
            assert_eq!(
                crate::postgres::numeric_scaled(&numeric_bytes(v, s), s).unwrap(),
                v,
                "{v} scale {s}"
            );
        }
    }

    #[test]
    fn existing_columns_are_matched_by_binary_form() {
        assert!(compatible("text", &DataType::Utf8));
        assert!(compatible("character varying(20)", &DataType::Utf8));
        assert!(compatible("numeric(20,2)", &DataType::Decimal128(12, 3)));
        assert!(compatible(
            "integer[]",
            &DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
        ));
        assert!(!compatible("integer", &DataType::Int64));
        assert!(!compatible(
            "timestamp without time zone",
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        ));
    }
}

/// Source → Parquet → warehouse on a real PostgreSQL: the warehouse is a schema of the
/// source's database, so one query compares them.
#[cfg(test)]
mod on_postgres {
    use nightshift_core::clock::SystemClock;
    use nightshift_core::kinds::{LoadRequest, LoadSpec};
    use nightshift_store::postgres::testing::TestCluster;

    use crate::postgres::on_postgres::{request, typed_table};

    fn load_request(dir: &std::path::Path, url: &str) -> LoadRequest {
        let extract = request(dir, url, "");
        LoadRequest {
            spec: LoadSpec {
                connection: "wh".into(),
                tables: vec!["t".into()],
                from: "raw".into(),
                schema: "wh".into(),
                partition_column: "ds".into(),
            },
            connection: extract.connection,
            project_dir: extract.project_dir,
            keys: extract.keys,
        }
    }

    fn count(c: &mut postgres::Client, sql: &str) -> i64 {
        c.query_one(sql, &[]).unwrap().get(0)
    }

    #[test]
    fn a_partition_round_trips_and_a_rerun_or_a_failure_keeps_one_copy() {
        let pg = TestCluster::start().expect("PostgreSQL (tools/testdeps/install)");
        let url = pg.database("dw").unwrap();
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        typed_table(&mut c);
        let dir = tempfile::tempdir().unwrap();
        let extract = |sql: &str| {
            crate::run(
                &request(dir.path(), &url, sql),
                &SystemClock,
                None,
                &mut std::io::sink(),
            )
            .unwrap()
        };
        extract("SELECT * FROM t WHERE day = :ds");
        let metrics = dir.path().join("m.jsonl");
        let loaded = crate::load(
            &load_request(dir.path(), &url),
            Some(&metrics),
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!((loaded[0].replaced, loaded[0].rows), (0, 2));
        assert!(
            std::fs::read_to_string(&metrics)
                .unwrap()
                .contains("\"rows_written.t\":2")
        );
        // Every value equal to the source's, with the ds beside it. (json has no equality
        // operator: compared as text.)
        // Unconstrained numeric, uuid, json and jsonb travel as their text.
        let source = "id, small, big, r, d, flag, price, free::text, name, code, day, at, at_tz, uid::text, doc::text, docb::text, raw, tags, nums, run";
        let loaded = "id, small, big, r, d, flag, price, free, name, code, day, at, at_tz, uid, doc, docb, raw, tags, nums, run";
        let differ = format!(
            "SELECT COUNT(*) FROM ((SELECT {source} FROM t WHERE day = '2024-06-01' EXCEPT SELECT {loaded} FROM wh.t)
                                   UNION ALL (SELECT {loaded} FROM wh.t EXCEPT SELECT {source} FROM t WHERE day = '2024-06-01')) AS d"
        );
        assert_eq!(count(&mut c, &differ), 0);
        assert_eq!(
            count(
                &mut c,
                "SELECT COUNT(*) FROM wh.t WHERE ds = '2024-06-01' AND _run_id = '20240602_0000'"
            ),
            2
        );
        let types: Vec<String> = c
            .query(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'wh.t'::regclass AND attname IN ('price', 'at_tz', 'tags') ORDER BY attname",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            types,
            ["timestamp with time zone", "numeric(12,3)", "text[]"]
        );

        // A rerun replaces the ds: the count stays, and a column the source added is added.
        extract("SELECT *, 7 AS added FROM t WHERE day = :ds");
        let loaded =
            crate::load(&load_request(dir.path(), &url), None, &mut std::io::sink()).unwrap();
        assert_eq!((loaded[0].replaced, loaded[0].rows), (2, 2));
        assert_eq!(
            count(&mut c, "SELECT COUNT(*) FROM wh.t WHERE ds = '2024-06-01'"),
            2
        );
        assert_eq!(count(&mut c, "SELECT SUM(added) FROM wh.t"), 14);

        // A load that fails after its delete leaves the previous rows as they were.
        c.batch_execute(
            "ALTER TABLE wh.t ADD CONSTRAINT small_positive CHECK (small IS NULL OR small < 0)",
        )
        .unwrap();
        c.batch_execute("UPDATE t SET small = 5 WHERE id = 2")
            .unwrap();
        extract("SELECT *, 8 AS added FROM t WHERE day = :ds");
        let err = crate::load(&load_request(dir.path(), &url), None, &mut std::io::sink())
            .unwrap_err()
            .to_string();
        assert!(err.contains("small_positive"), "{err}");
        assert_eq!(
            count(&mut c, "SELECT COUNT(*) FROM wh.t WHERE ds = '2024-06-01'"),
            2
        );
        assert_eq!(
            count(&mut c, "SELECT SUM(added) FROM wh.t"),
            14,
            "the earlier load's rows"
        );

        // A column whose type changed is refused with what to do.
        c.batch_execute("ALTER TABLE wh.t DROP CONSTRAINT small_positive; ALTER TABLE wh.t ALTER COLUMN code TYPE integer USING length(code)")
            .unwrap();
        let err = crate::load(&load_request(dir.path(), &url), None, &mut std::io::sink())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`code`") && err.contains("drop the table"),
            "{err}"
        );

        // An empty partition (the source had nothing that day) empties the ds.
        c.batch_execute("ALTER TABLE wh.t ALTER COLUMN code TYPE text")
            .unwrap();
        extract("SELECT *, 9 AS added FROM t WHERE day = :ds AND false");
        let loaded =
            crate::load(&load_request(dir.path(), &url), None, &mut std::io::sink()).unwrap();
        assert_eq!((loaded[0].replaced, loaded[0].rows), (2, 0));
        assert_eq!(
            count(&mut c, "SELECT COUNT(*) FROM wh.t WHERE ds = '2024-06-01'"),
            0
        );

        // No partition for the ds: said before the warehouse is touched.
        let mut req = load_request(dir.path(), &url);
        req.keys.ds = jiff::civil::date(2024, 6, 9);
        let err = crate::load(&req, None, &mut std::io::sink())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no partition") && err.contains("dt=2024-06-09"),
            "{err}"
        );
    }
}
