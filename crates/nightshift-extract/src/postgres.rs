//! Reading queries from PostgreSQL into Arrow batches: every table of a try in one
//! `REPEATABLE READ READ ONLY` snapshot, rows streamed through binary `COPY (query) TO
//! STDOUT` and decoded straight into Arrow builders, a batch at a time.
//!
//! `COPY` takes no bind parameters, so the run's keys reach the query another way that
//! never splices them into SQL: each is set as a transaction-local setting through a bound
//! parameter (`set_config('nightshift.start', $1, true)`), and `:start` in the query text is
//! replaced by the constant expression `current_setting('nightshift.start')::timestamptz`.
//! The keys' types: `:start` and `:end` are `timestamptz`, `:ds` is a `date`, `:run_id` is
//! `text`.

use std::io::Read;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, make_builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use postgres::types::{Kind as PgKind, Type};
use postgres::{IsolationLevel, Transaction};
use std::sync::Arc;

use crate::{BATCH, LINEAGE, Params, PartitionWriter, lineage_arrays};

/// The run's keys as the query sees them: (name in the query, setting, SQL type).
const KEYS: [(&str, &str, &str); 4] = [
    ("start", "nightshift.start", "::timestamptz"),
    ("end", "nightshift.end", "::timestamptz"),
    ("ds", "nightshift.ds", "::date"),
    ("run_id", "nightshift.run_id", ""),
];

/// Replaces `:start`, `:end`, `:ds` and `:run_id` by reads of the transaction's settings,
/// leaving string literals, quoted names, comments, dollar-quoted bodies and `::` casts
/// alone. Any other `:name` is an error, as on SQLite.
pub(crate) fn rewrite(sql: &str) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut copied = 0;
    for (at, name) in nightshift_core::sql::sql_params(sql) {
        let Some((_, setting, cast)) = KEYS.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!(
                "unknown query parameter `:{name}`; use :start, :end, :ds or :run_id"
            ));
        };
        out.push_str(&sql[copied..at]);
        out.push_str(&format!("current_setting('{setting}'){cast}"));
        copied = at + 1 + name.len();
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Opens the snapshot every table of the try is read in, with the run's keys set in it.
pub(crate) fn begin<'c>(
    client: &'c mut postgres::Client,
    p: &Params<'_>,
) -> Result<Transaction<'c>, String> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| message(&e))?;
    // Timestamps without a zone, and text forms of zoned ones, read as UTC.
    tx.batch_execute("SET LOCAL TimeZone = 'UTC'")
        .map_err(|e| message(&e))?;
    let values = [
        p.keys.start_text(),
        p.keys.end_text(),
        p.keys.ds_text(),
        p.keys.run_id.clone(),
    ];
    for ((_, setting, _), value) in KEYS.iter().zip(&values) {
        tx.execute("SELECT set_config($1, $2, true)", &[setting, value])
            .map_err(|e| message(&e))?;
    }
    Ok(tx)
}

pub(crate) fn message(e: &postgres::Error) -> String {
    nightshift_store::postgres::driver_message(e)
}

/// Any value, to tell NULL from present whatever the column's type.
struct Present;

impl<'a> postgres::types::FromSql<'a> for Present {
    fn from_sql(_: &Type, _: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Present)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Whether a condition query holds: its first column of its first row is neither NULL,
/// false, 0 nor empty (a sensor's poke).
pub(crate) fn holds(tx: &mut Transaction<'_>, sql: &str) -> Result<bool, String> {
    let sql = rewrite(sql.trim().trim_end_matches(';'))?;
    let Some(row) = tx.query_opt(sql.as_str(), &[]).map_err(|e| message(&e))? else {
        return Ok(false);
    };
    if row.is_empty() {
        return Ok(false);
    }
    let get = |e: postgres::Error| message(&e);
    Ok(match *row.columns()[0].type_() {
        Type::BOOL => row.try_get::<_, Option<bool>>(0).map_err(get)? == Some(true),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(0)
            .map_err(get)?
            .is_some_and(|n| n != 0),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(0)
            .map_err(get)?
            .is_some_and(|n| n != 0),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(0)
            .map_err(get)?
            .is_some_and(|n| n != 0),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(0)
            .map_err(get)?
            .is_some_and(|n| n != 0.0),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(0)
            .map_err(get)?
            .is_some_and(|n| n != 0.0),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(0)
            .map_err(get)?
            .is_some_and(|s| !s.is_empty()),
        // Anything else (a date, a numeric…): present is true.
        _ => row.try_get::<_, Option<Present>>(0).map_err(get)?.is_some(),
    })
}

/// How one column's values are decoded from the binary COPY format.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decode {
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    /// numeric(p, s) into decimal128(p, s).
    Decimal(u8, i8),
    /// Unconstrained numeric, as its exact text.
    NumericText,
    Text,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Timestamp,
}

