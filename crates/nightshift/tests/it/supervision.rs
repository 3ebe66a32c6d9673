//! Supervision that nothing outside the task stalls: a locked or full store, escaped
//! descendants, huge logs, a full log disk, repeated stop signals and the scheduler's own
//! death. Real processes, a real `sqlite3` holding the lock, real tmpfs mounts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Duration of a try in seconds, from the store's figures.
fn secs(t: &Value) -> f64 {
    t["duration_ms"].as_f64().unwrap_or(-1.0) / 1000.0
}

fn only_try<'a>(doc: &'a Value, id: &str) -> &'a Value {
    let tries = task(doc, id)["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 1, "{id} ran once: {doc}");
    &tries[0]
}

/// `sqlite3` holding `BEGIN EXCLUSIVE` on the store until its stdin closes.
struct HeldLock(std::process::Child);

impl HeldLock {
    fn take(db: &std::path::Path) -> HeldLock {
        use std::io::Write;
        let mut c = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sqlite3 command-line tool (tools/testdeps/install installs it)");
        let stdin = c.stdin.as_mut().unwrap();
        writeln!(stdin, ".timeout 30000\nBEGIN EXCLUSIVE;\nSELECT 'locked';").unwrap();
        stdin.flush().unwrap();
        // Wait until the lock is really held: sqlite3 answers the SELECT inside it.
        let mut out = c.stdout.take().unwrap();
        let mut buf = [0u8; 7];
        std::io::Read::read_exact(&mut out, &mut buf).unwrap();
        assert_eq!(&buf, b"locked\n");
        HeldLock(c)
    }

