//! Recovery commands: `explain` in each blocked state, `clear`, `rerun` and `mark`.

use serde_json::Value;

use crate::support::*;

fn explain(p: &TestProject, run_id: &str, pipeline: &str, task: Option<&str>) -> Vec<Value> {
    let mut args = vec!["explain", run_id, "--pipeline", pipeline, "--json"];
    if let Some(t) = task {
        args.insert(2, t);
    }
    p.json(&args).as_array().unwrap().clone()
}

fn reason_of(rs: &[Value], task: Option<&str>) -> String {
    rs.iter()
        .filter(|r| r["task_id"].as_str() == task)
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A task's state, or "" while its run does not exist yet.
fn state_of(p: &TestProject, pipeline: &str, run_id: &str, task_id: &str) -> String {
    let out = p.run(&["tasks", run_id, "--pipeline", pipeline, "--json"]);
    let Ok(doc) = serde_json::from_slice::<Value>(&out.stdout) else {
        return String::new();
    };
    task(&doc, task_id)["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn header(name: &str, start: &str, extra: &str) -> String {
    daily(name, start).replace(
        "max_active_runs = 1\n",
        &format!("max_active_runs = 1\n{extra}"),
    )
}

const WAIT: &str = "while [ ! -e go ]; do sleep 0.05; done";

#[test]
fn explain_says_why_in_each_blocked_state() {
    let p = TestProject::new();
    let (d1, d2) = (days_ago(2), days_ago(1));
    // Pipelines starting two days ago have runs run1 and run2; those starting yesterday, run2.
    let run1 = days_ago(1).replace('-', "") + "_0000";
    let run2 = days_ago(0).replace('-', "") + "_0000";
    p.file("nightshift.toml", "[pools]\none = { slots = 1 }\n");
    p.file(
        "pipelines/chain.toml",
        &(header("chain", &d2, "")
            + &format!("[[task]]\nid = \"a\"\ncommand = [\"sh\", \"-c\", \"{WAIT}\"]\n[[task]]\nid = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n")),
    );
    p.file(
        "pipelines/pooled.toml",
        &(header("pooled", &d1, "").replace("max_active_runs = 1", "max_active_runs = 2")
            + &format!(
                "[[task]]\nid = \"w\"\npool = \"one\"\ncommand = [\"sh\", \"-c\", \"{WAIT}\"]\n"
            )),
    );
    p.file(
        "pipelines/limited.toml",
        &(header("limited", &d1, "")
            + &format!("[[task]]\nid = \"w\"\ncommand = [\"sh\", \"-c\", \"{WAIT}\"]\n")),
    );
    p.file(
        "pipelines/sensing.toml",
        &(header("sensing", &d2, "")
            + "[[task]]\nid = \"wait_for_file\"\nkind = \"sensor\"\npath = \"never-{{ ds }}\"\npoke_interval = \"1s\"\ntimeout = \"1h\"\n"),
    );
    p.file(
        "pipelines/retrying.toml",
        &(header("retrying", &d2, "")
            + "[[task]]\nid = \"flaky\"\nretries = 2\nretry_delay = \"1h\"\ncommand = [\"sh\", \"-c\", \"echo no >&2; exit 3\"]\n"),
    );
    p.file(
        "pipelines/held.toml",
        &(header("held", &d2, "") + "[[task]]\nid = \"t\"\ncommand = [\"true\"]\n"),
    );
    // `held` ran once; then it is paused and its task cleared: the run waits, paused.
    assert!(p.run(&["run", "held", "--date", &d2]).status.success());
    assert!(p.run(&["pause", "held"]).status.success());
    assert!(
        p.run(&["clear", &run2, "--pipeline", "held", "--task", "t"])
            .status
            .success()
    );

    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the blocked states", || {
        state_of(&p, "chain", &run2, "a") == "RUNNING"
            && state_of(&p, "retrying", &run2, "flaky") == "UP_FOR_RETRY"
            && state_of(&p, "sensing", &run2, "wait_for_file") == "QUEUED"
            && p.runs("pooled").len() == 2
            && p.runs("limited").len() == 2
            && p.runs("pooled")
                .iter()
                .filter(|r| r["state"] == "RUNNING")
                .count()
                == 2
    });
    // Let the sensor poke at least once.
    p.wait_for("a sensor poke", || {
        reason_of(&explain(&p, &run2, "sensing", None), Some("wait_for_file"))
            .contains("sensor waiting since")
    });

    let r = reason_of(&explain(&p, &run2, "chain", Some("b")), Some("b"));
    assert!(r.contains("waiting for upstream a (RUNNING)"), "{r}");

    // One of the two pooled runs holds the only slot.
    let waiting: Vec<String> = [&run1, &run2]
        .iter()
        .map(|id| reason_of(&explain(&p, id, "pooled", None), Some("w")))
        .collect();
    assert!(
        waiting
            .iter()
            .any(|r| r.contains("pool `one` is full (1 of 1 slot(s) used by pooled")),
        "{waiting:?}"
    );

    let r = reason_of(&explain(&p, &run2, "limited", None), None);
    assert!(
        r.contains(&format!("max_active_runs (1) reached: running {run1}")),
        "{r}"
    );

    let r = reason_of(&explain(&p, &run2, "sensing", None), Some("wait_for_file"));
    assert!(r.contains("for path `never-{{ ds }}` to exist"), "{r}");

    let r = reason_of(&explain(&p, &run2, "retrying", None), Some("flaky"));
    assert!(
        r.contains("try 1 of 3 failed (exited with code 3); retry 2 of 3 at "),
        "{r}"
    );

    let r = reason_of(&explain(&p, &run2, "held", None), None);
    assert!(r.contains("pipeline `held` is paused"), "{r}");

    // The text form says the same.
    let text = stdout(&p.run(&["explain", &run2, "b", "--pipeline", "chain"]));
    assert!(
        text.contains("b: PENDING — waiting for upstream a (RUNNING)"),
        "{text}"
    );

    p.file("go", "");
    p.wait_for("the chain to finish", || {
        p.runs("chain")[0]["state"] == "SUCCESS"
    });
    sigterm(&up);
    up.wait().unwrap();
}

