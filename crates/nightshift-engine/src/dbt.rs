//! The dbt task kind: the command line for one try, and what its artifacts say.
//!
//! Facts this relies on (checked with dbt-core 1.11.16, see `docs/dbt-facts.md`):
//! exit 0 is success (warnings too), 1 is finished-with-failures and leaves
//! `run_results.json`, 2 is could-not-run; SIGINT cancels running queries and writes partial
//! results, SIGTERM does neither, so a timeout sends SIGINT first. Each try gets its own
//! `--target-path`, so concurrent runs never overwrite each other's artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nightshift_core::kinds::DbtSpec;
use nightshift_core::template::Context;
use nightshift_store::DbtNode;
use serde::Deserialize;

/// Where one try's artifacts go: `.nightshift/dbt/<pipeline>/<run_id>/<task>/try-<n>`.
pub fn try_dir(
    project: &Path,
    pipeline: &str,
    run_id: &str,
    task: &str,
    try_number: u32,
) -> PathBuf {
    project
        .join(".nightshift/dbt")
        .join(pipeline)
        .join(run_id)
        .join(task)
        .join(format!("try-{try_number}"))
}

#[derive(Debug, Default, Deserialize)]
struct RunResults {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    results: Vec<NodeResult>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    invocation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NodeResult {
    unique_id: String,
    status: String,
    #[serde(default)]
    execution_time: Option<f64>,
    #[serde(default)]
    failures: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    adapter_response: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
struct Sources {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    results: Vec<SourceResult>,
}

#[derive(Debug, Deserialize)]
struct SourceResult {
    unique_id: String,
    status: String,
    #[serde(default)]
    execution_time: Option<f64>,
    #[serde(default)]
    max_loaded_at_time_ago_in_s: Option<f64>,
}

/// The node results of a finished try, if dbt wrote them: `run_results.json`, or for
/// `source freshness` its `sources.json`.
pub fn read_results(dir: &Path) -> Option<Vec<DbtNode>> {
    if let Ok(text) = std::fs::read_to_string(dir.join("sources.json"))
        && !dir.join("run_results.json").exists()
    {
        let s: Sources = serde_json::from_str(&text).ok()?;
        return Some(
            s.results
                .into_iter()
                .map(|r| DbtNode {
                    resource_type: "source".to_owned(),
                    message: r
                        .max_loaded_at_time_ago_in_s
                        .map(|a| format!("loaded {a:.0} s ago")),
                    unique_id: r.unique_id,
                    status: r.status,
                    execution_time: r.execution_time,
                    failures: None,
                    rows_affected: None,
                    invocation_id: s.metadata.invocation_id.clone(),
                })
                .collect(),
        );
    }
    let text = std::fs::read_to_string(dir.join("run_results.json")).ok()?;
    let rr: RunResults = serde_json::from_str(&text).ok()?;
    Some(
        rr.results
            .into_iter()
            .map(|n| DbtNode {
                resource_type: n.unique_id.split('.').next().unwrap_or("").to_owned(),
                rows_affected: n
                    .adapter_response
                    .get("rows_affected")
                    .and_then(|v| v.as_i64()),
                unique_id: n.unique_id,
                status: n.status,
                execution_time: n.execution_time,
                failures: n.failures,
                message: n.message,
                invocation_id: rr.metadata.invocation_id.clone(),
            })
            .collect(),
    )
}

fn failed(status: &str) -> bool {
    matches!(status, "error" | "fail" | "runtime error")
}

/// Figures for the try's metrics (`dbt.success`, `dbt.error`, `dbt.fail`, …).
pub fn summary(nodes: &[DbtNode]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for n in nodes {
        *m.entry(format!("dbt.{}", n.status.replace(' ', "_")))
            .or_insert(0.0) += 1.0;
    }
    m
}

/// A one-line reason for a failed try, from its node results.
pub fn failure_reason(nodes: &[DbtNode]) -> Option<String> {
    let errors = nodes
        .iter()
        .filter(|n| n.status == "error" || n.status == "runtime error")
        .count();
    let fails = nodes.iter().filter(|n| n.status == "fail").count();
    if errors + fails == 0 {
        return None;
    }
    let first = nodes.iter().find(|n| failed(&n.status))?;
    let msg = first
        .message
        .as_deref()
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    Some(format!(
        "dbt: {errors} error(s), {fails} failed test(s); first: {} ({msg})",
        first.unique_id
    ))
}

/// Nodes a retry must run: those that failed or were skipped in the previous try, when that
/// try finished with results (a crash or timeout leaves none, and everything runs again).
pub fn remaining_nodes(prev: &[DbtNode]) -> Option<Vec<String>> {
    let done = prev
        .iter()
        .filter(|n| matches!(n.status.as_str(), "success" | "pass" | "warn"))
        .count();
    let todo: Vec<String> = prev
        .iter()
        .filter(|n| failed(&n.status) || n.status == "skipped")
        // Selection by name: `model.shop.fct_orders` → `fct_orders`.
        .filter_map(|n| n.unique_id.split('.').nth(2).map(str::to_owned))
        .collect();
    (done > 0 && !todo.is_empty()).then_some(todo)
}

/// argv and extra environment of one dbt try.
pub fn command(
    spec: &DbtSpec,
    project: &Path,
    dir: &Path,
    ctx: &Context,
    retry_only: Option<&[String]>,
) -> (Vec<String>, Vec<(String, String)>) {
    let exe = match &spec.executable {
        Some(e) if e.contains('/') => project.join(e).to_string_lossy().into_owned(),
        Some(e) => e.clone(),
        None => {
            let venv = project.join(".venv/bin/dbt");
            if venv.exists() {
                venv.to_string_lossy().into_owned()
            } else {
                "dbt".to_owned()
            }
        }
    };
    let mut vars = serde_json::Map::new();
    for (k, v) in &spec.vars {
        vars.insert(k.clone(), ctx.render(v).into());
    }
    vars.insert("ds".into(), ctx.keys.ds_text().into());
    vars.insert("data_interval_start".into(), ctx.keys.start_text().into());
    vars.insert("data_interval_end".into(), ctx.keys.end_text().into());
    vars.insert("run_id".into(), ctx.keys.run_id.clone().into());
    let dir_s = dir.to_string_lossy().into_owned();
    let mut argv = vec![exe];
    argv.extend(spec.command.iter().cloned());
    argv.extend([
        "--project-dir".to_owned(),
        project
            .join(&spec.project_dir)
            .to_string_lossy()
            .into_owned(),
        "--profiles-dir".to_owned(),
        project
            .join(&spec.profiles_dir)
            .to_string_lossy()
            .into_owned(),
        "--target-path".to_owned(),
        dir_s.clone(),
        "--log-path".to_owned(),
        dir_s,
        "--log-format".to_owned(),
        "json".to_owned(),
        "--no-use-colors".to_owned(),
        "--vars".to_owned(),
        serde_json::Value::Object(vars).to_string(),
    ]);
    if let Some(t) = &spec.target {
        argv.extend(["--target".to_owned(), t.clone()]);
    }
    match retry_only {
        Some(nodes) => {
            argv.push("--select".to_owned());
            argv.extend(nodes.iter().cloned());
        }
        None => {
            if !spec.select.is_empty() {
                argv.push("--select".to_owned());
                argv.extend(spec.select.iter().map(|s| ctx.render(s)));
            }
            if let Some(s) = &spec.selector {
                argv.extend(["--selector".to_owned(), s.clone()]);
            }
        }
    }
    if !spec.exclude.is_empty() {
        argv.push("--exclude".to_owned());
        argv.extend(spec.exclude.iter().map(|s| ctx.render(s)));
    }
    if let Some(t) = spec.threads {
        argv.extend(["--threads".to_owned(), t.to_string()]);
    }
    argv.extend(spec.args.iter().map(|a| ctx.render(a)));
    let env = vec![
        // No tracking calls from a machine that may not reach dbt's host (0.3-0.6 s each).
        (
            "DBT_SEND_ANONYMOUS_USAGE_STATS".to_owned(),
            "false".to_owned(),
        ),
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
        // Stamps nightshift's run id into run_results.json (metadata.env).
        (
            "DBT_ENV_CUSTOM_ENV_NIGHTSHIFT_RUN_ID".to_owned(),
            ctx.keys.run_id.clone(),
        ),
    ];
    (argv, env)
}

/// A readable line from one of dbt's JSON log events (`--log-format json`), so a try's log
/// shows which model runs now.
pub fn log_line(raw: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let msg = v.get("info")?.get("msg")?.as_str()?;
    let level = v
        .get("info")
        .and_then(|i| i.get("level"))
        .and_then(|l| l.as_str())
        .unwrap_or("info");
    Some(if level == "info" {
        msg.to_owned()
    } else {
        format!("{level}: {msg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, status: &str) -> DbtNode {
        DbtNode {
            unique_id: id.into(),
            resource_type: id.split('.').next().unwrap().into(),
            status: status.into(),
            execution_time: None,
            failures: None,
            rows_affected: None,
            message: Some("Got 1 result, configured to fail if != 0".into()),
            invocation_id: None,
        }
    }

    #[test]
    fn a_retry_selects_only_what_did_not_succeed() {
        let prev = [
            node("model.shop.stg_orders", "success"),
            node("model.shop.fct_orders", "error"),
            node("test.shop.unique_fct_orders_order_id.abc", "skipped"),
            node("model.shop.fct_daily_revenue", "skipped"),
        ];
        assert_eq!(
            remaining_nodes(&prev).unwrap(),
            [
                "fct_orders",
                "unique_fct_orders_order_id",
                "fct_daily_revenue"
            ]
        );
        assert_eq!(
            remaining_nodes(&[node("model.shop.a", "error")]),
            None,
            "nothing succeeded: run everything"
        );
        assert_eq!(
            failure_reason(&prev).unwrap(),
            "dbt: 1 error(s), 0 failed test(s); first: model.shop.fct_orders (Got 1 result, configured to fail if != 0)"
        );
    }

    #[test]
    fn reads_a_run_results_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("run_results.json"),
            r#"{"metadata": {"invocation_id": "abc", "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v6.json"},
                "results": [{"unique_id": "test.shop.t.1", "status": "fail", "failures": 3, "execution_time": 0.1,
                             "message": "Got 3 results", "adapter_response": {"_message": "OK"}, "timing": []},
                            {"unique_id": "seed.shop.s", "status": "success", "adapter_response": {"rows_affected": 100}}],
                "elapsed_time": 1.0, "args": {}}"#,
        )
        .unwrap();
        let nodes = read_results(dir.path()).unwrap();
        assert_eq!(nodes[0].failures, Some(3));
        assert_eq!(nodes[0].resource_type, "test");
        assert_eq!(nodes[1].rows_affected, Some(100));
        assert_eq!(nodes[1].invocation_id.as_deref(), Some("abc"));
        assert_eq!(summary(&nodes)["dbt.fail"], 1.0);
    }

    #[test]
    fn json_log_lines_become_text() {
        let raw = r#"{"info": {"name": "LogStartLine", "level": "info", "msg": "1 of 5 START sql view model main.stg_orders"}, "data": {}}"#;
        assert_eq!(
            log_line(raw).unwrap(),
            "1 of 5 START sql view model main.stg_orders"
        );
        assert_eq!(log_line("not json"), None);
    }
}
