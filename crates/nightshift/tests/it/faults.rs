//! Faults for real, each followed by the checks that nothing was lost: no run missing or
//! doubled, no partition doubled or half-written, no try left RUNNING, the store intact.
//! docs/runbook.md names these tests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dbt::{reference_project, shop_day};
use crate::support::*;

/// No try is RUNNING, every run of the pipeline is unique per interval, and the store
/// passes SQLite's integrity check.
fn assert_store_sound(p: &TestProject, pipeline: &str) {
    let c = rusqlite::Connection::open(p.path().join(".nightshift/nightshift.db")).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let running: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM task_tries WHERE end_time IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 0, "a try was left RUNNING");
    let dup: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM (SELECT data_interval_start FROM pipeline_runs WHERE pipeline = ?1 GROUP BY 1 HAVING COUNT(*) > 1)",
            [pipeline],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dup, 0, "a run was duplicated");
}

/// Visible (non-hidden) entries of a folder.
fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn sigkill_of_the_scheduler_during_extract_dbt_run_and_publish_then_restart_completes() {
    let p = reference_project(1);
    let days = [
        ("2024-06-01", "extract_data"),
        ("2024-06-02", "dbt_run"),
        ("2024-06-03", "publish"),
    ];
    for (day, _) in &days {
        shop_day(&p, day, false);
    }
    for (day, task_id) in days {
        // The engine kills itself with SIGKILL right after it started the task's process,
        // which goes on as an orphan.
        let crashed = p
            .cmd(&["run", "nightly", "--date", day])
            .env("NIGHTSHIFT_CRASH_AT", format!("after_spawn:{task_id}"))
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(crashed.status.signal(), Some(9), "{}", stderr(&crashed));
        // The restart kills what is left of the try, retries it, and finishes the run.
        let out = p.run(&["run", "nightly", "--date", day]);
        assert!(
            out.status.success(),
            "{day}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let run_id = format!(
            "{}_0000",
            jiff::civil::Date::strptime("%Y-%m-%d", day)
                .unwrap()
                .tomorrow()
                .unwrap()
                .strftime("%Y%m%d")
        );
        let doc = p.tasks(&run_id);
        let t = task(&doc, task_id);
        assert_eq!(t["state"], "SUCCESS", "{t}");
        let tries: Vec<&str> = t["tries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["state"].as_str().unwrap())
            .collect();
        assert_eq!(tries, ["FAILED", "SUCCESS"], "{t}");
        assert!(
            t["tries"][0]["error"]
                .as_str()
                .unwrap()
                .starts_with("interrupted: the scheduler running this try"),
            "{t}"
        );
        // Nothing doubled: the raw partition holds the source's orders of that day once,
        // and the published partition agrees.
        let orders = source_count(
            &p.path().join("source/shop.db"),
            &format!("SELECT COUNT(*) FROM orders WHERE substr(order_ts, 1, 10) = '{day}'"),
        );
        assert_eq!(
            visible(&p.path().join("data/raw/orders"))
                .iter()
                .filter(|d| d.as_str() == format!("dt={day}"))
                .count(),
            1
        );
        assert_eq!(
            parquet_rows(&p.path().join(format!("data/raw/orders/dt={day}"))),
            orders
        );
        let m: Value =
            serde_json::from_str(&p.read(&format!("published/fct_orders/dt={day}/_manifest.json")))
                .unwrap();
        assert_eq!(m["rows"], orders, "{m}");
        assert_eq!(m["run_id"], run_id);
    }
    assert_eq!(p.runs("nightly").len(), 3);
    assert!(p.runs("nightly").iter().all(|r| r["state"] == "SUCCESS"));
    assert_eq!(
        visible(&p.path().join("published/fct_orders")),
        ["dt=2024-06-01", "dt=2024-06-02", "dt=2024-06-03"]
    );
    assert_store_sound(&p, "nightly");
}

#[test]
fn a_task_killed_from_outside_is_recorded_with_the_signal_and_retried() {
    let p = TestProject::new();
    // The first try waits to be killed (as the OOM killer would); the second succeeds.
    p.file(
        "task.sh",
        "#!/bin/sh\nif [ \"$NIGHTSHIFT_TRY_NUMBER\" = 1 ]; then echo $$ > victim.pid; sleep 60; fi\necho fine\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01").replace("retries = 0", "retries = 1")
            + "[[task]]\nid = \"big\"\ncommand = [\"./task.sh\"]\n"),
    );
    let mut run = p.spawn(&["run", "p", "--date", "2024-06-01"], &[], "run");
    p.wait_for("the first try", || {
        p.path().join("victim.pid").exists() && !p.read("victim.pid").trim().is_empty()
    });
    let pid = p.read("victim.pid").trim().to_owned();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(run.wait().unwrap().success(), "{}", p.read("run.stderr"));
    let doc = p.tasks("20240602_0000");
    let t = task(&doc, "big");
    assert_eq!(t["state"], "SUCCESS");
    let first = &t["tries"][0];
    assert_eq!(first["state"], "FAILED");
    assert_eq!(first["signal"], 9);
    assert_eq!(first["error"], "killed by signal SIGKILL (9)");
    assert_eq!(t["tries"][1]["state"], "SUCCESS");
    let why = stdout(&p.run(&["explain", "20240602_0000", "big"]));
    assert!(why.contains("succeeded on try 2 of 2"), "{why}");
    assert_store_sound(&p, "p");
}

