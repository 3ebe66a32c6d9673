//! The web server of `nightshift up`: the API against its OpenAPI document (validated by
//! openapi-spec-validator), access rules, bad requests, the log folder fence, and the
//! metrics exposition checked by promtool.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The example project with three finished nights, paused, and `up` serving on a free port.
pub fn served_example() -> (TestProject, std::process::Child, String) {
    let p = TestProject::example();
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-06-01T23:00:00Z",
        "--simulate-until",
        "2024-06-04T01:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.run(&["pause", "nightly"]).status.success());
    let child = p.spawn(
        &["up", "--bind", "127.0.0.1:0"],
        &[("NIGHTSHIFT_TOKEN", TOKEN)],
        "up",
    );
    let url = web_url(&p, "up");
    (p, child, url)
}

fn get(url: &str) -> (u16, String) {
    let mut r = http().get(url).call().unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http().post(url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body).unwrap();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        r.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// `promtool check metrics` must accept the exposition.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by tools/testdeps/install");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{metrics}",
        stdout(&out),
        stderr(&out)
    );
}

fn fill(path: &str) -> String {
    path.replace("{p}", "nightly")
        .replace("{run_id}", "20240602_0000")
        .replace("{task}", "extract_data")
        .replace("{n}", "1")
}

#[test]
fn the_api_matches_its_openapi_document_and_checks_every_request() {
    let (p, mut up, url) = served_example();

    // The document is valid OpenAPI 3 and lists exactly the served API routes, each of which
    // answers below.
    let (code, doc_text) = get(&format!("{url}/api/v1/openapi.json"));
    assert_eq!(code, 200);
    let doc_path = p.path().join("openapi.json");
    std::fs::write(&doc_path, &doc_text).unwrap();
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.testvenv/bin/python");
    let v = Command::new(&python)
        .args(["-c", "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('ok')"])
        .arg(&doc_path)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", stderr(&v));
    let doc: Value = serde_json::from_str(&doc_text).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "delete", "patch"] {
            if item.get(m).is_some() {
                documented.insert(format!("{} {path}", m.to_uppercase()));
            }
        }
    }
    // Generated from the router's own registrations (see `nightshift_web::openapi`).
    let served: BTreeSet<String> = nightshift_web::openapi::operations().into_iter().collect();
    assert_eq!(documented, served);
    assert_eq!(served.len(), 18, "{served:?}");

    // Every documented read answers; every action refuses a request without the token.
    for route in &served {
        let (method, path) = route.split_once(' ').unwrap();
        let u = format!("{url}{}", fill(path));
        if method == "GET" {
            let (code, body) = get(&u);
            assert_eq!(code, 200, "{route}: {body}");
        } else {
            let (code, body) = post(&u, None, "{}");
            assert_eq!(code, 401, "{route}: {body}");
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
            let (code, _) = post(&u, Some("wrong-token-wrong-token"), "{}");
            assert_eq!(code, 401, "{route}");
        }
    }

    // A run's detail says why each task is where it is, as `explain` does.
    let (_, run) = get(&format!(
        "{url}/api/v1/pipelines/nightly/runs/20240602_0000"
    ));
    let run: Value = serde_json::from_str(&run).unwrap();
    let why = run["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task_id"] == "notify")
        .unwrap();
    assert_eq!(why["reason"], "succeeded on try 1 of 3", "{why}");

    // One JSON shape: the CLI's `--json` and the API give the same objects, field for field.
    let (_, page) = get(&format!("{url}/api/v1/pipelines/nightly/runs?limit=500"));
    let page: Value = serde_json::from_str(&page).unwrap();
    let cli_runs = p.runs("nightly");
    assert!(!cli_runs.is_empty());
    for r in &cli_runs {
        let api = page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["run"]["run_id"] == r["run_id"])
            .unwrap_or_else(|| panic!("{r} is missing from the API's page"));
        assert_eq!(&api["run"], r);
    }
    assert!(cli_runs[0].get("ds").is_some() && cli_runs[0].get("state").is_some());
    let cli_tasks = p.json(&["tasks", "20240602_0000", "--json"]);
    assert_eq!(cli_tasks["run"], run["run"]);
    assert_eq!(cli_tasks["tasks"], run["tasks"]);
    let (_, pipelines) = get(&format!("{url}/api/v1/pipelines"));
    let pipelines: Value = serde_json::from_str(&pipelines).unwrap();
    let cli_pipelines = p.json(&["pipelines", "--json"]);
    assert_eq!(
        cli_pipelines["pipelines"][0]["tasks"],
        pipelines["pipelines"][0]["tasks"]
    );
    assert_eq!(
        cli_pipelines["pipelines"][0]["last_finished_run"],
        pipelines["pipelines"][0]["last_finished_run"]
    );
    let (_, status) = get(&format!("{url}/api/v1/status"));
    let status: Value = serde_json::from_str(&status).unwrap();
    let cli_status = p.json(&["status", "--json"]);
    assert_eq!(cli_status["scheduler"]["pid"], status["scheduler"]["pid"]);
    assert_eq!(
        cli_status["processes"].as_array().unwrap().len(),
        status["processes"].as_array().unwrap().len()
    );

    // Wrong types and missing fields get a 400 naming the problem, and change nothing.
    let runs_url = format!("{url}/api/v1/pipelines/nightly/runs");
    let before = p.runs("nightly").len();
    for (body, needle) in [
        (r#"{"ds": 5}"#, "invalid type"),
        (r#"{}"#, "missing field `ds`"),
        (r#"{"ds": "2024-13-01"}"#, "`ds` must be a date"),
        (r#"{"ds": "2024-06-05", "rerun": "yes"}"#, "invalid type"),
        (
            r#"{"ds": "2024-06-05", "extra": 1}"#,
            "unknown field `extra`",
        ),
        ("not json", "invalid request body"),
    ] {
        let (code, v) = post(&runs_url, Some(TOKEN), body);
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let (code, v) = get(&format!("{runs_url}?limit=abc"));
    assert_eq!(code, 400, "{v}");
    let (code, v) = get(&format!("{runs_url}?state=DONE"));
    assert_eq!(code, 400, "{v}");
    assert!(v.contains("`state` must be one of"), "{v}");
    let (code, v) = get(&format!("{runs_url}?date=2024-02-30"));
    assert_eq!(code, 400, "{v}");
    // The filter and the jump: only backfills; only runs up to a ds.
    let (_, v) = get(&format!("{runs_url}?trigger=backfill"));
    let v: Value = serde_json::from_str(&v).unwrap();
    assert!(
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["run"]["trigger"] == "backfill")
    );
    let (_, v) = get(&format!("{runs_url}?date=2024-06-02&state=success"));
    let v: Value = serde_json::from_str(&v).unwrap();
    let ds: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"]["ds"].as_str().unwrap())
        .collect();
    assert_eq!(ds, ["2024-06-02", "2024-06-01"], "{v}");
    assert_eq!(p.runs("nightly").len(), before);

    // With the token, a trigger creates the run (queued: the pipeline is paused).
    let (code, v) = post(&runs_url, Some(TOKEN), r#"{"ds": "2024-06-05"}"#);
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["run_id"], "20240606_0000");
    let (code, v) = post(&runs_url, Some(TOKEN), r#"{"ds": "2024-06-02"}"#);
    assert_eq!(code, 409, "{v}");
    let (code, v) = post(
        &format!("{url}/api/v1/pipelines/nightly/runs/20240602_0000/clear"),
        Some(TOKEN),
        r#"{"task": "dbt_test", "downstream": true}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["cleared"], serde_json::json!(["dbt_test", "notify"]));

    // Logs: a path that escapes the log folder is refused, so is a made-up task.
    let conn = rusqlite::Connection::open(p.path().join(".nightshift/nightshift.db")).unwrap();
    conn.execute(
        "UPDATE task_tries SET log_path = ?1 WHERE task_id = 'extract_data' AND try_number = 1
           AND run = (SELECT id FROM pipeline_runs WHERE run_id = '20240603_0000')",
        [p.path()
            .join(".nightshift/logs/../../nightshift.toml")
            .to_string_lossy()],
    )
    .unwrap();
    let (code, body) = get(&format!(
        "{url}/api/v1/pipelines/nightly/runs/20240603_0000/tasks/extract_data/tries/1/log"
    ));
    assert_eq!(code, 403, "{body}");
    let (code, _) = get(&format!(
        "{url}/api/v1/pipelines/nightly/runs/20240603_0000/tasks/..%2F..%2Fnightshift.toml/tries/1/log"
    ));
    assert_eq!(code, 404);

    // The metrics exposition passes promtool.
    let (code, metrics) = get(&format!("{url}/metrics"));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("nightshift_scheduler_loop_lag_seconds"),
        "{metrics}"
    );
    promtool_check(&metrics);

    sigterm(&up);
    up.wait().unwrap();
}

#[test]
fn a_running_tries_log_tails_and_metrics_count_what_ran() {
    let p = TestProject::new();
    p.file(
        "pipelines/live.toml",
        &(daily("live", &yesterday())
            + "[[task]]\nid = \"slow\"\ncommand = [\"sh\", \"-c\", \"echo first line; while [ ! -e go ]; do sleep 0.05; done; echo second line\"]\n"),
    );
    let mut up = p.spawn(&["up", "--bind", "127.0.0.1:0"], &[], "up");
    let url = web_url(&p, "up");
    let run_id = {
        let mut id = String::new();
        p.wait_for("the run", || {
            if let Some(r) = p.runs("live").first() {
                id = r["run_id"].as_str().unwrap().to_owned();
            }
            !id.is_empty()
        });
        id
    };
    let log_url = format!("{url}/api/v1/pipelines/live/runs/{run_id}/tasks/slow/tries/1/log");
    let fetch = |offset: u64| {
        let mut r = http()
            .get(&format!("{log_url}?offset={offset}"))
            .call()
            .unwrap();
        let next: u64 = r
            .headers()
            .get("x-next-offset")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let complete = r.headers().get("x-complete").unwrap() == "true";
        (r.body_mut().read_to_string().unwrap(), next, complete)
    };
    // While the task waits, the first line is there and the log is not complete.
    let mut first = (String::new(), 0, true);
    p.wait_for("the first line", || {
        first = fetch(0);
        first.0.contains("first line")
    });
    assert!(!first.2, "the try is still running");
    let page = http()
        .get(&format!(
            "{url}/pipelines/live/runs/{run_id}/tasks/slow/tries/1"
        ))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("data-complete=\"false\""), "{page}");
    // Then only what follows the offset arrives, and the log says it is complete.
    p.file("go", "");
    let mut rest = (String::new(), 0, false);
    p.wait_for("the end of the log", || {
        rest = fetch(first.1);
        rest.2
    });
    assert!(
        rest.0.contains("second line") && !rest.0.contains("first line"),
        "{}",
        rest.0
    );

    // The run's durations and transitions are in the metrics, which promtool accepts.
    p.wait_for("the run to end", || p.runs("live")[0]["state"] == "SUCCESS");
    let mut metrics = String::new();
    p.wait_for("the metrics", || {
        metrics = http()
            .get(&format!("{url}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        metrics.contains(
            "nightshift_run_state_transitions_total{pipeline=\"live\",state=\"SUCCESS\"} 1",
        )
    });
    for needle in [
        "nightshift_task_duration_seconds_bucket{pipeline=\"live\",state=\"SUCCESS\",task=\"slow\"",
        "nightshift_task_state_transitions_total{pipeline=\"live\",state=\"SUCCESS\",task=\"slow\"} 1",
        "nightshift_run_duration_seconds_count{pipeline=\"live\",state=\"SUCCESS\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle}\n{metrics}");
    }
    // The loop's own cost: it made passes, and they took time.
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert!(figure("nightshift_scheduler_passes_total") >= 1.0);
    assert!(figure("nightshift_scheduler_pass_seconds_total") > 0.0);
    promtool_check(&metrics);
    sigterm(&up);
    up.wait().unwrap();
}

#[test]
fn the_calendar_follows_a_simulated_clock() {
    // A task that sleeps holds the simulated clock near its start (it jumps only when idle),
    // so the server's "today" must be the simulated day, not the machine's.
    let p = TestProject::new();
    p.file(
        "pipelines/slow.toml",
        &(daily("slow", "2024-06-01")
            + "[[task]]\nid = \"sleep\"\ncommand = [\"sleep\", \"30\"]\n"),
    );
    let mut up = p.spawn(
        &[
            "up",
            "--simulate-from",
            "2024-06-02T00:30:00Z",
            "--simulate-until",
            "2024-06-10T00:00:00Z",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
        "up",
    );
    let url = web_url(&p, "up");
    p.wait_for("the first run to start", || {
        p.runs("slow")
            .first()
            .is_some_and(|r| r["state"] == "RUNNING")
    });
    let (code, body) = get(&format!("{url}/api/v1/pipelines/slow/calendar"));
    // The second SIGTERM stops the sleeping try at once.
    sigterm(&up);
    std::thread::sleep(std::time::Duration::from_millis(300));
    sigterm(&up);
    let _ = up.wait();
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let days = doc["days"].as_array().unwrap();
    assert_eq!(days.last().unwrap()["ds"], "2024-06-02", "{body}");
    let first_run = days.iter().find(|d| d["ds"] == "2024-06-01").unwrap();
    assert_ne!(first_run["state"], "missing", "{body}");
}

/// The pipelines page and API show the latest finished run (where a failure shows) and the
/// failures of the last 7 days, beside the newest run.
#[test]
fn pipelines_show_the_latest_finished_run_and_recent_failures() {
    let p = TestProject::new();
    let day = days_ago(2);
    p.file(
        "pipelines/p.toml",
        &format!(
            "schedule = \"0 0 * * *\"\ntimezone = \"UTC\"\nstart_date = \"{}\"\ncatchup = false\ndeadline = \"06:00\"\n\n[[task]]\nid = \"t\"\ncommand = [\"false\"]\n",
            days_ago(5)
        ),
    );
    assert_eq!(p.run(&["run", "p", "--date", &day]).status.code(), Some(1));
    assert!(p.run(&["pause", "p"]).status.success());
    let mut up = p.spawn(&["up", "--bind", "127.0.0.1:0"], &[], "up");
    let url = web_url(&p, "up");
    let (code, body) = get(&format!("{url}/api/v1/pipelines"));
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let pl = &doc["pipelines"][0];
    assert_eq!(pl["last_finished_run"]["state"], "FAILED", "{pl}");
    assert_eq!(pl["failures_7d"], 1, "{pl}");
    assert!(
        pl["deadline_state"].is_null(),
        "a manual run of a past date is not judged: {pl}"
    );
    let (_, page) = get(&format!("{url}/"));
    assert!(
        page.contains("Failed (7 days)") && page.contains("Last finished"),
        "{page}"
    );
    sigkill(&mut up);
}
