//! The notify kind against real channels: a log, and an HTTP server on loopback that the
//! test runs (one that answers, one that hangs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::support::*;

/// An HTTP server that records request bodies; with `hang`, it accepts and never answers.
fn server(hang: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/secret-token",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(vec![]));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for stream in listener.incoming().take(10) {
            let Ok(mut stream) = stream else { continue };
            if hang {
                held.push(stream);
                continue;
            }
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, bodies)
}

fn project(url: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        &format!("[channels.ops_log]\nkind = \"log\"\n[channels.ops_hook]\nkind = \"webhook\"\nurl_env = \"OPS_HOOK\"\ntimeout = \"1s\"\nretries = 1\n# {url}\n"),
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
    let (url, bodies) = server(false);
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
    let (url, _) = server(true);
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
    assert_eq!(err, "exited with code 1");
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
