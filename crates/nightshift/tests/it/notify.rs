//! The notify kind against real channels: a log, and an HTTP server on loopback that the
//! test runs (one that answers, one that hangs).

use crate::support::*;

fn project(url: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        &format!("[channels.ops_log]\nkind = \"log\"\n[channels.ops_hook]\nkind = \"webhook\"\nurl_env = \"OPS_HOOK\"\nallow_private = true\ntimeout = \"1s\"\nretries = 1\n# {url}\n"),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"extract_data\"\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 4\"]\n\n\
               [[task]]\nid = \"other\"\ncommand = [\"sh\", \"-c\", \"sleep 0.3; touch other.done\"]\n\n\
               [[task]]\nid = \"notify\"\nkind = \"notify\"\ndepends_on = [\"extract_data\"]\n"),
    );
    p
}

#[test]
fn a_failure_is_notified_once_per_channel_with_what_failed() {
    let (url, bodies) = http_server(false);
    let p = project(&url);
    let out = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("OPS_HOOK", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = p.tasks("20240602_0000");
    assert_eq!(
        task(&doc, "notify")["state"],
        "SUCCESS",
        "notify runs after a failure by default (all_done)"
    );
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "exactly one call: {bodies:?}");
    let v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(v["status"], "FAILED");
    assert_eq!(v["run_id"], "20240602_0000");
    let failed = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "extract_data")
        .unwrap();
    assert_eq!(failed["state"], "FAILED");
    assert_eq!(failed["error"], "exited with code 4");
    assert!(v["text"].as_str().unwrap().contains("extract_data: FAILED"));
    let log = p.read(".nightshift/notifications.jsonl");
    assert_eq!(log.lines().count(), 1);
    // The webhook URL's path (its secret) never reaches the try's log.
    let tlog = stdout(&p.run(&["logs", "20240602_0000", "notify"]));
    assert!(tlog.contains("delivered to http://127.0.0.1:"), "{tlog}");
    assert!(!tlog.contains("secret-token"), "{tlog}");
}

#[test]
fn a_hanging_webhook_times_out_and_holds_nothing_else_up() {
    let (url, _) = http_server(true);
    let p = project(&url);
    let out = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("OPS_HOOK", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = p.tasks("20240602_0000");
    let notify = task(&doc, "notify");
    assert_eq!(notify["state"], "FAILED");
    let err = notify["tries"][0]["error"].as_str().unwrap();
    // The try's error is the notify child's own error line: which channel, and why.
    assert!(
        err.starts_with("channel `ops_hook` (http://127.0.0.1:") && err.contains("timeout"),
        "{err}"
    );
    assert!(!err.contains("secret-token"), "{err}");
    let tlog = stdout(&p.run(&["logs", "20240602_0000", "notify"]));
    assert!(
        tlog.contains("channel `ops_hook`: attempt 2 failed"),
        "{tlog}"
    );
    assert!(!tlog.contains("secret-token"), "{tlog}");
    assert_eq!(
        task(&doc, "other")["state"],
        "SUCCESS",
        "the rest of the run went on"
    );
    assert!(p.path().join("other.done").exists());
}
