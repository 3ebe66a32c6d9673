//! Built-in task kinds run as child processes of the engine (`nightshift __<kind>`), so
//! timeouts, kills, logs and recovery work for them exactly as for shell tasks.

use anyhow::{Context as _, Result};
use nightshift_core::pipeline::{
    ExtractRequest, PublishRequest, SENSOR_NOT_YET, SensorCondition, SensorRequest,
};
use nightshift_core::project::Connection;
use rusqlite::types::ValueRef;

use crate::output;

pub fn extract(request: &str) -> Result<i32> {
    let req: ExtractRequest =
        serde_json::from_str(request).context("reading the extract request")?;
    #[allow(clippy::disallowed_methods)]
    let metrics = std::env::var_os("NIGHTSHIFT_METRICS").map(std::path::PathBuf::from);
    let mut log = std::io::stdout();
    match nightshift_extract::run(&req, metrics.as_deref(), &mut log) {
        Ok(summary) => {
            output::line(format!(
                "extracted {} rows in {} table(s)",
                summary.rows_loaded(),
                summary.tables.len()
            ));
            Ok(0)
        }
        Err(e) => {
            output::note(format!("error: {e}"));
            Ok(1)
        }
    }
}

/// One poke: exit 0 when the condition holds, `SENSOR_NOT_YET` when it does not yet, 1 when
/// it cannot be evaluated (a bad query, a missing source file).
pub fn sensor(request: &str) -> Result<i32> {
    let req: SensorRequest = serde_json::from_str(request).context("reading the sensor request")?;
    let ready = match &req.condition {
        SensorCondition::Path { path } => {
            let ok = std::path::Path::new(path).exists();
            output::line(format!(
                "{} `{path}`",
                if ok { "found" } else { "waiting for" }
            ));
            ok
        }
        SensorCondition::Sql { sql, .. } => {
            let Some(Connection::Sqlite { path }) = &req.connection else {
                output::note("error: the sensor has no connection");
                return Ok(1);
            };
            match poke_sql(path, sql, &req) {
                Ok(ok) => {
                    output::line(format!(
                        "`{sql}` is {}",
                        if ok { "true" } else { "not true yet" }
                    ));
                    ok
                }
                Err(e) => {
                    output::note(format!("error: {e}"));
                    return Ok(1);
                }
            }
        }
    };
    Ok(if ready { 0 } else { SENSOR_NOT_YET })
}

fn poke_sql(path: &str, sql: &str, req: &SensorRequest) -> Result<bool> {
    if !std::path::Path::new(path).exists() {
        anyhow::bail!("the source database `{path}` does not exist");
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening `{path}`"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut stmt = conn
        .prepare(sql)
        .with_context(|| format!("preparing `{sql}`"))?;
    for i in 1..=stmt.parameter_count() {
        let v = match stmt.parameter_name(i) {
            Some(":start") => &req.start,
            Some(":end") => &req.end,
            Some(":ds") => &req.ds,
            Some(":run_id") => &req.run_id,
            other => anyhow::bail!("unknown query parameter `{}`", other.unwrap_or("?")),
        };
        stmt.raw_bind_parameter(i, v)?;
    }
    let mut rows = stmt.raw_query();
    let Some(row) = rows.next()? else {
        return Ok(false);
    };
    Ok(match row.get_ref(0)? {
        ValueRef::Null => false,
        ValueRef::Integer(n) => n != 0,
        ValueRef::Real(f) => f != 0.0,
        ValueRef::Text(t) => !t.is_empty(),
        ValueRef::Blob(b) => !b.is_empty(),
    })
}

pub fn publish(request: &str) -> Result<i32> {
    let req: PublishRequest =
        serde_json::from_str(request).context("reading the publish request")?;
    let mut log = std::io::stdout();
    match nightshift_extract::publish(&req, &mut log) {
        Ok(done) => {
            let rows: i64 = done.iter().map(|d| d.1).sum();
            output::line(format!("published {} output(s), {rows} rows", done.len()));
            Ok(0)
        }
        Err(e) => {
            output::note(format!("error: {e}"));
            Ok(1)
        }
    }
}