struct Column {
    name: String,
    decode: Decode,
    list: bool,
}

/// The Arrow type and decoder of a PostgreSQL type; `typmod` gives numeric's precision
/// and scale.
fn decode_of(ty: &Type, typmod: i32) -> Option<(Decode, DataType)> {
    Some(match *ty {
        Type::INT2 => (Decode::I16, DataType::Int16),
        Type::INT4 => (Decode::I32, DataType::Int32),
        Type::INT8 => (Decode::I64, DataType::Int64),
        Type::FLOAT4 => (Decode::F32, DataType::Float32),
        Type::FLOAT8 => (Decode::F64, DataType::Float64),
        Type::BOOL => (Decode::Bool, DataType::Boolean),
        Type::NUMERIC => {
            let precision = ((typmod - 4) >> 16) & 0xffff;
            let scale = (typmod - 4) & 0xffff;
            if typmod >= 4 && (1..=38).contains(&precision) && scale <= precision {
                (
                    Decode::Decimal(precision as u8, scale as i8),
                    DataType::Decimal128(precision as u8, scale as i8),
                )
            } else {
                (Decode::NumericText, DataType::Utf8)
            }
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => {
            (Decode::Text, DataType::Utf8)
        }
        Type::JSONB => (Decode::Jsonb, DataType::Utf8),
        Type::UUID => (Decode::Uuid, DataType::Utf8),
        Type::BYTEA => (Decode::Bytea, DataType::Binary),
        Type::DATE => (Decode::Date, DataType::Date32),
        Type::TIMESTAMP => (
            Decode::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
        Type::TIMESTAMPTZ => (
            Decode::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        _ => return None,
    })
}

/// The columns of the query, or which one cannot be read and what to do.
fn describe(tx: &mut Transaction<'_>, sql: &str) -> Result<(Vec<Column>, Vec<Field>), String> {
    let stmt = tx.prepare(sql).map_err(|e| message(&e))?;
    let mut cols = vec![];
    let mut fields = vec![];
    for c in stmt.columns() {
        let (ty, list) = match c.type_().kind() {
            PgKind::Array(elem) => (elem.clone(), true),
            _ => (c.type_().clone(), false),
        };
        let Some((decode, dt)) = decode_of(&ty, c.type_modifier()) else {
            return Err(format!(
                "column `{}` has type `{}`, which extract cannot read; cast it in the query (e.g. `{}::text`)",
                c.name(),
                c.type_().name(),
                c.name()
            ));
        };
        let dt = if list {
            DataType::List(Arc::new(Field::new("item", dt, true)))
        } else {
            dt
        };
        fields.push(Field::new(c.name(), dt, true));
        cols.push(Column {
            name: c.name().to_owned(),
            decode,
            list,
        });
    }
    Ok((cols, fields))
}

/// 2000-01-01, PostgreSQL's epoch, in days and microseconds after 1970-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_US: i64 = 946_684_800_000_000;

fn be<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.get(..N)?.try_into().ok()
}

/// Appends one value (`None`: NULL) to a builder of `decode`'s type.
fn append(decode: Decode, b: &mut dyn ArrayBuilder, v: Option<&[u8]>) -> Result<(), String> {
    macro_rules! put {
        ($builder:ty, |$v:ident| $value:expr) => {{
            let b = b
                .as_any_mut()
                .downcast_mut::<$builder>()
                .ok_or("builder type")?;
            match v {
                None => b.append_null(),
                Some($v) => b.append_value($value?),
            }
        }};
    }
    let short = || "a value shorter than its type".to_owned();
    match decode {
        Decode::I16 => put!(Int16Builder, |v| be(v)
            .map(i16::from_be_bytes)
            .ok_or_else(short)),
        Decode::I32 => put!(Int32Builder, |v| be(v)
            .map(i32::from_be_bytes)
            .ok_or_else(short)),
        Decode::I64 => put!(Int64Builder, |v| be(v)
            .map(i64::from_be_bytes)
            .ok_or_else(short)),
        Decode::F32 => put!(Float32Builder, |v| be(v)
            .map(f32::from_be_bytes)
            .ok_or_else(short)),
        Decode::F64 => put!(Float64Builder, |v| be(v)
            .map(f64::from_be_bytes)
            .ok_or_else(short)),
        Decode::Bool => put!(BooleanBuilder, |v| v
            .first()
            .map(|b| *b != 0)
            .ok_or_else(short)),
        Decode::Decimal(_, scale) => {
            put!(Decimal128Builder, |v| numeric_scaled(v, scale))
        }
        Decode::NumericText => put!(StringBuilder, |v| numeric_text(v)),
        Decode::Text => put!(StringBuilder, |v| std::str::from_utf8(v)
            .map_err(|_| "text that is not UTF-8".to_owned())),
        // jsonb's binary form is a version byte (1) and the document's text.
        Decode::Jsonb => put!(StringBuilder, |v| match v.split_first() {
            Some((1, text)) =>
                std::str::from_utf8(text).map_err(|_| "jsonb that is not UTF-8".to_owned()),
            _ => Err("a jsonb value of an unknown format version".to_owned()),
        }),
        Decode::Uuid => put!(StringBuilder, |v| be::<16>(v)
            .map(uuid_text)
            .ok_or_else(short)),
        Decode::Bytea => put!(BinaryBuilder, |v| Ok::<_, String>(v)),
        Decode::Date => put!(Date32Builder, |v| date_days(v)),
        Decode::Timestamp => put!(TimestampMicrosecondBuilder, |v| timestamp_us(v)),
    }
    Ok(())
}

/// Days after 1970-01-01.
fn date_days(v: &[u8]) -> Result<i32, String> {
    let d = be(v)
        .map(i32::from_be_bytes)
        .ok_or("a date shorter than 4 bytes")?;
    if d == i32::MAX || d == i32::MIN {
        return Err("an infinite date, which a Parquet date cannot hold".to_owned());
    }
    d.checked_add(PG_EPOCH_DAYS)
        .ok_or_else(|| "a date out of range".to_owned())
}

/// Microseconds after 1970-01-01 (UTC for `timestamptz`).
fn timestamp_us(v: &[u8]) -> Result<i64, String> {
    let t = be(v)
        .map(i64::from_be_bytes)
        .ok_or("a timestamp shorter than 8 bytes")?;
    if t == i64::MAX || t == i64::MIN {
        return Err("an infinite timestamp, which a Parquet timestamp cannot hold".to_owned());
    }
    t.checked_add(PG_EPOCH_US)
        .ok_or_else(|| "a timestamp out of range".to_owned())
}

fn uuid_text(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// numeric's binary form: digit count, weight (of the first base-10000 digit), sign, the
/// scale shown, then the digits.
fn numeric_parts(v: &[u8]) -> Result<(i16, u16, u16, Vec<i16>), String> {
    let bad = || "a malformed numeric".to_owned();
    let n = i16::from_be_bytes(be(v).ok_or_else(bad)?);
    let weight = i16::from_be_bytes(be(&v[2..]).ok_or_else(bad)?);
    let sign = u16::from_be_bytes(be(&v[4..]).ok_or_else(bad)?);
    let dscale = u16::from_be_bytes(be(&v[6..]).ok_or_else(bad)?);
    let digits = (0..n.max(0) as usize)
        .map(|k| {
            v.get(8 + 2 * k..10 + 2 * k)
                .and_then(be)
                .map(i16::from_be_bytes)
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    match sign {
        0x0000 | 0x4000 => Ok((weight, sign, dscale, digits)),
        0xC000 => Err("NaN, which a decimal column cannot hold".to_owned()),
        _ => Err("an infinite numeric, which a decimal column cannot hold".to_owned()),
    }
}

/// The value times 10^scale, as decimal128 stores it.
pub(crate) fn numeric_scaled(v: &[u8], scale: i8) -> Result<i128, String> {
    let (weight, sign, _, digits) = numeric_parts(v)?;
    let overflow = || "a value too large for its decimal column".to_owned();
    let mut acc: i128 = 0;
    for (k, d) in digits.iter().enumerate() {
        // This digit counts 10000^(weight - k); times 10^scale.
        let exp = 4 * (i32::from(weight) - k as i32) + i32::from(scale);
        let term = if exp >= 0 {
            i128::from(*d)
                .checked_mul(10i128.checked_pow(exp as u32).ok_or_else(overflow)?)
                .ok_or_else(overflow)?
        } else {
            // Digits below the column's scale are zero (values are stored rounded to it).
            i128::from(*d) / 10i128.pow((-exp).min(38) as u32)
        };
        acc = acc.checked_add(term).ok_or_else(overflow)?;
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// numeric's exact text, as PostgreSQL prints it.
fn numeric_text(v: &[u8]) -> Result<String, String> {
    let (weight, sign, dscale, digits) = match numeric_parts(v) {
        Ok(p) => p,
        Err(_) if v.len() >= 6 && u16::from_be_bytes([v[4], v[5]]) == 0xC000 => {
            return Ok("NaN".to_owned());
        }
        Err(_) if v.len() >= 6 && u16::from_be_bytes([v[4], v[5]]) == 0xD000 => {
            return Ok("Infinity".to_owned());
        }
        Err(_) if v.len() >= 6 && u16::from_be_bytes([v[4], v[5]]) == 0xF000 => {
            return Ok("-Infinity".to_owned());
        }
        Err(e) => return Err(e),
    };
    let digit = |k: i32| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0)
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=i32::from(weight) {
            let d = digit(k);
            if k == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut k = i32::from(weight) + 1;
        while frac.len() < usize::from(dscale) {
            frac.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        frac.truncate(usize::from(dscale));
        s.push_str(&frac);
    }
    Ok(s)
}

/// Appends a one-dimensional array (or NULL) to a list builder.
fn append_list(
    decode: Decode,
    b: &mut ListBuilder<Box<dyn ArrayBuilder>>,
    v: Option<&[u8]>,
) -> Result<(), String> {
    let Some(v) = v else {
        b.append_null();
        return Ok(());
    };
    let bad = || "a malformed array".to_owned();
    let ndim = i32::from_be_bytes(be(v).ok_or_else(bad)?);
    if ndim > 1 {
        return Err(format!(
            "an array of {ndim} dimensions (extract reads one-dimensional arrays)"
        ));
    }
    if ndim == 1 {
        let n = i32::from_be_bytes(be(&v[12..]).ok_or_else(bad)?);
        let mut at = 20;
        for _ in 0..n.max(0) {
            let len = i32::from_be_bytes(be(v.get(at..).ok_or_else(bad)?).ok_or_else(bad)?);
            at += 4;
            let elem = if len < 0 {
                None
            } else {
                let e = v.get(at..at + len as usize).ok_or_else(bad)?;
                at += len as usize;
                Some(e)
            };
            append(decode, b.values().as_mut(), elem)?;
        }
    }
    b.append(true);
    Ok(())
}

enum Builder {
    Plain(Box<dyn ArrayBuilder>),
    List(ListBuilder<Box<dyn ArrayBuilder>>),
}

fn builders(fields: &[Field], cols: &[Column]) -> Vec<Builder> {
    fields
        .iter()
        .zip(cols)
        .map(|(f, c)| match f.data_type() {
            DataType::List(item) if c.list => {
                Builder::List(ListBuilder::new(make_builder(item.data_type(), BATCH)))
            }
            dt => Builder::Plain(make_builder(dt, BATCH)),
        })
        .collect()
}

/// Where each field of one row lies in its bytes: (start, length), length -1 for NULL.
/// `None` when `buf` does not hold the whole row yet.
fn split_row(buf: &[u8], fields: &mut Vec<(usize, i32)>) -> Result<Option<usize>, String> {
    fields.clear();
    let Some(n) = buf.get(..2) else {
        return Ok(None);
    };
    let n = i16::from_be_bytes([n[0], n[1]]);
    if n == -1 {
        return Ok(Some(2));
    }
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        fields.push((at, len));
        if len > 0 {
            at += len as usize;
        } else if len < -1 {
            return Err(format!("a field of length {len}"));
        }
    }
    Ok((at <= buf.len()).then_some(at))
}

/// Streams the query's rows into the partition in batches; returns the row count. Rows
/// are decoded on this thread while the previous batch is encoded into Parquet on another,
/// so the server keeps sending while the file is written.
pub(crate) fn read_into(
    tx: &mut Transaction<'_>,
    sql: &str,
    p: &Params<'_>,
    out: &mut PartitionWriter,
) -> Result<i64, String> {
    let sql = rewrite(sql.trim().trim_end_matches(';'))?;
    let (cols, mut fields) = describe(tx, &sql)?;
    let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
    let ncol = cols.len();
    for l in LINEAGE
        .iter()
        .filter(|l| p.lineage && !names.iter().any(|n| n == *l))
    {
        fields.push(Field::new(*l, DataType::Utf8, false));
    }
    let schema = Arc::new(Schema::new(fields));
    let plain: Vec<Field> = schema.fields()[..ncol]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut bs = builders(&plain, &cols);
    let reader = tx
        .copy_out(format!("COPY ({sql}) TO STDOUT (FORMAT binary)").as_str())
        .map_err(|e| message(&e))?;
    let (to_writer, batches) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(), String> {
            for batch in batches {
                out.write(&batch).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        let read = decode_rows(reader, &cols, &mut bs, |bs, n| {
            let mut arrays: Vec<ArrayRef> = bs
                .iter_mut()
                .map(|b| match b {
                    Builder::Plain(b) => b.finish(),
                    Builder::List(b) => Arc::new(b.finish()) as ArrayRef,
                })
                .collect();
            arrays.extend(lineage_arrays(&names, p, n));
            let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?;
            // A writer that stopped has said why; that error is the one reported.
            to_writer.send(batch).map_err(|_| String::new())
        });
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the Parquet writer stopped unexpectedly".to_owned()));
        match (read, written) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(total), Ok(())) => Ok(total),
        }
    })
}

/// Decodes the binary COPY stream into the builders, handing each full batch (and the last,
/// possibly empty one) to `flush`.
fn decode_rows(
    mut r: impl std::io::BufRead,
    cols: &[Column],
    bs: &mut Vec<Builder>,
    mut flush: impl FnMut(&mut Vec<Builder>, usize) -> Result<(), String>,
) -> Result<i64, String> {
    let ncol = cols.len();
    let io = |e: std::io::Error| format!("reading the rows: {e}");
    let mut header = [0u8; 19];
    r.read_exact(&mut header).map_err(io)?;
    if &header[..11] != b"PGCOPY\n\xff\r\n\0" {
        return Err("the server did not answer in binary COPY format".to_owned());
    }
    let ext = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
    std::io::copy(&mut (&mut r).take(u64::from(ext)), &mut std::io::sink()).map_err(io)?;
    let mut rows_in_batch = 0usize;
    let mut total: i64 = 0;
    let mut fields = Vec::with_capacity(ncol);
    // A row split over the reader's buffers is gathered here first (rare: the server sends
    // a row per message).
    let mut pending: Vec<u8> = vec![];
    loop {
        let buf = r.fill_buf().map_err(io)?;
        if buf.is_empty() {
            return Err("the rows ended before the end of the copy".to_owned());
        }
        let (row, consumed): (&[u8], usize) = if pending.is_empty() {
            match split_row(buf, &mut fields)? {
                Some(n) => (&buf[..n], n),
                None => {
                    pending.extend_from_slice(buf);
                    let n = buf.len();
                    r.consume(n);
                    continue;
                }
            }
        } else {
            let before = pending.len();
            pending.extend_from_slice(buf);
            match split_row(&pending, &mut fields)? {
                Some(n) => {
                    let used = n - before;
                    pending.truncate(n);
                    (&pending[..], used)
                }
                None => {
                    let n = buf.len();
                    r.consume(n);
                    continue;
                }
            }
        };
        if row.len() == 2 && fields.is_empty() && row == (-1i16).to_be_bytes() {
            // The trailer: what follows is the end of the copy.
            r.consume(consumed);
            std::io::copy(&mut r, &mut std::io::sink()).map_err(io)?;
            break;
        }
        if fields.len() != ncol {
            return Err(format!(
                "a row of {} fields where the query has {ncol} columns",
                fields.len()
            ));
        }
        for ((c, b), &(start, len)) in cols.iter().zip(bs.iter_mut()).zip(&fields) {
            let v = (len >= 0).then(|| &row[start..start + len as usize]);
            let at = |e: String| format!("column `{}`, row {}: {e}", c.name, total + 1);
            match b {
                Builder::Plain(b) => append(c.decode, b.as_mut(), v).map_err(at)?,
                Builder::List(b) => append_list(c.decode, b, v).map_err(at)?,
            }
        }
        pending.clear();
        r.consume(consumed);
        total += 1;
        rows_in_batch += 1;
        if rows_in_batch >= BATCH {
            flush(bs, rows_in_batch)?;
            rows_in_batch = 0;
        }
    }
    // Always write the last (possibly empty) batch, so the file carries the schema.
    if rows_in_batch > 0 || total == 0 {
        flush(bs, rows_in_batch)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_rewritten_outside_literals_comments_and_casts() {
        let sql = "SELECT ':ds', \":start\", x::date, $$ :end $$ -- :run_id\n FROM t /* :ds */ WHERE d = :ds AND ts >= :start AND r = :run_id";
        let out = rewrite(sql).unwrap();
        assert_eq!(
            out,
            "SELECT ':ds', \":start\", x::date, $$ :end $$ -- :run_id\n FROM t /* :ds */ WHERE d = current_setting('nightshift.ds')::date AND ts >= current_setting('nightshift.start')::timestamptz AND r = current_setting('nightshift.run_id')"
        );
        assert!(
            rewrite("SELECT * FROM t WHERE a = :other")
                .unwrap_err()
                .contains("unknown query parameter `:other`")
        );
        assert_eq!(rewrite("SELECT a[1:2], $1").unwrap(), "SELECT a[1:2], $1");
        assert_eq!(rewrite("SELECT 'it''s :ds'").unwrap(), "SELECT 'it''s :ds'");
    }

    /// Rows split at any byte (a reader with a 3-byte buffer) decode as whole ones.
    #[test]
    fn rows_split_across_reads_decode_whole() {
        let mut stream = b"PGCOPY\n\xff\r\n\0".to_vec();
        stream.extend(0u32.to_be_bytes());
        stream.extend(0u32.to_be_bytes());
        for (id, name) in [(7i32, Some("seven")), (8, None), (9, Some(""))] {
            stream.extend(2i16.to_be_bytes());
            stream.extend(4i32.to_be_bytes());
            stream.extend(id.to_be_bytes());
            match name {
                Some(n) => {
                    stream.extend((n.len() as i32).to_be_bytes());
                    stream.extend(n.as_bytes());
                }
                None => stream.extend((-1i32).to_be_bytes()),
            }
        }
        stream.extend((-1i16).to_be_bytes());
        let cols = [
            Column {
                name: "id".into(),
                decode: Decode::I32,
                list: false,
            },
            Column {
                name: "name".into(),
                decode: Decode::Text,
                list: false,
            },
        ];
        let fields = [
            Field::new("id", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
        ];
        for cap in [3, 7, 1 << 16] {
            let mut bs = builders(&fields, &cols);
            let mut got = vec![];
            let n = decode_rows(
                std::io::BufReader::with_capacity(cap, &stream[..]),
                &cols,
                &mut bs,
                |bs, _| {
                    for b in bs.iter_mut() {
                        if let Builder::Plain(b) = b {
                            got.push(b.finish());
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(n, 3, "buffer of {cap}");
            use arrow_array::Array;
            use arrow_array::cast::AsArray;
            assert_eq!(
                got[0]
                    .as_primitive::<arrow_array::types::Int32Type>()
                    .values(),
                &[7, 8, 9]
            );
            let names = got[1].as_string::<i32>();
            assert_eq!(
                (names.value(0), names.is_null(1), names.value(2)),
                ("seven", true, "")
            );
        }
    }

    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = vec![];
        v.extend((digits.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_decode_to_scaled_integers_and_exact_text() {
        // 12345.678 = 1|2345|6780 with weight 1.
        let v = numeric(1, 0, 3, &[1, 2345, 6780]);
        assert_eq!(numeric_scaled(&v, 3).unwrap(), 12_345_678);
        assert_eq!(numeric_scaled(&v, 5).unwrap(), 1_234_567_800);
        assert_eq!(numeric_text(&v).unwrap(), "12345.678");
        // -0.05 = 500 at weight -1.
        let v = numeric(-1, 0x4000, 2, &[500]);
        assert_eq!(numeric_scaled(&v, 2).unwrap(), -5);
        assert_eq!(numeric_text(&v).unwrap(), "-0.05");
        // 1e20 = 1|0000… at weight 5, no digits after the first (trailing zeros dropped).
        let v = numeric(5, 0, 0, &[1]);
        assert_eq!(numeric_text(&v).unwrap(), "100000000000000000000");
        assert_eq!(numeric_scaled(&v, 0).unwrap(), 100_000_000_000_000_000_000);
        let v = numeric(0, 0, 0, &[]);
        assert_eq!(numeric_text(&v).unwrap(), "0");
        let nan = numeric(0, 0xC000, 0, &[]);
        assert!(numeric_scaled(&nan, 2).unwrap_err().contains("NaN"));
        assert_eq!(numeric_text(&nan).unwrap(), "NaN");
    }
}

/// Against a real PostgreSQL (a private cluster, as the store's tests start).
#[cfg(test)]
pub(crate) mod on_postgres {
    use std::collections::BTreeMap;
    use std::path::Path;

    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
        TimestampMicrosecondType,
    };
    use arrow_array::{Array, RecordBatch};
    use nightshift_core::clock::SystemClock;
    use nightshift_core::kinds::{ExtractRequest, ExtractSpec, ExtractTable, OnIncomplete};
    use nightshift_core::project::Connection;
    use nightshift_store::postgres::testing::TestCluster;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// A table with every type extract reads, NULLs and arrays among them: two rows of
    /// 2024-06-01 and one of the next day.
    pub(crate) fn typed_table(c: &mut postgres::Client) {
        c.batch_execute(
            "CREATE TABLE t (
                 id int4, small int2, big int8, r float4, d float8, flag bool,
                 price numeric(12, 3), free numeric, name text, code varchar(8),
                 day date, at timestamp, at_tz timestamptz, uid uuid, doc json, docb jsonb,
                 raw bytea, tags text[], nums int4[], run text);
             INSERT INTO t VALUES
                 (1, -2, 9000000000, 1.5, -2.25, true, 12345.678, 0.000001, 'ä name', 'ab',
                  '2024-06-01', '2024-06-01 10:30:00.123456', '2024-06-01 12:00:00+02',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"b\": [1, 2]}',
                  '\\x00ff10', ARRAY['x', NULL, 'z'], ARRAY[1, 2, 3], 'r1'),
                 (2, NULL, NULL, NULL, NULL, NULL, -0.5, 123456789012345678901234567890, NULL, NULL,
                  '2024-06-01', NULL, NULL, NULL, NULL, NULL, NULL, NULL, ARRAY[]::int4[], 'r2'),
                 (3, 0, 0, 0, 0, false, 0, 0, 'other day', '', '2024-06-02', NULL, NULL, NULL,
                  NULL, NULL, NULL, NULL, NULL, 'r3');",
        )
        .unwrap();
    }

    pub(crate) fn request(dir: &Path, url: &str, sql: &str) -> ExtractRequest {
        ExtractRequest {
            spec: ExtractSpec {
                connection: "src".into(),
                tables: vec![ExtractTable {
                    name: "t".into(),
                    sql: sql.into(),
                }],
                output: "raw".into(),
                min_ratio: None,
                on_incomplete: OnIncomplete::Fail,
            },
            connection: Connection::Postgres {
                url: Some(url.to_owned()),
                url_env: None,
                password_env: None,
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
            history: BTreeMap::new(),
        }
    }

    fn read(dir: &Path) -> RecordBatch {
        let f = std::fs::File::open(dir.join("raw/t/dt=2024-06-01/part-0.parquet")).unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(batches.len(), 1, "one batch for a small table");
        batches[0].clone()
    }

    #[test]
    fn every_listed_type_reaches_parquet_with_its_value_and_keys_are_bound() {
        let pg = TestCluster::start().expect("PostgreSQL (tools/testdeps/install)");
        let url = pg.database("source").unwrap();
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        typed_table(&mut c);
        let dir = tempfile::tempdir().unwrap();
        let sql = "SELECT * FROM t WHERE day = :ds AND at_tz IS DISTINCT FROM :end ORDER BY id";
        let s = crate::run(
            &request(dir.path(), &url, sql),
            &SystemClock,
            None,
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!(s.rows_loaded(), 2, "only the interval's rows");
        let b = read(dir.path());
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        assert_eq!(col("id").as_primitive::<Int32Type>().values(), &[1, 2]);
        assert_eq!(col("small").as_primitive::<Int16Type>().value(0), -2);
        assert!(col("small").is_null(1));
        assert_eq!(
            col("big").as_primitive::<Int64Type>().value(0),
            9_000_000_000
        );
        assert_eq!(col("r").as_primitive::<Float32Type>().value(0), 1.5);
        assert_eq!(col("d").as_primitive::<Float64Type>().value(0), -2.25);
        assert!(col("flag").as_boolean().value(0));
        let price = col("price");
        assert_eq!(
            price.data_type(),
            &arrow_schema::DataType::Decimal128(12, 3)
        );
        assert_eq!(price.as_primitive::<Decimal128Type>().value(0), 12_345_678);
        assert_eq!(price.as_primitive::<Decimal128Type>().value(1), -500);
        let free = col("free");
        assert_eq!(free.as_string::<i32>().value(0), "0.000001");
        assert_eq!(
            free.as_string::<i32>().value(1),
            "123456789012345678901234567890"
        );
        assert_eq!(col("name").as_string::<i32>().value(0), "ä name");
        assert!(col("name").is_null(1));
        assert_eq!(col("code").as_string::<i32>().value(0), "ab");
        // 2024-06-01 is day 19875 after 1970-01-01.
        assert_eq!(col("day").as_primitive::<Date32Type>().value(0), 19_875);
        let at = col("at");
        assert_eq!(
            at.as_primitive::<TimestampMicrosecondType>().value(0),
            "2024-06-01T10:30:00.123456Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_microsecond()
        );
        let at_tz = col("at_tz");
        assert_eq!(
            at_tz.data_type(),
            &arrow_schema::DataType::Timestamp(
                arrow_schema::TimeUnit::Microsecond,
                Some("UTC".into())
            )
        );
        assert_eq!(
            at_tz.as_primitive::<TimestampMicrosecondType>().value(0),
            "2024-06-01T10:00:00Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_microsecond()
        );
        assert_eq!(
            col("uid").as_string::<i32>().value(0),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(col("doc").as_string::<i32>().value(0), "{\"a\": 1}");
        assert_eq!(col("docb").as_string::<i32>().value(0), "{\"b\": [1, 2]}");
        assert_eq!(col("raw").as_binary::<i32>().value(0), &[0x00, 0xff, 0x10]);
        let tags = col("tags");
        let tags = tags.as_list::<i32>();
        let first = tags.value(0);
        let first = first.as_string::<i32>();
        assert_eq!(
            (
                first.len(),
                first.value(0),
                first.is_null(1),
                first.value(2)
            ),
            (3, "x", true, "z")
        );
        assert!(tags.is_null(1));
        let nums = col("nums");
        let nums = nums.as_list::<i32>();
        assert_eq!(
            nums.value(0).as_primitive::<Int32Type>().values(),
            &[1, 2, 3]
        );
        assert_eq!(nums.value(1).len(), 0, "an empty array is an empty list");
        assert_eq!(col("_run_id").as_string::<i32>().value(0), "20240602_0000");

        // The run id is bound: a quote in it is data, not SQL.
        let mut req = request(dir.path(), &url, "SELECT * FROM t WHERE run = :run_id");
        req.keys.run_id = "r1' OR '1'='1".into();
        let s = crate::run(&req, &SystemClock, None, &mut std::io::sink()).unwrap();
        assert_eq!(s.rows_loaded(), 0);
        req.keys.run_id = "r1".into();
        let s = crate::run(&req, &SystemClock, None, &mut std::io::sink()).unwrap();
        assert_eq!(s.rows_loaded(), 1);

        // A type extract cannot read is named, with what to do.
        let err = crate::run(
            &request(dir.path(), &url, "SELECT id, '1'::money AS cash FROM t"),
            &SystemClock,
            None,
            &mut std::io::sink(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("column `cash` has type `money`") && err.contains("cash::text"),
            "{err}"
        );
        // The partition written before is still there, whole.
        assert_eq!(read(dir.path()).num_rows(), 1);

        // A sensor's condition on the same connection, with the same keys.
        let req = request(dir.path(), &url, "");
        let poke = |sql: &str| {
            let sensor = nightshift_core::kinds::SensorRequest {
                condition: nightshift_core::kinds::SensorCondition::Sql {
                    connection: "src".into(),
                    sql: sql.into(),
                },
                connection: Some(req.connection.clone()),
                keys: req.keys.clone(),
            };
            crate::condition_holds(&sensor, sql)
        };
        assert!(poke("SELECT COUNT(*) FROM t WHERE day = :ds").unwrap());
        assert!(!poke("SELECT COUNT(*) FROM t WHERE day > :ds + 5").unwrap());
        assert!(poke("SELECT max(day) FROM t").unwrap(), "a date is there");
        assert!(
            !poke("SELECT max(day) FROM t WHERE false").unwrap(),
            "NULL is not"
        );
        assert!(!poke("SELECT name FROM t WHERE id = 2").unwrap());
        assert!(
            poke("SELECT no_such_column FROM t")
                .unwrap_err()
                .to_string()
                .contains("no_such_column")
        );
    }
}
