//! Alerts to real channels: an SMTP server (aiosmtpd), HTTP servers on loopback (JSON,
//! Slack-shaped, and one that hangs), and the deadline forecast on a simulated clock.

use serde_json::Value;

use crate::support::*;

fn alerts(p: &TestProject) -> Vec<Value> {
    p.json(&["alerts", "--json", "--limit", "500"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_failing_task_sends_one_email_and_one_webhook_call_per_channel() {
    let p = TestProject::new();
    let smtp = SmtpServer::start(p.path());
    let (hook_url, hook) = http_server(false);
    let (slack_url, slack) = http_server(false);
    let (hung_url, _) = http_server(true);
    p.file(
        "nightshift.toml",
        &format!(
            r#"[channels.mail]
kind = "smtp"
tls = "none"
host = "127.0.0.1"
port = {port}
from = "nightshift@example.com"
to = ["ops@example.com"]
timeout = "10s"

[channels.hook]
kind = "webhook"
allow_private = true
url_env = "HOOK_URL"

[channels.slack]
kind = "webhook"
allow_private = true
url = "{slack_url}"
format = "slack"

[channels.hung]
kind = "webhook"
allow_private = true
url = "{hung_url}"
timeout = "2s"
retries = 1

[channels.down]
kind = "smtp"
tls = "none"
host = "127.0.0.1"
port = {down_port}
from = "nightshift@example.com"
to = ["ops@example.com"]
timeout = "2s"
retries = 1

[alerts]
channels = ["mail", "hook", "slack", "hung", "down"]
base_url = "http://nightshift.example:8080"
"#,
            port = smtp.port,
            down_port = free_port(),
        ),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"extract_data\"\nretries = 1\nretry_delay = \"100ms\"\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 4\"]\n\n\
               [[task]]\nid = \"other\"\ncommand = [\"sh\", \"-c\", \"sleep 0.2; touch other.done\"]\n"),
    );
    let out = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("HOOK_URL", &hook_url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The independent task ran and the run finished: the hung channel held nothing up.
    assert!(p.path().join("other.done").exists());
    let run = &p.runs("p")[0];
    assert_eq!(run["state"], "FAILED");

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    // Undo quoted-printable soft line breaks.
    let mail = mails[0].replace("=\r\n", "").replace("=\n", "");
    for needle in [
        "20240602_0000",
        "task: extract_data",
        "try: 2 of 2",
        "duration:",
        "error: exited with code 4",
        "http://nightshift.example:8080/api/v1/pipelines/p/runs/20240602_0000/tasks/extract_data/tries/2/log",
    ] {
        assert!(mail.contains(needle), "`{needle}` missing from:\n{mail}");
    }
    let bodies = hook.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    let b: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(b["event"], "task_failed");
    assert_eq!(b["run_id"], "20240602_0000");
    assert_eq!(b["task"], "extract_data");
    assert_eq!(b["try"], 2);
    assert!(b["duration_ms"].as_i64().is_some(), "{b}");
    assert!(
        b["links"]["log"]
            .as_str()
            .unwrap()
            .ends_with("/tries/2/log")
    );
    let s = slack.lock().unwrap().clone();
    assert_eq!(s.len(), 1, "{s:#?}");
    let s: Value = serde_json::from_str(&s[0]).unwrap();
    assert!(s["text"].as_str().unwrap().contains("extract_data"), "{s}");
    assert_eq!(s["blocks"][0]["type"], "section");

    // Recorded: three sent; the hung webhook and the SMTP server that is down failed
    // after their retries, with the reason.
    let rows = alerts(&p);
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for r in &rows {
        let down = r["channel"] == "hung" || r["channel"] == "down";
        let expect = if down { "failed" } else { "sent" };
        assert_eq!(r["status"], expect, "{r}");
        assert_eq!(r["kind"], "task_failed");
    }
    let hung = rows.iter().find(|r| r["channel"] == "hung").unwrap();
    assert_eq!(hung["attempts"], 2);
    assert!(
        hung["error"].as_str().unwrap().contains("127.0.0.1"),
        "{hung}"
    );
    let down = rows.iter().find(|r| r["channel"] == "down").unwrap();
    assert_eq!(down["attempts"], 2);
    assert!(
        down["error"].as_str().unwrap().contains("SMTP 127.0.0.1"),
        "{down}"
    );
    // The URL's secret path never reaches the store.
    assert!(
        !serde_json::to_string(&rows)
            .unwrap()
            .contains("secret-token")
    );

    // The same event observed again sends nothing new.
    let again = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("HOOK_URL", &hook_url)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(hook.lock().unwrap().len(), 1);
}

#[test]
fn after_failures_waits_for_a_streak_and_recovered_closes_the_incident() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        r#"[channels.every]
kind = "log"
[channels.second]
kind = "log"
after_failures = 2
[channels.quiet]
kind = "log"
events = ["run_succeeded"]
[alerts]
channels = ["every", "second", "quiet"]
"#,
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"load\"\ncommand = [\"sh\", \"-c\", \"test ! -e fail.{{ ds }}\"]\n"),
    );
    p.file("fail.2024-06-01", "").file("fail.2024-06-02", "");
    for ds in ["2024-06-01", "2024-06-02", "2024-06-03"] {
        p.run(&["run", "p", "--date", ds]);
    }
    let mut got: Vec<(String, String, String)> = alerts(&p)
        .iter()
        .map(|a| {
            (
                a["channel"].as_str().unwrap().to_owned(),
                a["kind"].as_str().unwrap().to_owned(),
                a["run_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("every", "recovered", "20240604_0000"),
        ("every", "task_failed", "20240602_0000"),
        ("every", "task_failed", "20240603_0000"),
        ("quiet", "run_succeeded", "20240604_0000"),
        ("second", "recovered", "20240604_0000"),
        ("second", "task_failed", "20240603_0000"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(got, want);
    // The log channel wrote one line per alert it sent.
    assert_eq!(p.read(".nightshift/notifications.jsonl").lines().count(), 6);
}

#[test]
fn a_run_forecast_to_miss_its_deadline_is_at_risk_before_it_and_missed_at_it() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[channels.ops]\nkind = \"log\"\n[alerts]\nchannels = [\"ops\"]\n",
    );
    // The deadline is two seconds after the run fires; the task takes three.
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-02").replace(
            "max_active_runs = 1\n",
            "max_active_runs = 1\ndeadline = \"00:00:02\"\n",
        ) + "[[task]]\nid = \"work\"\ncommand = [\"sleep\", \"3\"]\n"),
    );
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-06-02T23:59:59Z",
        "--simulate-until",
        "2024-06-04T00:00:10Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Deadline p 20240604_0000: at risk"), "{text}");
    let rows = alerts(&p);
    let find = |kind: &str, run: &str| {
        rows.iter()
            .find(|a| a["kind"] == kind && a["run_id"] == run)
            .map(|a| a["message"]["data"].clone())
    };
    // First night: no history, so no forecast; missed at the deadline.
    assert!(
        find("deadline_at_risk", "20240603_0000").is_none(),
        "{rows:#?}"
    );
    let missed1 = find("deadline_missed", "20240603_0000").expect("first night missed");
    // Second night: the history says `work` takes 3 s, so the risk is raised at once,
    // before the deadline, and the miss at it.
    let risk = find("deadline_at_risk", "20240604_0000").expect("second night at risk");
    let missed2 = find("deadline_missed", "20240604_0000").expect("second night missed");
    let t = |v: &Value, k: &str| v[k].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let deadline: jiff::Timestamp = "2024-06-04T00:00:02Z".parse().unwrap();
    assert_eq!(t(&risk, "deadline"), deadline);
    assert!(t(&risk, "raised_at") < deadline, "{risk}");
    assert!(t(&risk, "forecast") > deadline, "{risk}");
    assert!(t(&missed2, "raised_at") >= deadline, "{missed2}");
    assert!(t(&missed1, "raised_at") >= "2024-06-03T00:00:02Z".parse().unwrap());
    // Each alert once; the runs themselves succeeded.
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(p.runs("p").iter().all(|r| r["state"] == "SUCCESS"));
    // The API shows the state too: the run finished after its deadline.
    let detail = p.json(&["runs", "p", "--json"]);
    assert_eq!(detail.as_array().unwrap().len(), 2);

    // History is never judged: a backfill of a past date and a manual run of another one
    // finish long after their deadlines and raise nothing.
    let out = p.run(&[
        "backfill",
        "p",
        "--from",
        "2024-06-04",
        "--to",
        "2024-06-04",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["run", "p", "--date", "2024-06-05"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("Deadline"), "{}", stdout(&out));
    assert_eq!(p.runs("p").len(), 4);
    assert_eq!(alerts(&p).len(), 3, "no deadline alert for history");
}

#[test]
fn a_command_channel_gets_the_alert_as_json_on_stdin_and_a_slow_one_times_out() {
    let p = TestProject::new();
    let marker = std::process::id();
    p.file(
        "nightshift.toml",
        &format!(
            r#"[channels.page]
kind = "command"
command = ["sh", "-c", "cat > alert.json; printf '%s' \"$NIGHTSHIFT_ALERT_SUBJECT\" > subject.txt"]
[channels.slow]
kind = "command"
command = ["sleep", "30.000{marker}"]
timeout = "1s"
retries = 0
[alerts]
channels = ["page", "slow"]
"#
        ),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"load\"\ncommand = [\"sh\", \"-c\", \"exit 5\"]\n"),
    );
    assert_eq!(
        p.run(&["run", "p", "--date", "2024-06-01"]).status.code(),
        Some(1)
    );
    let alert: Value = serde_json::from_str(&p.read("alert.json")).unwrap();
    assert_eq!(alert["event"], "task_failed");
    assert_eq!(alert["run_id"], "20240602_0000");
    assert_eq!(alert["task"], "load");
    assert_eq!(alert["exit_code"], 5);
    assert!(p.read("subject.txt").contains("task load FAILED"));
    let rows = alerts(&p);
    let slow = rows.iter().find(|r| r["channel"] == "slow").unwrap();
    assert_eq!(slow["status"], "failed");
    assert!(
        slow["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1000 ms"),
        "{slow}"
    );
    assert_eq!(
        rows.iter().find(|r| r["channel"] == "page").unwrap()["status"],
        "sent"
    );
    // The slow command was killed, not left behind.
    assert!(processes_with(&format!("30.000{marker}")).is_empty());
}
