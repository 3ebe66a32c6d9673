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
    #[serde(default)]
    criteria: Criteria,
}

#[derive(Debug, Default, Deserialize)]
struct Criteria {
    #[serde(default)]
    warn_after: Threshold,
    #[serde(default)]
    error_after: Threshold,
}

#[derive(Debug, Default, Deserialize)]
struct Threshold {
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    period: Option<String>,
}

impl Threshold {
    /// `(count, unit, seconds per unit)`, when set.
    fn get(&self) -> Option<(i64, &'static str, f64)> {
        let (unit, secs) = match self.period.as_deref()? {
            "minute" => ("min", 60.0),
            "hour" => ("h", 3600.0),
            "day" => ("d", 86_400.0),
            _ => return None,
        };
        Some((self.count?, unit, secs))
    }
}

/// A source's age and the threshold it was held to, as people read them:
/// `loaded 21 h ago; error after 24 h` (in the threshold's unit).
fn freshness_message(status: &str, age_s: Option<f64>, c: &Criteria) -> Option<String> {
    let age_s = age_s?;
    let (kind, t) = match (status, c.error_after.get(), c.warn_after.get()) {
        ("error", Some(e), _) => ("error after", Some(e)),
        ("warn", _, Some(w)) => ("warn after", Some(w)),
        (_, Some(e), _) => ("error after", Some(e)),
        (_, None, w) => ("warn after", w),
    };
    let (unit, secs) = t.map_or_else(
        || {
            if age_s >= 86_400.0 {
                ("d", 86_400.0)
            } else if age_s >= 3600.0 {
                ("h", 3600.0)
            } else {
                ("min", 60.0)
            }
        },
        |(_, u, s)| (u, s),
    );
    let age = age_s / secs;
    let age = if age >= 10.0 || age.fract() < 0.05 {
        format!("{age:.0}")
    } else {
        format!("{age:.1}")
    };
    Some(match t {
        Some((count, unit, _)) => format!("loaded {age} {unit} ago; {kind} {count} {unit}"),
        None => format!("loaded {age} {unit} ago"),
    })
}

/// The longest message kept per node, and for a try's error.
pub const MESSAGE_MAX: usize = 4096;

fn capped(text: &str) -> String {
    if text.len() <= MESSAGE_MAX {
        return text.to_owned();
    }
    let mut end = MESSAGE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
                    message: freshness_message(
                        &r.status,
                        r.max_loaded_at_time_ago_in_s,
                        &r.criteria,
                    ),
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
                message: n.message.as_deref().map(capped),
                invocation_id: rr.metadata.invocation_id.clone(),
            })
            .collect(),
    )
}

/// Whether a node's status is a failure (a model's error, a test's fail, a stale source).
pub fn failed(status: &str) -> bool {
    matches!(status, "error" | "fail" | "runtime error")
}

/// Where a node comes in a list people read: failures, then warnings, then the rest.
pub fn attention(status: &str) -> u8 {
    match status {
        s if failed(s) => 0,
        "warn" => 1,
        _ => 2,
    }
}

/// Figures for the try's metrics (`dbt.success`, `dbt.error`, `dbt.fail`, …), and the rows
/// its seeds loaded as its `rows_loaded` (the only rows dbt itself loads into the warehouse).
pub fn summary(nodes: &[DbtNode]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for n in nodes {
        *m.entry(format!("dbt.{}", n.status.replace(' ', "_")))
            .or_insert(0.0) += 1.0;
        if n.resource_type == "seed"
            && let Some(rows) = n.rows_affected.filter(|r| *r > 0)
        {
            *m.entry("rows_loaded".to_owned()).or_insert(0.0) += rows as f64;
        }
    }
    m
}