#[test]
fn disk_full_while_writing_a_partition_fails_clearly_and_keeps_the_previous_one() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[connections.shop]\nkind = \"sqlite\"\npath = \"source/shop.db\"\n",
    );
    let db = p.path().join("source/shop.db");
    let shop = |orders: &str| {
        let _ = std::fs::remove_file(&db);
        let out = p.run(&[
            "shop",
            "--db",
            db.to_str().unwrap(),
            "--from",
            "2024-06-01",
            "--to",
            "2024-06-01",
            "--orders",
            orders,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    shop("200");
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01")
            + "[[task]]\nid = \"extract_data\"\nkind = \"extract\"\nconnection = \"shop\"\n[[task.table]]\nname = \"orders\"\nsql = \"SELECT * FROM orders WHERE order_ts >= :start AND order_ts < :end\"\n"),
    );
    let raw = p.path().join("data/raw");
    let _disk = SmallDisk::mount(&raw, "256k");
    assert!(
        p.run(&["run", "nightly", "--date", "2024-06-01"])
            .status
            .success()
    );
    let dir = raw.join("orders/dt=2024-06-01");
    let part = dir.join("part-0.parquet");
    let before = std::fs::read(&part).unwrap();
    let rows_before = parquet_rows(&dir);
    assert_eq!(
        rows_before,
        source_count(&db, "SELECT COUNT(*) FROM orders")
    );

    // The source grows past what the disk can hold; the rerun's write fails.
    shop("20000");
    let out = p.run(&["run", "nightly", "--date", "2024-06-01", "--rerun"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = p.tasks("20240602_0000");
    let err = task(&doc, "extract_data")["tries"][1]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("No space left on device"), "{err}");
    // The previous partition is untouched and readable; nothing half-written is visible,
    // and the hidden staging folder was removed.
    assert_eq!(std::fs::read(&part).unwrap(), before);
    assert_eq!(parquet_rows(&dir), rows_before);
    assert_eq!(visible(&raw.join("orders")), ["dt=2024-06-01"]);
    let hidden: Vec<_> = std::fs::read_dir(raw.join("orders"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    assert_store_sound(&p, "nightly");
}

#[test]
fn a_locked_store_makes_the_scheduler_wait_then_continue() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"a\"\ncommand = [\"sleep\", \"1\"]\n[[task]]\nid = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n"),
    );
    // Statements give up on a lock after 200 ms instead of 30 s, so the lock below
    // outlasts them many times over.
    let mut up = p.spawn(
        &["up", "--no-web"],
        &[("NIGHTSHIFT_STORE_BUSY_TIMEOUT_MS", "200")],
        "up",
    );
    p.wait_for("task a to start", || {
        p.runs("p").first().is_some_and(|r| r["state"] == "RUNNING")
    });
    {
        let c = rusqlite::Connection::open(p.path().join(".nightshift/nightshift.db")).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        std::thread::sleep(Duration::from_secs(5));
        c.execute_batch("COMMIT").unwrap();
    }
    p.wait_for("the run to finish", || p.runs("p")[0]["state"] == "SUCCESS");
    let err = p.read("up.stderr");
    assert!(err.contains("the metadata store is unavailable"), "{err}");
    assert!(
        up.try_wait().unwrap().is_none(),
        "the scheduler kept running:\n{err}"
    );
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    assert_eq!(p.runs("p").len(), 1);
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    for t in ["a", "b"] {
        assert_eq!(task(&doc, t)["tries"].as_array().unwrap().len(), 1, "{doc}");
    }
    assert_store_sound(&p, "p");
}

