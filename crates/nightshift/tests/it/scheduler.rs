//! The scheduler end to end: simulated nights, retries, timeouts, trigger rules, pools,
//! backfills, reloading pipeline files.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn three_simulated_nights_make_three_runs_in_order() {
    let p = TestProject::example();
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-06-01T23:00:00Z",
        "--simulate-until",
        "2024-06-04T01:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = p.runs("nightly");
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["20240602_0000", "20240603_0000", "20240604_0000"]);
    for r in &runs {
        assert_eq!(r["state"], "SUCCESS", "{r}");
        assert_eq!(r["trigger"], "scheduled");
        // Started at its fire time (the simulated clock jumps exactly there).
        let fire = ts(&r["data_interval_end"]);
        let started = ts(&r["start_time"]);
        assert!(
            started >= fire && started.duration_since(fire).as_secs() < 60,
            "{r}"
        );
        // Tasks ran in dependency order.
        let doc = p.tasks(r["run_id"].as_str().unwrap());
        let chain = ["extract_data", "dbt_run", "dbt_test", "notify"];
        for pair in chain.windows(2) {
            let up = &task(&doc, pair[0])["tries"][0];
            let down = &task(&doc, pair[1])["tries"][0];
            assert_eq!(up["state"], "SUCCESS");
            assert!(
                ts(&down["start_time"]) >= ts(&up["end_time"]),
                "{} before {}",
                pair[1],
                pair[0]
            );
        }
    }
    // The seed-style lines went to stdout, run by run.
    let text = stdout(&out);
    assert_eq!(
        text.matches("Task extract_data: SUCCESS (2024-06-0")
            .count(),
        3,
        "{text}"
    );
    assert!(
        text.contains("Run nightly 20240602_0000 (ds 2024-06-01): SUCCESS"),
        "{text}"
    );
    // Simulating again creates nothing new: one run per interval, ever.
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-06-01T23:00:00Z",
        "--simulate-until",
        "2024-06-04T01:00:00Z",
    ]);
    assert!(out.status.success());
    assert_eq!(p.runs("nightly").len(), 3);
}