#[test]
fn explain_reports_a_missed_deadline() {
    let p = TestProject::new();
    p.file(
        "pipelines/late.toml",
        &(header("late", "2024-06-02", "deadline = \"00:00:01\"\n")
            + "[[task]]\nid = \"slow\"\ncommand = [\"sleep\", \"2\"]\n"),
    );
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-06-02T23:59:59Z",
        "--simulate-until",
        "2024-06-03T00:00:05Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = reason_of(&explain(&p, "20240603_0000", "late", None), None);
    assert!(
        r.contains("deadline missed: it was 2024-06-03T00:00:01Z"),
        "{r}"
    );
}

#[test]
fn clear_rerun_and_mark_recover_a_failed_run_with_history_kept() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"load\"\ncommand = [\"sh\", \"-c\", \"test -e fixed\"]\n\
               [[task]]\nid = \"report\"\ncommand = [\"sh\", \"-c\", \"echo ran >> report.count\"]\ndepends_on = [\"load\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1));
    let run_id = "20240602_0000";
    assert_eq!(state_of(&p, "p", run_id, "report"), "UPSTREAM_FAILED");
    let r = reason_of(&explain(&p, run_id, "p", None), Some("load"));
    assert!(
        r.contains("failed after 1 of 1 tries: exited with code 1 (exit code 1)"),
        "{r}"
    );

    // The fix is made; clearing the failed task and its downstream runs them again.
    p.file("fixed", "");
    let out = p.run(&["clear", run_id, "--task", "load", "--downstream"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("cleared in p 20240602_0000: load, report"),
        "{}",
        stdout(&out)
    );
    assert_eq!(p.runs("p")[0]["state"], "QUEUED");
    assert!(
        p.run(&["run", "p", "--date", "2024-06-01"])
            .status
            .success()
    );
    let doc = p.tasks(run_id);
    let load = task(&doc, "load");
    assert_eq!(load["state"], "SUCCESS");
    let tries: Vec<&str> = load["tries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(tries, ["FAILED", "SUCCESS"], "history kept, new try number");
    assert_eq!(load["tries"][1]["try_number"], 2);
    assert_eq!(p.read("report.count").lines().count(), 1);

    // A whole rerun in place: every task again, one run still.
    assert!(p.run(&["rerun", run_id]).status.success());
    assert!(
        p.run(&["run", "p", "--date", "2024-06-01"])
            .status
            .success()
    );
    assert_eq!(p.read("report.count").lines().count(), 2);
    assert_eq!(p.runs("p").len(), 1);

    // `clear --failed` on a run with nothing failed does nothing.
    assert_eq!(p.run(&["clear", run_id, "--failed"]).status.code(), Some(1));

    // Fixed by hand: mark a failed task success, with the reason in the history.
    std::fs::remove_file(p.path().join("fixed")).unwrap();
    assert_eq!(
        p.run(&["run", "p", "--date", "2024-06-02"]).status.code(),
        Some(1)
    );
    let run2 = "20240603_0000";
    let bad = p.run(&[
        "mark",
        run2,
        "--task",
        "load",
        "--state",
        "succeeded",
        "--reason",
        "x",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("use success or failed"));
    let out = p.run(&[
        "mark",
        run2,
        "--task",
        "load",
        "--state",
        "success",
        "--reason",
        "loaded by hand from the backup",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&[
        "mark",
        run2,
        "--task",
        "report",
        "--state",
        "success",
        "--reason",
        "report sent by hand",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = p.runs("p");
    assert_eq!(runs[1]["state"], "SUCCESS", "{runs:?}");
    let r = reason_of(&explain(&p, run2, "p", None), Some("load"));
    assert_eq!(r, "marked success by hand: loaded by hand from the backup");
}