/// Why a try failed, from its node results: how many nodes failed, then each failed node
/// with its whole message (all its lines), within 4 KiB.
pub fn failure_reason(nodes: &[DbtNode]) -> Option<String> {
    let bad: Vec<&DbtNode> = nodes.iter().filter(|n| failed(&n.status)).collect();
    if bad.is_empty() {
        return None;
    }
    let head = if bad.iter().all(|n| n.resource_type == "source") {
        format!("dbt: {} source(s) not fresh enough", bad.len())
    } else {
        let errors = bad.iter().filter(|n| n.status != "fail").count();
        let fails = bad.len() - errors;
        format!("dbt: {errors} error(s), {fails} failed test(s)")
    };
    let mut out = head;
    for (i, n) in bad.iter().enumerate() {
        let msg = n.message.as_deref().unwrap_or("").trim();
        let item = if msg.contains('\n') {
            format!("\n{}:\n{msg}", short_name(&n.unique_id))
        } else {
            format!("\n{}: {msg}", short_name(&n.unique_id))
        };
        if out.len() + item.len() > MESSAGE_MAX {
            out += &format!(
                "\n… and {} more (`nightshift dbt-results RUN_ID --failed`)",
                bad.len() - i
            );
            break;
        }
        out += &item;
    }
    Some(out)
}

/// dbt's own error lines from a try's JSON log file (`dbt.log` in its log path), for a
/// failure before any node ran (exit 2: a parse error, a bad profile, a locked file).
pub fn log_errors(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("dbt.log")).ok()?;
    let mut lines: Vec<String> = vec![];
    for raw in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) else {
            continue;
        };
        if v["info"]["level"] != "error" {
            continue;
        }
        // "Encountered an error:" carries the error itself in `data.exc`.
        let msg = v["data"]["exc"]
            .as_str()
            .or_else(|| v["info"]["msg"].as_str())
            .unwrap_or("")
            .trim();
        if !msg.is_empty() && !lines.iter().any(|l| l == msg) {
            lines.push(msg.to_owned());
        }
    }
    (!lines.is_empty()).then(|| capped(&lines.join("\n")))
}

