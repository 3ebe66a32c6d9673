//! How each task kind becomes a command line: nightshift's own kinds re-execute this binary
//! as `nightshift __<kind> REQUEST` with a JSON request built from the run and the store;
//! dbt's argv lives in [`crate::dbt`]; shell tasks are their argv, templated.

use std::time::Duration;

use nightshift_core::TaskState;
use nightshift_core::template::Context;
use nightshift_core::time::from_micros;

use crate::attempt::TryCtx;
use crate::dbt;

/// argv of a notify try: `nightshift __notify REQUEST`, with the run's summary as the store
/// has it now. Webhook URLs stay in the environment (`url_env`), out of argv and logs.
pub(crate) fn notify_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::NotifySpec,
) -> Result<Vec<String>, String> {
    use nightshift_core::pipeline::{NotifyRequest, TaskSummary};
    let tis = c
        .store
        .task_instances(c.run.pk)
        .map_err(|e| e.to_string())?;
    let tries = c.store.tries(c.run.pk).map_err(|e| e.to_string())?;
    let mut tasks = vec![];
    let mut failed = false;
    let mut rows = 0;
    for ti in tis.iter().filter(|t| t.pk != c.ti.pk) {
        let last = tries
            .iter()
            .filter(|t| t.ti_pk == ti.pk)
            .max_by_key(|t| t.try_number);
        failed |= ti.state.is_failure();
        if ti.state == TaskState::Success {
            rows += last.and_then(|t| t.rows_loaded).unwrap_or(0);
        }
        tasks.push(TaskSummary {
            task_id: ti.task_id.clone(),
            state: ti.state.as_str().to_owned(),
            tries: tries.iter().filter(|t| t.ti_pk == ti.pk).count() as u32,
            duration_ms: last.and_then(|t| t.duration_ms),
            error: last.and_then(|t| t.error.clone()),
        });
    }
    let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
    let failed_checks = nodes
        .iter()
        .filter(|(_, _, n)| {
            n.resource_type == "test" && matches!(n.status.as_str(), "fail" | "error")
        })
        .map(|(_, _, n)| n.unique_id.clone())
        .collect();
    let channels = spec
        .channels
        .iter()
        .map(|name| {
            c.channels
                .get(name)
                .map(|ch| (name.clone(), ch.clone()))
                .ok_or_else(|| format!("unknown channel `{name}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = NotifyRequest {
        pipeline: c.run.pipeline.clone(),
        run_id: c.run.run_id.clone(),
        ds: c.run.logical_date.clone(),
        status: if failed { "FAILED" } else { "SUCCESS" }.to_owned(),
        rows_loaded: rows,
        tasks,
        failed_checks,
        channels,
        project_dir: c.project_dir.to_string_lossy().into_owned(),
    };
    internal_argv("__notify", &request)
}

/// argv of a publish try: `nightshift __publish REQUEST`. Refuses when a dbt test of this
/// run failed, whatever the trigger rules let through: only tested data is published.
pub(crate) fn publish_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::PublishSpec,
    ctx: &Context,
    dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
    // The latest try of each dbt task speaks for it.
    let mut latest: std::collections::BTreeMap<&str, u32> = Default::default();
    for (task, try_number, _) in &nodes {
        let e = latest.entry(task.as_str()).or_insert(0);
        *e = (*e).max(*try_number);
    }
    let mut checks: std::collections::BTreeMap<String, u32> = Default::default();
    let mut invocation = None;
    for (task, try_number, n) in &nodes {
        if latest.get(task.as_str()) != Some(try_number) {
            continue;
        }
        invocation = invocation.or(n.invocation_id.clone());
        if n.resource_type == "test" {
            *checks.entry(n.status.clone()).or_insert(0) += 1;
        }
    }
    let bad = checks.get("fail").copied().unwrap_or(0) + checks.get("error").copied().unwrap_or(0);
    if bad > 0 {
        return Err(format!(
            "refusing to publish: {bad} dbt test(s) of this run failed"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let (dbt_argv, dbt_env) = dbt::command(&spec.dbt, &c.project_dir, dir, ctx, None);
    let request = nightshift_core::pipeline::PublishRequest {
        outputs: spec.outputs.clone(),
        root: c
            .project_dir
            .join(&spec.output)
            .to_string_lossy()
            .into_owned(),
        dbt_argv,
        dbt_env,
        ds: c.run.logical_date.clone(),
        run_id: c.run.run_id.clone(),
        checks,
        dbt_invocation_id: invocation,
    };
    internal_argv("__publish", &request)
}

/// The values of the project's secret environment variables (short values are left alone:
/// masking `1` would garble every log).
pub(crate) fn secret_values(settings: &nightshift_core::ProjectSettings) -> Vec<String> {
    let mut names: Vec<&str> = settings.secrets.iter().map(String::as_str).collect();
    use nightshift_core::project::Channel;
    for ch in settings.channels.values() {
        match ch {
            Channel::Webhook {
                url_env: Some(v), ..
            } => names.push(v),
            Channel::Smtp {
                username_env,
                password_env,
                ..
            } => names.extend(username_env.iter().chain(password_env).map(String::as_str)),
            _ => {}
        }
    }
    names.push(&settings.web.token_env);
    #[allow(clippy::disallowed_methods)]
    names
        .into_iter()
        .filter_map(|n| std::env::var(n).ok())
        // A token written in nightshift.toml is a secret too.
        .chain(settings.web.token.clone())
        .filter(|v| v.len() >= 4)
        .collect()
}

/// argv of a built-in kind: this binary, re-executed as `nightshift __<kind> REQUEST`.
pub(crate) fn internal_argv(
    kind: &str,
    request: &impl serde::Serialize,
) -> Result<Vec<String>, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the nightshift binary: {e}"))?;
    let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
    Ok(vec![
        exe.to_string_lossy().into_owned(),
        kind.to_owned(),
        json,
    ])
}

/// One sensor poke runs at most this long.
pub(crate) const POKE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn describe_condition(c: &nightshift_core::pipeline::SensorCondition) -> String {
    match c {
        nightshift_core::pipeline::SensorCondition::Sql { connection, sql } => {
            format!("`{sql}` on `{connection}`")
        }
        nightshift_core::pipeline::SensorCondition::Path { path } => format!("`{path}` to exist"),
    }
}

/// A named connection as a child process needs it: paths made absolute.
pub(crate) fn resolve_connection(
    c: &TryCtx,
    name: &str,
) -> Result<nightshift_core::project::Connection, String> {
    use nightshift_core::project::Connection;
    match c.connections.get(name) {
        Some(Connection::Sqlite { path }) => Ok(Connection::Sqlite {
            path: c.project_dir.join(path).to_string_lossy().into_owned(),
        }),
        None => Err(format!("unknown connection `{name}`")),
    }
}

/// argv of a sensor poke: this binary, re-executed as `nightshift __sensor REQUEST`.
pub(crate) fn sensor_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::SensorSpec,
    ctx: &Context,
) -> Result<Vec<String>, String> {
    use nightshift_core::pipeline::{SensorCondition, SensorRequest};
    let (condition, connection) = match &spec.condition {
        SensorCondition::Sql { connection, sql } => {
            let conn = resolve_connection(c, connection)?;
            (
                SensorCondition::Sql {
                    connection: connection.clone(),
                    sql: sql.clone(),
                },
                Some(conn),
            )
        }
        SensorCondition::Path { path } => (
            SensorCondition::Path {
                path: c
                    .project_dir
                    .join(ctx.render(path))
                    .to_string_lossy()
                    .into_owned(),
            },
            None,
        ),
    };
    let request = SensorRequest {
        condition,
        connection,
        ds: c.run.logical_date.clone(),
        start: rfc3339(c.run.data_interval_start),
        end: rfc3339(c.run.data_interval_end),
        run_id: c.run.run_id.clone(),
    };
    internal_argv("__sensor", &request)
}

/// argv of an extract try: this binary, re-executed as `nightshift __extract REQUEST`.
pub(crate) fn extract_argv(
    c: &TryCtx,
    spec: &nightshift_core::pipeline::ExtractSpec,
) -> Result<Vec<String>, String> {
    let connection = resolve_connection(c, &spec.connection)?;
    let mut history: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let recent = c
        .store
        .recent_metrics(&c.run.pipeline, &c.ti.task_id, c.run.data_interval_start, 7)
        .unwrap_or_default();
    for m in recent {
        let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, f64>>(&m) else {
            continue;
        };
        for t in &spec.tables {
            if let Some(v) = map.get(&format!("rows.{}", t.name)) {
                history.entry(t.name.clone()).or_default().push(*v as i64);
            }
        }
    }
    let request = nightshift_core::pipeline::ExtractRequest {
        spec: spec.clone(),
        connection,
        project_dir: c.project_dir.to_string_lossy().into_owned(),
        ds: c.run.logical_date.clone(),
        start: rfc3339(c.run.data_interval_start),
        end: rfc3339(c.run.data_interval_end),
        run_id: c.run.run_id.clone(),
        history,
    };
    internal_argv("__extract", &request)
}

pub(crate) fn rfc3339(us: i64) -> String {
    from_micros(us).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
