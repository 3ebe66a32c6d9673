//! Built-in task kinds run as child processes of the engine (`nightshift __<kind>`), so
//! timeouts, kills, logs and recovery work for them exactly as for shell tasks.

use anyhow::{Context as _, Result};
use nightshift_core::kinds::{
    ExtractRequest, LoadRequest, NotifyRequest, PublishRequest, SENSOR_NOT_YET, SensorCondition,
    SensorRequest, SqlRequest,
};
use nightshift_core::project::Channel;

use crate::output;

// Real time on purpose in these children: `_extracted_at` is compared by dbt's source
// freshness with the warehouse's clock, and a manifest says when data was really published,
// whatever clock the scheduler runs on.
use nightshift_core::clock::SystemClock;

pub fn extract(request: &str) -> Result<i32> {
    let req: ExtractRequest =
        serde_json::from_str(request).context("reading the extract request")?;
    let metrics = crate::env::metrics_file();
    let mut log = std::io::stdout();
    match nightshift_extract::run(&req, &SystemClock, metrics.as_deref(), &mut log) {
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
        SensorCondition::Sql { sql, .. } => match nightshift_extract::condition_holds(&req, sql) {
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
        },
    };
    Ok(if ready { 0 } else { SENSOR_NOT_YET })
}

/// Runs the statements in one transaction; says how many rows each changed.
pub fn sql(request: &str) -> Result<i32> {
    let req: SqlRequest = serde_json::from_str(request).context("reading the sql request")?;
    let metrics = crate::env::metrics_file();
    match nightshift_extract::execute(&req, metrics.as_deref()) {
        Ok(changed) => {
            for (sql, n) in req.spec.statements.iter().zip(&changed) {
                output::line(format!("{n} row(s): {}", sql.trim()));
            }
            Ok(0)
        }
        Err(e) => {
            output::note(format!("error: {e}"));
            Ok(1)
        }
    }
}

pub fn load(request: &str) -> Result<i32> {
    let req: LoadRequest = serde_json::from_str(request).context("reading the load request")?;
    let metrics = crate::env::metrics_file();
    let mut log = std::io::stdout();
    match nightshift_extract::load(&req, metrics.as_deref(), &mut log) {
        Ok(loaded) => {
            output::line(format!(
                "loaded {} rows into {} table(s)",
                loaded.iter().map(|t| t.rows).sum::<i64>(),
                loaded.len()
            ));
            Ok(0)
        }
        Err(e) => {
            output::note(format!("error: {e}"));
            Ok(1)
        }
    }
}

pub fn publish(request: &str) -> Result<i32> {
    let req: PublishRequest =
        serde_json::from_str(request).context("reading the publish request")?;
    let mut log = std::io::stdout();
    match nightshift_extract::publish(&req, &SystemClock, &mut log) {
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

/// The summary as text: one line for the run, one per task.
fn summary_text(r: &NotifyRequest) -> String {
    let mut out = format!(
        "nightshift: {} {} (ds {}) {} — rows_loaded={}",
        r.keys.pipeline, r.keys.run_id, r.keys.ds, r.status, r.rows_loaded
    );
    for t in &r.tasks {
        let dur = t
            .duration_ms
            .map(|d| format!(" in {:.1}s", d as f64 / 1000.0))
            .unwrap_or_default();
        let err = t
            .error
            .as_deref()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n  {}: {}{dur} ({} tr{}){err}",
            t.task_id,
            t.state,
            t.tries,
            if t.tries == 1 { "y" } else { "ies" }
        ));
    }
    if !r.failed_checks.is_empty() {
        out.push_str(&format!(
            "\n  failed checks: {}",
            r.failed_checks.join(", ")
        ));
    }
    out
}

/// The request of a built-in kind: `@FILE` (what the engine passes: the file is removed
/// once read, so its secrets do not stay on disk), or the JSON itself.
pub fn request_text(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the request `{path}`"))?;
            let _ = std::fs::remove_file(path);
            Ok(text)
        }
        None => Ok(arg.to_owned()),
    }
}