#[test]
fn dst_nights_in_berlin_are_simulated_once_each() {
    let p = TestProject::new();
    p.file(
        "pipelines/berlin.toml",
        "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nstart_date = \"2024-03-29\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
    );
    let out = p.run(&[
        "up",
        "--simulate-from",
        "2024-03-29T00:00:00Z",
        "--simulate-until",
        "2024-04-02T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = p.runs("berlin");
    let got: Vec<(String, String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["run_id"].as_str().unwrap().into(),
                r["ds"].as_str().unwrap().into(),
                r["data_interval_end"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("20240330_0230", "2024-03-29", "2024-03-30T01:30:00Z"),
        ("20240331_0300", "2024-03-30", "2024-03-31T01:00:00Z"),
        ("20240401_0230", "2024-03-31", "2024-04-01T00:30:00Z"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
}

#[test]
fn a_task_that_fails_once_is_retried_and_the_run_succeeds() {
    let p = TestProject::new();
    p.file("flaky.sh", "#!/bin/sh\nif [ \"$NIGHTSHIFT_TRY_NUMBER\" = 1 ]; then echo 'transient error' >&2; exit 3; fi\necho ok\n");
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"flaky\"\ncommand = [\"./flaky.sh\"]\nretries = 2\nretry_delay = \"200ms\"\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "one line per task: {}",
        stdout(&out)
    );
    let doc = p.tasks("20240602_0000");
    let t = task(&doc, "flaky");
    let tries = t["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0]["state"], "FAILED");
    assert_eq!(tries[0]["exit_code"], 3);
    assert_eq!(tries[0]["error"], "exited with code 3");
    assert_eq!(tries[1]["state"], "SUCCESS");
    // The retry waited at least half the configured delay (equal jitter).
    let gap = ts(&tries[1]["start_time"]).duration_since(ts(&tries[0]["end_time"]));
    assert!(gap.as_millis() >= 100, "retry came after {gap:?}");
    assert_eq!(doc["run"]["state"], "SUCCESS");
    let log = stdout(&p.run(&["logs", "20240602_0000", "flaky", "--try", "1"]));
    assert!(log.contains("[err] transient error"), "{log}");
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let marker = format!("{}", 700_000 + std::process::id() % 100_000);
    let p = TestProject::new();
    p.file("nightshift.toml", "kill_grace = \"1s\"\n");
    p.file(
        "slow.sh",
        &format!("#!/bin/sh\nsleep {marker} &\nsleep {marker}\n"),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"slow\"\ncommand = [\"./slow.sh\"]\ntimeout = \"1s\"\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).trim_end().rsplit_once(" (").unwrap().0,
        "Task slow: FAILED"
    );
    // The line says how long it ran and why it failed.
    assert!(
        stdout(&out).contains(" in 1.") && stdout(&out).contains("— timed out after 1s"),
        "{}",
        stdout(&out)
    );
    let doc = p.tasks("20240602_0000");
    assert_eq!(
        task(&doc, "slow")["tries"][0]["error"],
        "timed out after 1s"
    );
    assert_eq!(
        processes_with(&format!("sleep {marker}")),
        Vec::<u32>::new(),
        "a grandchild survived the timeout"
    );
}

#[test]
fn trigger_rules_decide_what_runs_after_a_failure() {
    let p = TestProject::new();
    let mut src = daily("p", "2024-06-01");
    for (id, cmd, deps, rule) in [
        ("extract_data", "false", "[]", "all_success"),
        ("dbt_run", "true", "[\"extract_data\"]", "all_success"),
        ("dbt_test", "true", "[\"dbt_run\"]", "all_success"),
        ("notify", "true", "[\"dbt_test\"]", "all_done"),
        ("on_failure", "true", "[\"extract_data\"]", "one_failed"),
        ("cleanup", "true", "[\"dbt_test\"]", "none_failed"),
    ] {
        src += &format!(
            "[[task]]\nid = \"{id}\"\ncommand = [\"{cmd}\"]\ndepends_on = {deps}\ntrigger_rule = \"{rule}\"\n\n"
        );
    }
    p.file("pipelines/p.toml", &src);
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1), "a run with a failed task fails");
    let doc = p.tasks("20240602_0000");
    let state = |id: &str| task(&doc, id)["state"].as_str().unwrap().to_owned();
    assert_eq!(state("extract_data"), "FAILED");
    assert_eq!(state("dbt_run"), "UPSTREAM_FAILED");
    assert_eq!(state("dbt_test"), "UPSTREAM_FAILED");
    assert_eq!(state("notify"), "SUCCESS");
    assert_eq!(state("on_failure"), "SUCCESS");
    assert_eq!(state("cleanup"), "UPSTREAM_FAILED");
    assert_eq!(doc["run"]["state"], "FAILED");
    let text = stdout(&out);
    assert!(text.contains("Task notify: SUCCESS"), "{text}");
}

#[test]
fn pools_bound_concurrency_across_runs() {
    let p = TestProject::new();
    p.file("nightshift.toml", "[pools]\nwarehouse = { slots = 1 }\n");
    // Each task records its start and end; with one slot no two intervals may overlap.
    p.file("work.sh", "#!/bin/sh\necho \"start $(date +%s%N)\" >> spans.txt\nsleep 0.2\necho \"end $(date +%s%N)\" >> spans.txt\n");
    let mut src = daily("p", "2024-06-01").replace("max_active_runs = 1", "max_active_runs = 3");
    for id in ["a", "b", "c"] {
        src += &format!(
            "[[task]]\nid = \"{id}\"\ncommand = [\"./work.sh\"]\npool = \"warehouse\"\n\n"
        );
    }
    p.file("pipelines/p.toml", &src);
    let out = p.run(&[
        "backfill",
        "p",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-02",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spans = p.read("spans.txt");
    let mut depth = 0;
    let mut events: Vec<(u128, i32)> = spans
        .lines()
        .map(|l| {
            let (kind, t) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), if kind == "start" { 1 } else { -1 })
        })
        .collect();
    events.sort();
    assert_eq!(events.len(), 12);
    for (_, d) in events {
        depth += d;
        assert!(depth <= 1, "two pool tasks overlapped:\n{spans}");
    }
}

#[test]
fn backfill_plans_runs_once_and_reruns_without_duplicates() {
    let p = TestProject::example();
    let out = p.run(&[
        "backfill",
        "nightly",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-03",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert_eq!(plan.matches(" new").count(), 3, "{plan}");
    assert!(p.runs("nightly").is_empty(), "a dry run changes nothing");

    let out = p.run(&[
        "backfill",
        "nightly",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-03",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = p.runs("nightly");
    assert_eq!(runs.len(), 3);
    assert!(
        runs.iter()
            .all(|r| r["state"] == "SUCCESS" && r["trigger"] == "backfill")
    );
    let rows: Vec<Value> = runs.iter().map(|r| r["rows_loaded"].clone()).collect();
    let raw = p.read("data/raw/orders/dt=2024-06-02/orders.csv");

    // Again: everything is done, nothing runs.
    let out = p.run(&[
        "backfill",
        "nightly",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-03",
        "--dry-run",
    ]);
    assert_eq!(
        stdout(&out).matches("skip (already SUCCESS").count(),
        3,
        "{}",
        stdout(&out)
    );
    let out = p.run(&[
        "backfill",
        "nightly",
        "--from",
        "2024-06-02",
        "--to",
        "2024-06-02",
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "", "nothing ran");

    // --rerun reprocesses in place: same runs, same rows, same partition.
    let out = p.run(&[
        "backfill",
        "nightly",
        "--from",
        "2024-06-02",
        "--to",
        "2024-06-02",
        "--rerun",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Task extract_data: SUCCESS"));
    let again = p.runs("nightly");
    assert_eq!(again.len(), 3);
    assert_eq!(
        again
            .iter()
            .map(|r| r["rows_loaded"].clone())
            .collect::<Vec<_>>(),
        rows
    );
    assert_eq!(p.read("data/raw/orders/dt=2024-06-02/orders.csv"), raw);
    let doc = p.tasks("20240603_0000");
    assert_eq!(
        task(&doc, "extract_data")["tries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn up_picks_up_added_changed_and_broken_pipeline_files() {
    let p = TestProject::new();
    let day = yesterday();
    p.file(
        "pipelines/first.toml",
        &(daily("first", &day) + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
    );
    let mut up = p.spawn(&["up"], &[], "up");
    p.wait_for("the first pipeline's run", || {
        p.runs("first").iter().any(|r| r["state"] == "SUCCESS")
    });
    // Added while running.
    p.file(
        "pipelines/second.toml",
        &(daily("second", &day) + "[[task]]\nid = \"b\"\ncommand = [\"true\"]\n"),
    );
    p.wait_for("the added pipeline's run", || {
        p.runs("second").iter().any(|r| r["state"] == "SUCCESS")
    });
    // Broken while running: reported, and the process keeps going.
    p.file("pipelines/second.toml", "schedule = \"0 0 * * * *\"\n");
    p.wait_for("the error report", || {
        p.read("up.stderr").contains("invalid pipeline file")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        up.try_wait().unwrap().is_none(),
        "up must survive a bad file"
    );
    assert!(
        p.read("up.stderr").contains("pipelines/second.toml:1:12"),
        "{}",
        p.read("up.stderr")
    );
    sigterm(&up);
    let status = up.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", p.read("up.stderr"));
}

#[test]
fn templates_render_into_single_arguments_and_the_environment() {
    let p = TestProject::new();
    p.file("show.sh", "#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done\nenv | grep -E '^(NIGHTSHIFT_|X=)' | grep -v -e METRICS -e TRY_KEY -e NIGHTSHIFT_TEST_ | sort\n");
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"show\"\ncommand = [\"./show.sh\", \"{{ ds }}\", \"{{ ds_nodash }}\", \"{{ run_id }}\", \"{{ data_interval_start }}\", \"{{ data_interval_end }}\", \"{{ try_number }}\", \"{{ pipeline }}/{{ task_id }}\", \"$(touch pwned); `touch pwned2` | x\"]\nenv = { X = \"{{ ds }}-x\" }\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stdout(&p.run(&["logs", "20240602_0000", "show"]));
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.split_once("[out] ").unwrap().1)
        .collect();
    assert_eq!(
        lines,
        [
            "arg:2024-06-01",
            "arg:20240601",
            "arg:20240602_0000",
            "arg:2024-06-01T00:00:00Z",
            "arg:2024-06-02T00:00:00Z",
            "arg:1",
            "arg:p/show",
            "arg:$(touch pwned); `touch pwned2` | x",
            "NIGHTSHIFT_DATA_INTERVAL_END=2024-06-02T00:00:00Z",
            "NIGHTSHIFT_DATA_INTERVAL_START=2024-06-01T00:00:00Z",
            "NIGHTSHIFT_DS=2024-06-01",
            "NIGHTSHIFT_DS_NODASH=20240601",
            "NIGHTSHIFT_PIPELINE=p",
            "NIGHTSHIFT_RUN_ID=20240602_0000",
            "NIGHTSHIFT_TASK_ID=show",
            "NIGHTSHIFT_TRY_NUMBER=1",
            "X=2024-06-01-x",
        ]
    );
    assert!(
        !p.path().join("pwned").exists() && !p.path().join("pwned2").exists(),
        "an argument became shell syntax"
    );
}

#[test]
fn backfill_respects_max_active_runs() {
    let p = TestProject::new();
    p.file("work.sh", "#!/bin/sh\nsleep 0.2\n");
    p.file("pipelines/p.toml", &(daily("p", "2024-06-01") + "[[task]]\nid = \"a\"\ncommand = [\"./work.sh\"]\n[[task]]\nid = \"b\"\ncommand = [\"./work.sh\"]\ndepends_on = [\"a\"]\n"));
    let out = p.run(&[
        "backfill",
        "p",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-03",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut spans: Vec<(jiff::Timestamp, jiff::Timestamp)> = p
        .runs("p")
        .iter()
        .map(|r| (ts(&r["start_time"]), ts(&r["end_time"])))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3);
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two runs were active at once with max_active_runs = 1: {spans:?}"
        );
    }
}

#[test]
fn a_run_in_flight_keeps_the_pipeline_version_it_was_created_with() {
    let p = TestProject::new();
    p.file("slow.sh", "#!/bin/sh\ntouch started\nsleep 1\n");
    let v1 = daily("p", &yesterday())
        + "[[task]]\nid = \"slow\"\ncommand = [\"./slow.sh\"]\n\n[[task]]\nid = \"after\"\ncommand = [\"sh\", \"-c\", \"echo v1 >> versions.txt\"]\ndepends_on = [\"slow\"]\n";
    p.file("pipelines/p.toml", &v1);
    let mut up = p.spawn(&["up"], &[], "up");
    p.wait_for("the first task", || p.path().join("started").exists());
    p.file("pipelines/p.toml", &v1.replace("echo v1", "echo v2"));
    p.wait_for("the run to finish", || {
        p.runs("p").first().is_some_and(|r| r["state"] == "SUCCESS")
    });
    assert_eq!(
        p.read("versions.txt"),
        "v1\n",
        "the run in flight used its own version"
    );
    // A run created after the edit uses the new version (the edit was picked up by `up` too).
    p.wait_for("the reload", || {
        p.read("up.stderr").contains("pipeline file changed")
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let out = p.run(&["run", "p", "--date", "2024-01-01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(p.read("versions.txt"), "v1\nv2\n");
}

#[test]
fn a_paused_pipeline_gets_no_runs_until_unpaused() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
    );
    let out = p.run(&["pause", "p"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "p: paused");
    let sim = [
        "up",
        "--simulate-from",
        "2024-06-01T23:00:00Z",
        "--simulate-until",
        "2024-06-03T01:00:00Z",
    ];
    assert!(p.run(&sim).status.success());
    assert!(p.runs("p").is_empty(), "no run while paused");
    assert!(p.run(&["unpause", "p"]).status.success());
    assert!(p.run(&sim).status.success());
    let runs = p.runs("p");
    assert_eq!(
        runs.len(),
        2,
        "catchup creates the missed runs once unpaused"
    );
    assert!(runs.iter().all(|r| r["state"] == "SUCCESS"));
    let out = p.run(&["pause", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}