/// A node's name as people say it: `model.shop.fct_orders` → `fct_orders`,
/// `test.shop.not_null_orders_id.5f1a` → `not_null_orders_id`,
/// `source.shop.raw.orders` → `raw.orders`.
pub fn short_name(unique_id: &str) -> String {
    let parts: Vec<&str> = unique_id.split('.').collect();
    match parts.as_slice() {
        ["source", _, rest @ ..] if !rest.is_empty() => rest.join("."),
        ["test", _, name, ..] => (*name).to_owned(),
        [_, _, rest @ ..] if !rest.is_empty() => rest.join("."),
        _ => unique_id.to_owned(),
    }
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

/// The flags every dbt call of a try has: the project, profile, target, vars, and where the
/// artifacts and dbt's own JSON log go (`deps` takes no target path: dbt refuses the flag).
fn common_flags(
    spec: &DbtSpec,
    project: &Path,
    dir: &Path,
    ctx: &Context,
    target_path: bool,
) -> Vec<String> {
    let dir_s = dir.to_string_lossy().into_owned();
    let mut flags = vec![
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
        "--log-path".to_owned(),
        dir_s.clone(),
        "--log-format".to_owned(),
        "json".to_owned(),
        "--no-use-colors".to_owned(),
        "--vars".to_owned(),
        vars_json(spec, ctx),
    ];
    if target_path {
        flags.extend(["--target-path".to_owned(), dir_s]);
    }
    if let Some(t) = &spec.target {
        flags.extend(["--target".to_owned(), t.clone()]);
    }
    flags
}

/// `dbt parse` with a try's flags: what the warm runner runs when it has no parsed project
/// for the call (`None` for `deps`, which needs none).
pub fn parse_argv(
    spec: &DbtSpec,
    project: &Path,
    dir: &Path,
    ctx: &Context,
) -> Option<Vec<String>> {
    if spec.command.first().map(String::as_str) == Some("deps") {
        return None;
    }
    let mut argv = vec!["parse".to_owned()];
    argv.extend(common_flags(spec, project, dir, ctx, true));
    Some(argv)
}

/// The Python of the virtual environment holding the task's dbt: the warm runner imports
/// dbt there.
pub fn python_of(spec: &DbtSpec, project: &Path) -> Result<PathBuf, String> {
    let exe = PathBuf::from(executable(spec, project));
    let exe = if exe.components().count() > 1 {
        exe
    } else {
        crate::env::path_dirs()
            .into_iter()
            .map(|d| d.join(&exe))
            .find(|p| p.exists())
            .ok_or_else(|| format!("`{}` is not on PATH", exe.display()))?
    };
    let python = exe.with_file_name("python");
    if python.exists() {
        Ok(python)
    } else {
        Err(format!(
            "runner = \"warm\" runs dbt in the Python beside `{}`, and `{}` does not exist: set `executable` to the dbt of a virtual environment",
            exe.display(),
            python.display()
        ))
    }
}

/// Whether the command selects nodes (so a retry can run only the ones left).
pub fn selects(spec: &DbtSpec) -> bool {
    !matches!(
        spec.command.first().map(String::as_str),
        Some("deps" | "run-operation")
    )
}

/// argv and extra environment of one dbt try.
pub fn command(
    spec: &DbtSpec,
    project: &Path,
    dir: &Path,
    ctx: &Context,
    retry_only: Option<&[String]>,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut argv = vec![executable(spec, project)];
    argv.extend(spec.command.iter().cloned());
    let word = spec.command.first().map(String::as_str).unwrap_or("");
    argv.extend(common_flags(spec, project, dir, ctx, word != "deps"));
    if !spec.operation_args.is_empty() {
        let args: serde_json::Map<String, serde_json::Value> = spec
            .operation_args
            .iter()
            .map(|(k, v)| (k.clone(), rendered(v, ctx)))
            .collect();
        argv.extend([
            "--args".to_owned(),
            serde_json::Value::Object(args).to_string(),
        ]);
    }
    // Commands without node selection run whole again on a retry.
    match retry_only.filter(|_| selects(spec)) {
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
    if let Some(t) = spec.threads.filter(|_| word != "deps") {
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

/// The dbt to run: the task's `executable` (a path is relative to the nightshift project),
/// else the project's `.venv/bin/dbt` when there is one, else `dbt` on PATH.
fn executable(spec: &DbtSpec, project: &Path) -> String {
    match &spec.executable {
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
    }
}

/// The `--vars` of a try: the task's own, with their types, and nightshift's four.
pub fn vars_json(spec: &DbtSpec, ctx: &Context) -> String {
    let mut vars = serde_json::Map::new();
    for (k, v) in &spec.vars {
        vars.insert(k.clone(), rendered(v, ctx));
    }
    vars.insert("ds".into(), ctx.keys.ds_text().into());
    vars.insert("data_interval_start".into(), ctx.keys.start_text().into());
    vars.insert("data_interval_end".into(), ctx.keys.end_text().into());
    vars.insert("run_id".into(), ctx.keys.run_id.clone().into());
    serde_json::Value::Object(vars).to_string()
}

/// FNV-1a over the parts: a short, stable name for a key (not a defence against anything),
/// for the saved parses and the warm workers.
pub fn key_of(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.join("\0").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the latest partial parse (`partial_parse.msgpack`) of one dbt project lives, for one
/// profile, target, dbt and set of vars. Each try's target folder starts from it, and dbt
/// decides whether it can use it. dbt 1.11 drops a saved parse whenever the vars differ
/// (docs/dbt-facts.md, "Partial parsing"), and `ds` differs every night, so in practice the
/// tasks of one run share it: its dbt calls, their retries and publish's run-operation.
pub fn parse_cache(spec: &DbtSpec, project: &Path, ctx: &Context) -> PathBuf {
    let key = key_of(&[
        &executable(spec, project),
        &project.join(&spec.project_dir).to_string_lossy(),
        &project.join(&spec.profiles_dir).to_string_lossy(),
        spec.target.as_deref().unwrap_or(""),
        &vars_json(spec, ctx),
    ]);
    project.join(format!(".nightshift/dbt-parse/{key}"))
}

const PARTIAL_PARSE: &str = "partial_parse.msgpack";

/// Starts a try's target folder from the saved parse, if there is one; says whether.
pub fn seed_parse(cache: &Path, target: &Path) -> bool {
    std::fs::copy(cache.join(PARTIAL_PARSE), target.join(PARTIAL_PARSE)).is_ok()
}

/// Saves the parse a try left for the next dbt call of the run (written aside, then
/// renamed: a concurrent reader sees the old file or the new one, whole).
pub fn keep_parse(target: &Path, cache: &Path) {
    let from = target.join(PARTIAL_PARSE);
    if !from.exists() || std::fs::create_dir_all(cache).is_err() {
        return;
    }
    let aside = cache.join(format!(
        "{PARTIAL_PARSE}.{}.{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    if std::fs::copy(&from, &aside).is_ok()
        && std::fs::rename(&aside, cache.join(PARTIAL_PARSE)).is_err()
    {
        let _ = std::fs::remove_file(&aside);
    }
}

/// Removes a task's oldest target folders (`.nightshift/dbt/<pipeline>/<run_id>/<task>/try-<n>`),
/// keeping the `keep` newest; run folders left empty go too.
pub fn prune_artifacts(project: &Path, pipeline: &str, task: &str, keep: usize) {
    let root = project.join(".nightshift/dbt").join(pipeline);
    let Ok(runs) = std::fs::read_dir(&root) else {
        return;
    };
    let mut tries: Vec<(std::time::SystemTime, PathBuf)> = vec![];
    for run in runs.flatten() {
        let Ok(entries) = std::fs::read_dir(run.path().join(task)) else {
            continue;
        };
        for e in entries.flatten() {
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            tries.push((modified, e.path()));
        }
    }
    if tries.len() <= keep {
        return;
    }
    tries.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (_, dir) in tries.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(&dir);
        // The task's folder, then the run's, when nothing else is left in them.
        if let Some(task_dir) = dir.parent() {
            let _ = std::fs::remove_dir(task_dir);
            if let Some(run_dir) = task_dir.parent() {
                let _ = std::fs::remove_dir(run_dir);
            }
        }
    }
}

/// A var with its type kept: only its strings (at any depth) are templates.
fn rendered(v: &serde_json::Value, ctx: &Context) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(ctx.render(s)),
        Value::Array(items) => Value::Array(items.iter().map(|x| rendered(x, ctx)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), rendered(x, ctx)))
                .collect(),
        ),
        other => other.clone(),
    }
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
            "dbt: 1 error(s), 0 failed test(s)\nfct_orders: Got 1 result, configured to fail if != 0"
        );
        // A message of several lines is kept whole.
        let mut contract = node("model.shop.dim", "error");
        contract.message = Some(
            "Compilation Error in model dim\n  | col | INTEGER | BIGINT | data type mismatch |"
                .into(),
        );
        let why = failure_reason(&[contract]).unwrap();
        assert!(why.ends_with("dim:\nCompilation Error in model dim\n  | col | INTEGER | BIGINT | data type mismatch |"), "{why}");
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
        assert_eq!(summary(&nodes)["rows_loaded"], 100.0, "a seed's rows count");
    }

    #[test]
    fn freshness_says_the_age_and_the_threshold_in_its_unit() {
        let c = Criteria {
            warn_after: Threshold {
                count: Some(12),
                period: Some("hour".into()),
            },
            error_after: Threshold {
                count: Some(24),
                period: Some("hour".into()),
            },
        };
        assert_eq!(
            freshness_message("pass", Some(21.0 * 3600.0), &c).unwrap(),
            "loaded 21 h ago; error after 24 h"
        );
        assert_eq!(
            freshness_message("error", Some(30.0 * 3600.0 + 600.0), &c).unwrap(),
            "loaded 30 h ago; error after 24 h"
        );
        assert_eq!(
            freshness_message("pass", Some(5400.0), &Criteria::default()).unwrap(),
            "loaded 1.5 h ago"
        );
        assert_eq!(short_name("source.shop.raw.orders"), "raw.orders");
        assert_eq!(
            short_name("test.shop.not_null_orders_id.5f1a2b"),
            "not_null_orders_id"
        );
        assert_eq!(short_name("model.shop.fct_orders"), "fct_orders");
    }

    #[test]
    fn an_exit_2_failure_says_what_dbt_said() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dbt.log"),
            concat!(
                r#"{"info": {"level": "info", "msg": "Running with dbt=1.11.16"}, "data": {}}"#, "\n",
                r#"{"info": {"level": "error", "msg": "Encountered an error:"}, "data": {"exc": "Parsing Error\n  Invalid jinja in models/x.sql"}}"#, "\n",
            ),
        )
        .unwrap();
        assert_eq!(
            log_errors(dir.path()).unwrap(),
            "Parsing Error\n  Invalid jinja in models/x.sql"
        );
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