/// Sends the run summary to each channel; fails (to be retried per policy) when a channel
/// could not be reached after its own retries.
pub fn notify(request: &str) -> Result<i32> {
    let req: NotifyRequest = serde_json::from_str(request).context("reading the notify request")?;
    let text = summary_text(&req);
    let msg = nightshift_alert::Message {
        subject: format!(
            "[nightshift] {} {} (ds {}): {}",
            req.keys.pipeline, req.keys.run_id, req.keys.ds, req.status
        ),
        text: text.clone(),
        data: serde_json::json!({
            "pipeline": req.keys.pipeline, "run_id": req.keys.run_id, "ds": req.keys.ds, "status": req.status,
            "rows_loaded": req.rows_loaded, "tasks": req.tasks, "failed_checks": req.failed_checks,
        }),
        link: None,
    };
    let dir = std::path::Path::new(&req.project_dir);
    let mut failures = vec![];
    for (name, channel) in &req.channels {
        if matches!(channel, Channel::Log) {
            output::line(&text);
        }
        let env = &nightshift_alert::channel::process_env;
        let target = nightshift_alert::describe(channel, env);
        let out =
            nightshift_alert::deliver_reporting(name, channel, &msg, dir, env, &mut |n, e| {
                output::note(format!("channel `{name}`: attempt {n} failed: {e}"));
            });
        match out.error {
            None => output::line(format!("channel `{name}`: delivered to {target}")),
            Some(e) => failures.push(format!("channel `{name}` ({target}): {e}")),
        }
    }
    if failures.is_empty() {
        Ok(0)
    } else {
        output::note(format!("error: {}", failures.join("; ")));
        Ok(1)
    }
}

/// A warm dbt try: hands the invocation to the project's long-lived dbt worker (started by
/// the engine) and copies dbt's events to stdout, the try's log; exits as dbt would. Stopped
/// by a signal (a timeout, a cancel), it just ends: the worker sees its client gone,
/// interrupts dbt and ends too.
pub fn dbt_warm(request: &str, extra: &[String]) -> Result<i32> {
    use std::io::{BufRead, Write};
    let mut req: nightshift_core::kinds::DbtWarmRequest =
        serde_json::from_str(request).context("reading the warm dbt request")?;
    req.argv.extend(extra.iter().cloned());
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let call = serde_json::json!({
        "argv": req.argv,
        "parse_argv": req.parse_argv,
        "manifest_key": req.manifest_key,
        "cwd": cwd,
        "env": crate::env::all(),
    });
    let failed = |why: String| -> Result<i32> {
        // As a dbt event, so the try's log shows it like dbt's own lines; and where the
        // engine reads why the try failed.
        let msg = serde_json::json!({"info": {"level": "error", "msg": why}});
        output::line(msg.to_string());
        let _ = std::fs::write(
            std::path::Path::new(&req.target_dir).join("warm_error.txt"),
            &why,
        );
        Ok(2)
    };
    // The socket is named relative to its folder: a socket path is limited to about 100
    // bytes, and project paths can be longer.
    std::env::set_current_dir(&req.socket_dir)
        .with_context(|| format!("entering `{}`", req.socket_dir))?;
    let started = std::time::Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&req.socket) {
            Ok(s) => break s,
            // The worker is starting (its socket appears within a moment).
            Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                return failed(format!(
                    "the warm dbt worker did not answer at `{}/{}`: {e}",
                    req.socket_dir, req.socket
                ));
            }
        }
    };
    let mut writer = stream.try_clone().context("the worker's socket")?;
    writer
        .write_all(format!("{call}\n").as_bytes())
        .context("sending the call to the warm dbt worker")?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(code) = v.get("exit").and_then(|c| c.as_i64())
        {
            return Ok(code as i32);
        }
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    drop(out);
    failed(
        "the warm dbt worker ended without an answer (it crashed or was stopped); the next call starts a fresh one"
            .to_owned(),
    )
}