    fn release(mut self) {
        use std::io::Write;
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

#[test]
fn a_store_locked_for_a_minute_stalls_no_running_try() {
    let p = TestProject::new();
    // Each task notes when it really started and ended, to check the recorded durations.
    p.file(
        "stream.sh",
        "#!/bin/sh\ndate +%s.%N > stream.start\nchunk=$(head -c 204800 /dev/zero | tr '\\0' x)\ni=0\nwhile [ $i -lt 48 ]; do echo \"$chunk\"; sleep 0.25; i=$((i+1)); done\ndate +%s.%N > stream.end\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"gate\"\ncommand = [\"sleep\", \"1\"]\n\
               [[task]]\nid = \"stream\"\ncommand = [\"./stream.sh\"]\ntimeout = \"120s\"\ndepends_on = [\"gate\"]\n\
               [[task]]\nid = \"five\"\ncommand = [\"sh\", \"-c\", \"date +%s.%N > five.start; sleep 5; date +%s.%N > five.end\"]\ndepends_on = [\"gate\"]\n\
               [[task]]\nid = \"hang\"\ncommand = [\"sleep\", \"600\"]\ntimeout = \"3s\"\ndepends_on = [\"gate\"]\n"),
    );
    p.file("nightshift.toml", "kill_grace = \"1s\"\n");
    let token = "lock-test-token-0123456789";
    let mut up = p.spawn(
        &["up", "--bind", "127.0.0.1:0"],
        &[("NIGHTSHIFT_TOKEN", token)],
        "up",
    );
    let url = web_url(&p, "up");
    p.wait_for("the gate task to start", || {
        p.runs("p").first().is_some_and(|r| r["state"] == "RUNNING")
    });
    // Take the lock while `gate` runs, so the three tasks start just before it... or not
    // at all: wait until they are running first.
    p.wait_for("the three tasks to start", || {
        let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
        ["stream", "five", "hang"]
            .iter()
            .all(|t| task(&doc, t)["state"] == "RUNNING")
    });
    let locked_at = Instant::now();
    let lock = HeldLock::take(&p.path().join(".nightshift/nightshift.db"));
    // An API write during the lock answers quickly (503 with Retry-After), not after it.
    let asked = Instant::now();
    let resp = http()
        .post(format!("{url}/api/v1/pipelines/p/runs"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(format!(r#"{{"ds": "{}"}}"#, yesterday()))
        .unwrap();
    let answered = asked.elapsed();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let health = http()
        .get(format!("{url}/healthz"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    while locked_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    lock.release();
    p.wait_for("the run to finish", || {
        p.runs("p")[0]["state"].as_str() != Some("RUNNING")
    });
    let err = p.read("up.stderr");
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    assert!(
        answered < Duration::from_secs(5),
        "the API answered within its bound during the lock: {answered:?}"
    );
    assert_eq!(status, 503, "{err}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(health.starts_with("degraded"), "{health}");
    assert!(
        err.contains("the metadata store is unavailable")
            || err.contains("the metadata store refuses writes"),
        "the degraded state is logged: {err}"
    );
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    // Each recorded duration matches what the task itself measured, within a second.
    let real = |name: &str| -> f64 {
        let t = |f: &str| p.read(f).trim().parse::<f64>().unwrap();
        t(&format!("{name}.end")) - t(&format!("{name}.start"))
    };
    let stream = only_try(&doc, "stream");
    assert_eq!(stream["state"], "SUCCESS", "{doc}");
    assert!(
        (secs(stream) - real("stream")).abs() <= 1.0,
        "{stream} vs {}",
        real("stream")
    );
    let five = only_try(&doc, "five");
    assert_eq!(five["state"], "SUCCESS", "{doc}");
    assert!(
        (secs(five) - real("five")).abs() <= 1.0,
        "{five} vs {}",
        real("five")
    );
    eprintln!(
        "recorded/real: stream {:.2}/{:.2} s, five {:.2}/{:.2} s, hang {:.2} s; API answered in {answered:?}",
        secs(stream),
        real("stream"),
        secs(five),
        real("five"),
        secs(hang_try(&doc))
    );
    let hang = hang_try(&doc);
    assert_eq!(hang["state"], "FAILED");
    assert_eq!(hang["error"], "timed out after 3s");
    assert!((2.0..=4.5).contains(&secs(hang)), "{hang}");
    let log = std::fs::read_to_string(p.path().join(stream["log_path"].as_str().unwrap())).unwrap();
    // Every byte the task wrote is in its log (long lines are kept in 64 KiB pieces).
    let xs: usize = log
        .lines()
        .filter_map(|l| l.split_once("[out] "))
        .map(|(_, t)| t.bytes().filter(|b| *b == b'x').count())
        .sum();
    assert_eq!(xs, 48 * 204_800);
    // The trigger refused during the lock created nothing.
    assert_eq!(p.runs("p").len(), 1);
}

fn hang_try(doc: &Value) -> &Value {
    only_try(doc, "hang")
}

#[test]
fn an_outcome_decided_while_the_stores_disk_is_full_is_recorded_once_space_returns() {
    let p = TestProject::new();
    let disk = SmallDisk::mount(&p.path().join(".nightshift"), "64m");
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"work\"\ncommand = [\"sh\", \"-c\", \"while [ ! -f go ]; do sleep 0.1; done; echo ran >> runs.txt\"]\n"),
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the task to start", || {
        p.runs("p").first().is_some_and(|r| r["state"] == "RUNNING")
    });
    std::thread::sleep(Duration::from_millis(500));
    let filler = disk.fill();
    // The task ends (exit 0) while nothing can be written under the store.
    p.file("go", "");
    p.wait_for("the task to finish", || p.read("runs.txt").contains("ran"));
    std::thread::sleep(Duration::from_secs(60));
    std::fs::remove_file(&filler).unwrap();
    p.wait_for("the run to finish", || {
        p.runs("p")[0]["state"].as_str() == Some("SUCCESS")
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let t = only_try(&doc, "work");
    assert_eq!(t["state"], "SUCCESS", "{doc}");
    assert!(t["error"].is_null(), "not labelled interrupted: {t}");
    assert_eq!(p.read("runs.txt").lines().count(), 1, "the task ran once");
    drop(disk);
}

#[test]
fn a_timeout_ends_setsid_and_double_forked_descendants() {
    let marker = format!("escape-marker-{}", std::process::id());
    let p = TestProject::new();
    // One child leaves the process group with setsid; one daemonizes (fork, setsid, fork)
    // and closes its output so nothing ties it to the try.
    p.file(
        "escape.sh",
        &format!(
            "#!/bin/sh\nsetsid sh -c 'sleep 300; :' {marker}-a &\n( setsid sh -c \"sh -c 'sleep 300; :' {marker}-b & exit 0\" </dev/null >/dev/null 2>&1 & )\nsh -c 'sleep 300; :' {marker}-main\n"
        ),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"escape\"\ncommand = [\"./escape.sh\"]\ntimeout = \"3s\"\n"),
    );
    p.file("nightshift.toml", "kill_grace = \"2s\"\n");
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the descendants to start", || {
        processes_with(&marker).len() >= 3
    });
    let started = Instant::now();
    // At 6 s after the start (timeout 3 s + kill grace 2 s + 1 s), nothing of the try lives.
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let alive = processes_with(&marker);
    p.wait_for("the try to be recorded", || {
        p.runs("p")[0]["state"].as_str() == Some("FAILED")
    });
    let err = p.read("up.stderr");
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    assert_eq!(alive, Vec::<u32>::new(), "descendants survived: {err}");
    assert!(err.contains("containment: "), "{err}");
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    assert_eq!(only_try(&doc, "escape")["error"], "timed out after 3s");
}

#[test]
fn an_escaped_child_holding_stdout_does_not_delay_the_outcome_or_survive() {
    let marker = format!("holder-marker-{}", std::process::id());
    let p = TestProject::new();
    p.file(
        "holder.sh",
        &format!("#!/bin/sh\nsetsid sh -c 'sleep 300; :' {marker} &\necho done\n"),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"h\"\ncommand = [\"./holder.sh\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", &yesterday()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let t = only_try(&doc, "h");
    assert_eq!(t["state"], "SUCCESS");
    assert!(secs(t) < 5.0, "the end is the main process's exit: {t}");
}

#[test]
fn a_huge_log_keeps_head_and_tail_within_its_cap() {
    let p = TestProject::new();
    // 300 MB of 100-byte lines against a 100 MiB cap (the default).
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"loud\"\ncommand = [\"sh\", \"-c\", \"yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 300000000\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", &yesterday()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let t = only_try(&doc, "loud");
    assert_eq!(t["state"], "SUCCESS");
    let path = p.path().join(t["log_path"].as_str().unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= 101 * 1024 * 1024, "{size}");
    assert!(size >= 70 * 1024 * 1024, "{size}");
    let marker = Command::new("grep")
        .args(["-c", "log cap of 100.0 MiB reached"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(stdout(&marker).trim(), "1");
    assert!(
        t["warning"]
            .as_str()
            .unwrap_or("")
            .contains("log cut at its cap"),
        "{t}"
    );
}

#[test]
fn a_full_log_disk_is_a_warning_on_the_try_not_a_failure() {
    let p = TestProject::new();
    let disk = SmallDisk::mount(&p.path().join(".nightshift/logs"), "1m");
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"chatty\"\ncommand = [\"sh\", \"-c\", \"head -c 5000000 /dev/zero | tr '\\\\0' 'y' | fold -w 100\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", &yesterday()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let t = only_try(&doc, "chatty");
    assert_eq!(t["state"], "SUCCESS", "{doc}");
    assert!(
        t["warning"]
            .as_str()
            .unwrap_or("")
            .contains("No space left on device"),
        "{t}"
    );
    assert!(
        stderr(&out).contains("the try goes on without its log"),
        "{}",
        stderr(&out)
    );
    drop(disk);
}

#[test]
fn a_second_sigterm_stops_at_once_and_no_run_is_left_running() {
    let marker = format!("second-term-{}", std::process::id());
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + &format!("[[task]]\nid = \"long\"\ncommand = [\"sh\", \"-c\", \"trap '' TERM; sleep 300; true\", \"{marker}\"]\n")),
    );
    p.file(
        "nightshift.toml",
        "shutdown_grace = \"5m\"\nkill_grace = \"5m\"\n",
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the task to start", || !processes_with(&marker).is_empty());
    sigterm(&up);
    std::thread::sleep(Duration::from_millis(500));
    assert!(up.try_wait().unwrap().is_none(), "the first SIGTERM drains");
    let second = Instant::now();
    sigterm(&up);
    let status = up.wait().unwrap();
    let took = second.elapsed();
    eprintln!("exit after the second SIGTERM: {took:?}");
    assert!(status.success(), "{}", p.read("up.stderr"));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
    let runs = p.runs("p");
    assert!(
        runs.iter().all(|r| r["state"] != "RUNNING"),
        "no run RUNNING after the shutdown: {runs:?}"
    );
    assert_eq!(runs[0]["state"], "QUEUED");
    let doc = p.tasks(runs[0]["run_id"].as_str().unwrap());
    assert_eq!(task(&doc, "long")["state"], "UP_FOR_RETRY");
}

#[test]
fn with_no_retries_a_killed_scheduler_does_not_fail_the_run() {
    let p = TestProject::new();
    p.file(
        "work.sh",
        "#!/bin/sh\necho start >> events.txt\nif [ ! -f second ]; then touch second; sleep 300; fi\necho end >> events.txt\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"w\"\ncommand = [\"./work.sh\"]\n"),
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the task to start", || {
        p.read("events.txt").contains("start")
    });
    sigkill(&mut up);
    let mut up2 = p.spawn(&["up", "--no-web"], &[], "up2");
    // A hang guard that says what both schedulers said if it trips.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !p.runs("p")[0]["state"]
        .as_str()
        .is_some_and(|s| s == "SUCCESS" || s == "FAILED")
    {
        assert!(
            Instant::now() < deadline,
            "the run did not finish\nup:\n{}\nup2:\n{}\ntasks: {}",
            p.read("up.stderr"),
            p.read("up2.stderr"),
            p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&up2);
    assert!(up2.wait().unwrap().success());
    let runs = p.runs("p");
    assert_eq!(runs[0]["state"], "SUCCESS", "{}", p.read("up2.stderr"));
    let doc = p.tasks(runs[0]["run_id"].as_str().unwrap());
    let tries = task(&doc, "w")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 2, "{doc}");
    assert!(
        tries[0]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted: the scheduler running this try"),
        "{doc}"
    );
    assert_eq!(tries[1]["state"], "SUCCESS");
}

#[test]
fn without_catchup_the_skipped_intervals_are_said_and_counted() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &days_ago(10)).replace("catchup = true", "catchup = false")
            + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
    );
    let mut up = p.spawn(&["up", "--bind", "127.0.0.1:0"], &[], "up");
    let url = web_url(&p, "up");
    p.wait_for("the latest run", || !p.runs("p").is_empty());
    let metrics = http()
        .get(format!("{url}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let err = p.read("up.stderr");
    assert_eq!(
        err.matches("catchup = false: skipped 9 interval(s)")
            .count(),
        1,
        "{err}"
    );
    assert!(
        metrics.contains("nightshift_skipped_intervals_total{pipeline=\"p\"} 9"),
        "{metrics}"
    );
    assert_eq!(p.runs("p").len(), 1);
}

#[test]
fn ctrl_c_on_a_foreground_backfill_cancels_its_runs_and_the_schedule_goes_on() {
    let p = TestProject::new();
    p.file(
        "pipelines/bf.toml",
        &(daily("bf", &days_ago(300))
            .replace("catchup = true", "catchup = false")
            .replace("max_active_runs = 1", "max_active_runs = 2")
            + "[[task]]\nid = \"a\"\ncommand = [\"sleep\", \"0.3\"]\n"),
    );
    p.file(
        "pipelines/minutely.toml",
        "schedule = \"* * * * *\"\nstart_date = \"2024-01-01\"\ncatchup = false\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the schedule's first run", || {
        !p.runs("minutely").is_empty()
    });
    let (from, to) = (days_ago(250), days_ago(51));
    let mut bf = p.spawn(
        &["backfill", "bf", "--from", &from, "--to", &to],
        &[],
        "backfill",
    );
    let backfill_runs = || -> Vec<Value> {
        p.runs_all("bf")
            .into_iter()
            .filter(|r| r["trigger"] == "backfill")
            .collect()
    };
    let done = |runs: &[Value]| runs.iter().filter(|r| r["state"] == "SUCCESS").count();
    p.wait_for("a few backfill runs to succeed", || {
        done(&backfill_runs()) >= 3
    });
    let _ = Command::new("kill")
        .args(["-INT", &bf.id().to_string()])
        .status();
    let status = bf.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", p.read("backfill.stderr"));
    let err = p.read("backfill.stderr");
    assert!(err.contains("unfinished run(s) cancelled"), "{err}");
    let after = backfill_runs();
    assert_eq!(after.len(), 200);
    // The engine of `up` stops any try of a cancelled run at its next heartbeat.
    std::thread::sleep(Duration::from_secs(5));
    let later = backfill_runs();
    assert_eq!(done(&later), done(&after), "SUCCESS runs stopped growing");
    let cancelled = later.iter().filter(|r| r["state"] == "CANCELLED").count();
    assert_eq!(done(&later) + cancelled, 200, "{later:?}");
    assert!(cancelled > 100);
    // The schedule was not touched: the every-minute pipeline gets its next run.
    let before = p.runs("minutely").len();
    p.wait_for("the schedule to fire again", || {
        p.runs("minutely").len() > before
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    // Running the same backfill again resumes the cancelled runs.
    let again = p.run(&[
        "backfill",
        "bf",
        "--from",
        &days_ago(55),
        "--to",
        &to,
        "--detach",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn cancel_stops_a_running_try_and_records_it() {
    let marker = format!("cancel-marker-{}", std::process::id());
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + &format!("[[task]]\nid = \"long\"\ncommand = [\"sh\", \"-c\", \"sleep 300; true\", \"{marker}\"]\n[[task]]\nid = \"after\"\ncommand = [\"true\"]\ndepends_on = [\"long\"]\n")),
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("the task to start", || !processes_with(&marker).is_empty());
    let run_id = p.runs("p")[0]["run_id"].as_str().unwrap().to_owned();
    let bad = p.run(&["cancel", "p"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("name the runs to cancel"),
        "{}",
        stderr(&bad)
    );
    let out = p.run(&["cancel", "p", &run_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("cancelled 1 run(s): {run_id}")));
    p.wait_for("the try's process to be killed", || {
        processes_with(&marker).is_empty()
    });
    let again = p.run(&["cancel", "p", &run_id]);
    assert_eq!(again.status.code(), Some(1), "nothing left to cancel");
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let runs = p.runs("p");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["state"], "CANCELLED");
    let doc = p.tasks(&run_id);
    assert_eq!(task(&doc, "long")["state"], "CANCELLED");
    assert_eq!(task(&doc, "after")["state"], "CANCELLED");
    let t = only_try(&doc, "long");
    assert_eq!(t["state"], "CANCELLED", "{doc}");
    assert!(t["error"].as_str().unwrap().starts_with("cancelled"), "{t}");
    let why = stdout(&p.run(&["explain", &run_id]));
    assert!(why.contains("cancelled at"), "{why}");
    // A cancelled run can be run again.
    let rerun = p.run(&["rerun", &run_id]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
}

#[test]
fn a_task_that_keeps_taking_its_scheduler_down_fails_after_three_interruptions() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"t\"\ncommand = [\"sleep\", \"5\"]\n"),
    );
    // Each `up` kills itself (SIGKILL) right after starting the task; the next one recovers
    // the try as interrupted and starts it again.
    for i in 0..4 {
        let mut up = p.spawn(
            &["up", "--no-web"],
            &[("NIGHTSHIFT_CRASH_AT", "after_spawn:t")],
            &format!("crash{i}"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while up.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "up did not reach its crash point"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut up = p.spawn(&["up", "--no-web"], &[], "last");
    p.wait_for("the run to fail", || {
        p.runs("p")[0]["state"].as_str() == Some("FAILED")
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let tries = task(&doc, "t")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 4, "{doc}");
    for t in &tries[..3] {
        assert!(
            t["error"]
                .as_str()
                .unwrap()
                .starts_with("interrupted: the scheduler"),
            "{t}"
        );
    }
    assert!(
        tries[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted 4 times in a row"),
        "{doc}"
    );
    assert_eq!(task(&doc, "t")["state"], "FAILED");
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_killed_spawner_loses_no_outcome_and_runs_nothing_twice() {
    let p = TestProject::new();
    // `slow` is running (started by the spawner) when the spawner is SIGKILLed; `after`
    // starts once it is gone. Each appends a line per start, to count them.
    p.file(
        "slow.sh",
        "#!/bin/sh\necho start >> slow.ran\nwhile [ ! -e go ]; do sleep 0.05; done\nexit 0\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday())
            + "[[task]]\nid = \"slow\"\ncommand = [\"./slow.sh\"]\n\n\
               [[task]]\nid = \"after\"\ncommand = [\"sh\", \"-c\", \"echo start >> after.ran\"]\ndepends_on = [\"slow\"]\n"),
    );
    let mut up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("slow to start", || p.read("slow.ran").lines().count() == 1);
    let up_pid = up.id();
    let spawner: Vec<u32> = processes_with("__spawner")
        .into_iter()
        .filter(|pid| parent_of(*pid) == Some(up_pid))
        .collect();
    assert_eq!(
        spawner.len(),
        1,
        "one spawner under up: {}",
        p.read("up.stderr")
    );
    let killed = Command::new("kill")
        .args(["-KILL", &spawner[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    p.wait_for("the spawner to be gone", || {
        processes_with("__spawner")
            .iter()
            .all(|pid| *pid != spawner[0])
    });
    // The try the spawner started lives on, and its end is still seen.
    p.file("go", "");
    p.wait_for("the run to end", || {
        p.runs("p")
            .first()
            .is_some_and(|r| r["state"] != "RUNNING" && r["state"] != "QUEUED")
    });
    let err = p.read("up.stderr");
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let run = &p.runs("p")[0];
    assert_eq!(run["state"], "SUCCESS", "{run}\n{err}");
    let doc = p.tasks(run["run_id"].as_str().unwrap());
    assert_eq!(only_try(&doc, "slow")["state"], "SUCCESS");
    assert_eq!(only_try(&doc, "after")["state"], "SUCCESS");
    assert_eq!(p.read("slow.ran").lines().count(), 1, "slow ran once");
    assert_eq!(p.read("after.ran").lines().count(), 1, "after ran once");
    assert!(err.contains("the spawner ended"), "{err}");
}

#[test]
fn with_or_without_the_spawner_a_task_is_born_in_its_tries_cgroup() {
    let p = TestProject::new();
    // The task writes its own cgroup, and a child it starts writes its own.
    p.file(
        "where.sh",
        "#!/bin/sh\ncat /proc/self/cgroup > \"where-$1\"\nsh -c 'cat /proc/self/cgroup' > \"child-$1\"\n",
    );
    for mode in ["on", "off"] {
        p.file(
            &format!("pipelines/{mode}.toml"),
            &(daily(mode, &yesterday())
                + &format!("[[task]]\nid = \"w\"\ncommand = [\"./where.sh\", \"{mode}\"]\n")),
        );
    }
    for mode in ["on", "off"] {
        let out = p
            .cmd(&["run", mode, "--date", &yesterday()])
            .env("NIGHTSHIFT_SPAWNER", mode)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let own = p.read(&format!("where-{mode}"));
        let child = p.read(&format!("child-{mode}"));
        assert!(
            own.contains("/nightshift-") && own.contains("/try-"),
            "{mode}: the task runs in its try's cgroup: {own:?}"
        );
        assert_eq!(own, child, "{mode}: its child is born there too");
    }
}