#[test]
fn an_invalid_edit_while_up_runs_keeps_the_last_valid_version_until_fixed() {
    let p = TestProject::new();
    let start = days_ago(3);
    let ds = days_ago(2);
    let run_id = days_ago(1).replace('-', "") + "_0000";
    let good = daily("p", &start) + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n";
    p.file("pipelines/p.toml", &good);
    let mut up = p.spawn(
        &["up", "--bind", "127.0.0.1:0"],
        &[("NIGHTSHIFT_TOKEN", crate::web::TOKEN)],
        "up",
    );
    let url = web_url(&p, "up");
    p.wait_for("catch-up runs", || {
        let runs = p.runs("p");
        runs.len() == 3 && runs.iter().all(|r| r["state"] == "SUCCESS")
    });

    // An invalid edit: reported by `up` with its place in the file, by `validate`, and by
    // the UI; the pipeline keeps running on its last valid version.
    p.file(
        "pipelines/p.toml",
        &good.replace(
            "command = [\"true\"]",
            "command = [\"true\"]\ndepends_on = [\"nope\"]",
        ),
    );
    p.wait_for("the error in up's log", || {
        p.read("up.stderr").contains("unknown")
    });
    let err = p.read("up.stderr");
    assert!(
        err.contains("p.toml:") && err.contains("keeping its last valid version"),
        "{err}"
    );
    let v = p.run(&["validate"]);
    assert_eq!(v.status.code(), Some(2));
    assert!(stderr(&v).contains("nope"), "{}", stderr(&v));
    let page = http()
        .get(&format!("{url}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        page.contains("This file has errors") && page.contains("nope"),
        "{page}"
    );
    let agent = http();
    let trigger = |ds: &str| {
        let mut r = agent
            .post(&format!("{url}/api/v1/pipelines/p/runs"))
            .header("authorization", &format!("Bearer {}", crate::web::TOKEN))
            .send(format!("{{\"ds\": \"{ds}\", \"rerun\": true}}"))
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (code, body) = trigger(&ds);
    assert_eq!(code, 201, "{body}");
    p.wait_for("the rerun on the last valid version", || {
        let doc = p.tasks(&run_id);
        doc["run"]["state"] == "SUCCESS"
            && doc["run"]["trigger"] == "manual"
            && doc["tasks"].as_array().unwrap().len() == 1
    });

    // Fixed (with a new task): the new version is used from then on.
    p.file(
        "pipelines/p.toml",
        &(good.clone() + "[[task]]\nid = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = trigger(&ds);
    assert_eq!(code, 201, "{body}");
    p.wait_for("the rerun on the fixed version", || {
        let doc = p.tasks(&run_id);
        doc["tasks"].as_array().unwrap().len() == 2 && doc["run"]["state"] == "SUCCESS"
    });
    assert!(p.run(&["validate"]).status.success());
    sigterm(&up);
    up.wait().unwrap();
    assert_store_sound(&p, "p");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_365_day_backfill_is_bounded_flat_in_memory_and_resumes_without_duplicates() {
    let p = TestProject::new();
    p.file("nightshift.toml", "[pools]\nslots2 = { slots = 2 }\n");
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2023-01-01").replace("max_active_runs = 1", "max_active_runs = 3")
            + "[[task]]\nid = \"a\"\npool = \"slots2\"\ncommand = [\"true\"]\n[[task]]\nid = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n"),
    );
    let db = p.path().join(".nightshift/nightshift.db");
    let sample = |c: &rusqlite::Connection| -> (i64, i64, i64) {
        let q = |s: &str| c.query_row(s, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
        (
            q("SELECT COUNT(*) FROM pipeline_runs WHERE status = 'RUNNING'"),
            q("SELECT COUNT(*) FROM task_instances WHERE state = 'RUNNING' AND pool = 'slots2'"),
            q("SELECT COUNT(*) FROM pipeline_runs WHERE status = 'SUCCESS'"),
        )
    };
    let mut bf = p.spawn(
        &[
            "backfill",
            "p",
            "--from",
            "2023-01-01",
            "--to",
            "2023-12-31",
        ],
        &[],
        "bf1",
    );
    p.wait_for("the store", || db.exists());
    let c = rusqlite::Connection::open(&db).unwrap();
    let (mut max_runs, mut max_pool) = (0, 0);
    let mut rss = vec![];
    let deadline = Instant::now() + Duration::from_secs(300);
    // Interrupt it a third of the way through.
    loop {
        let (r, pool, done) = sample(&c);
        max_runs = max_runs.max(r);
        max_pool = max_pool.max(pool);
        rss.push((done, rss_kb(bf.id())));
        if done >= 120 {
            break;
        }
        assert!(Instant::now() < deadline, "the backfill made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&bf);
    assert!(bf.wait().unwrap().code().is_some());
    let interrupted_runs = sample(&c).2;
    assert!(interrupted_runs < 365);
    // Resumed: the same command finishes the rest.
    let mut bf = p.spawn(
        &[
            "backfill",
            "p",
            "--from",
            "2023-01-01",
            "--to",
            "2023-12-31",
        ],
        &[],
        "bf2",
    );
    loop {
        let (r, pool, done) = sample(&c);
        max_runs = max_runs.max(r);
        max_pool = max_pool.max(pool);
        rss.push((done, rss_kb(bf.id())));
        if let Some(st) = bf.try_wait().unwrap() {
            assert!(st.success(), "{}", p.read("bf2.stderr"));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(max_runs <= 3, "max_active_runs exceeded: {max_runs}");
    assert!(max_pool <= 2, "pool slots exceeded: {max_pool}");
    // Exactly one run per day, all succeeded, each task succeeded exactly once.
    let runs = p.runs_all("p");
    assert_eq!(runs.len(), 365);
    let not_ok: Vec<&Value> = runs.iter().filter(|r| r["state"] != "SUCCESS").collect();
    assert!(
        not_ok.is_empty(),
        "{not_ok:?}\n{}",
        not_ok
            .iter()
            .map(|r| p.tasks(r["run_id"].as_str().unwrap()).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ok: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM task_tries WHERE state = 'SUCCESS'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ok, 730, "each task of each day succeeded exactly once");
    // Memory stays flat: the second process's peak is not far above its early figure.
    let second: Vec<u64> = rss
        .iter()
        .filter(|(d, _)| *d > interrupted_runs)
        .map(|(_, k)| *k)
        .filter(|k| *k > 0)
        .collect();
    if let (Some(first), Some(max)) = (second.first(), second.iter().max()) {
        assert!(
            *max < first * 2 + 20_000,
            "RSS grew from {first} kB to {max} kB"
        );
    }
    assert_store_sound(&p, "p");
}

#[test]
fn bad_input_at_every_door_gets_a_clear_error_and_nothing_else_happens() {
    let p = TestProject::new();
    // A task id with shell metacharacters is refused with its place in the file.
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"a;rm -rf x\"\ncommand = [\"true\"]\n"),
    );
    let v = p.run(&["validate"]);
    assert_eq!(v.status.code(), Some(2));
    assert!(stderr(&v).contains("p.toml:14:6"), "{}", stderr(&v));
    assert!(p.runs_all("p").is_empty() || !p.path().join(".nightshift/nightshift.db").exists());

    // Arguments with shell metacharacters and unicode reach the task as they are; a 10 MB
    // line is kept in bounded pieces and the run goes on.
    let arg = "$(touch pwned); `touch pwned2` && echo ünïcødé ☃ | cat > /dev/null; 'q\"";
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + &format!("[[task]]\nid = \"args\"\ncommand = [\"sh\", \"-c\", \"printf '%s' \\\"$1\\\" > got.txt\", \"sh\", {}]\n", serde_json::to_string(arg).unwrap())
            + "[[task]]\nid = \"huge\"\ncommand = [\"sh\", \"-c\", \"head -c 10485760 /dev/zero | tr '\\\\000' x; echo; echo after\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(p.read("got.txt"), arg);
    assert!(!p.path().join("pwned").exists() && !p.path().join("pwned2").exists());
    let log = stdout(&p.run(&["logs", "20240602_0000", "huge"]));
    let xs: usize = log.bytes().filter(|b| *b == b'x').count();
    assert_eq!(xs, 10_485_760, "the whole line is in the log");
    assert!(
        log.lines().all(|l| l.len() <= 64 * 1024 + 64),
        "long lines are split"
    );
    assert!(log.contains("after"));
}
