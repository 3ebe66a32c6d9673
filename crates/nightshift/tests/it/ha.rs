//! Several hosts on one PostgreSQL store, for real: a private PostgreSQL cluster, several
//! `up` and `worker` processes each playing a host (`NIGHTSHIFT_HOSTNAME`), and faults
//! caused for real (SIGKILL of the scheduler, SIGSTOP of a worker past its lease, the
//! database stopped while tasks run). After each, the invariants hold: one run per
//! interval, every task succeeded, no try left RUNNING.

use std::process::Child;
use std::time::{Duration, Instant};

use nightshift_store::postgres::testing::TestCluster;
use serde_json::Value;

use crate::support::*;

/// A project whose store is a new database in `pg`.
pub(crate) fn pg_project(pg: &TestCluster) -> TestProject {
    let url = pg.database("nightshift").unwrap();
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        &format!("kill_grace = \"1s\"\nshutdown_grace = \"5s\"\n\n[store]\nurl = \"{url}\"\n"),
    );
    p
}

/// Two tasks in a chain, each a short sleep.
fn chain(name: &str, start: &str) -> String {
    daily(name, start)
        + "[[task]]\nid = \"a\"\ncommand = [\"sleep\", \"0.3\"]\n\n\
           [[task]]\nid = \"b\"\ncommand = [\"sleep\", \"0.3\"]\ndepends_on = [\"a\"]\n"
}

/// Queues the run of pipeline `p` with ds `day` without a scheduler (whoever executes takes
/// it).
fn queue(p: &TestProject, day: &str) {
    let out = p.run(&["backfill", "p", "--from", day, "--to", day, "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn host(name: &'static str) -> (&'static str, &'static str) {
    ("NIGHTSHIFT_HOSTNAME", name)
}

/// A process of the test: killed when the test ends however it ends, its log shown when
/// the test failed.
pub(crate) struct Proc {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Proc {
    pub(crate) fn spawn(p: &TestProject, args: &[&str], envs: &[(&str, &str)], tag: &str) -> Proc {
        Proc {
            child: Some(p.spawn(args, envs, tag)),
            log: p.path().join(format!("{tag}.stderr")),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            sigkill(c);
        }
    }

    /// SIGTERM, and the process must exit cleanly.
    pub(crate) fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        sigterm(&child);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{status:?}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Proc {
    // A failed test's evidence: the process's own log.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(150).collect();
                eprintln!("--- {} (last lines)", self.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn all_succeeded(p: &TestProject, pipeline: &str, expected: usize) -> bool {
    let runs = p.runs_all(pipeline);
    runs.len() == expected && runs.iter().all(|r| r["state"] == "SUCCESS")
}

/// One run per interval, and every task of every run succeeded with no try left RUNNING.
fn assert_complete(p: &TestProject, pipeline: &str, expected: usize) {
    let runs = p.runs_all(pipeline);
    let mut starts: Vec<String> = runs
        .iter()
        .map(|r| r["data_interval_start"].to_string())
        .collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), expected, "one run per interval: {runs:?}");
    assert_eq!(runs.len(), expected, "one run per interval: {runs:?}");
    for r in &runs {
        let doc = p.json(&[
            "tasks",
            r["run_id"].as_str().unwrap(),
            "--pipeline",
            pipeline,
            "--json",
        ]);
        for t in doc["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "SUCCESS", "{t}");
            for tr in t["tries"].as_array().unwrap() {
                assert_ne!(tr["state"], "RUNNING", "a try left RUNNING: {t}");
            }
        }
    }
}

#[test]
fn a_standby_takes_over_the_scheduler_role_and_every_run_is_created_once() {
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file("pipelines/p1.toml", &chain("p1", &days_ago(3)));
    let mut a = Proc::spawn(&p, &["up", "--no-web"], &[host("host-a")], "a");
    p.wait_for("the first scheduler to create runs", || {
        !p.runs_all("p1").is_empty()
    });
    let b = Proc::spawn(&p, &["up", "--no-web"], &[host("host-b")], "b");
    let w = Proc::spawn(&p, &["worker"], &[host("host-w")], "w");
    p.wait_for("the second up to stand by", || {
        p.read("b.stderr").contains("stands by")
    });
    p.wait_for("the worker to start", || {
        p.read("w.stderr").contains("worker on `host-w`")
    });
    a.kill();
    let killed = Instant::now();
    // Runs of a pipeline added now can only be created by a scheduler: the standby must
    // take the role.
    p.file("pipelines/p2.toml", &chain("p2", &days_ago(2)));
    p.wait_for("the standby to take over", || {
        p.read("b.stderr").contains("took over the scheduler role")
    });
    let takeover = killed.elapsed();
    // `status` lists who does what, from any host.
    p.wait_for("status to show the new scheduler and the worker", || {
        let s = p.json(&["status", "--json"]);
        let role_of = |host: &str| {
            s["processes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["host"] == host && e["alive"] == true)
                .map(|e| e["role"].as_str().unwrap_or("").to_owned())
        };
        s["scheduler"]["host"] == "host-b"
            && role_of("host-b").as_deref() == Some("scheduler")
            && role_of("host-w").as_deref() == Some("worker")
    });
    let table = stdout(&p.run(&["status"]));
    assert!(
        table.contains("host-w") && table.contains("worker"),
        "{table}"
    );
    p.wait_for("every run to succeed", || {
        all_succeeded(&p, "p1", 3) && all_succeeded(&p, "p2", 2)
    });
    b.stop();
    w.stop();
    assert_complete(&p, "p1", 3);
    assert_complete(&p, "p2", 2);
    // Measured, not asserted (shared machines are noisy): the README states the bound.
    eprintln!(
        "takeover after SIGKILL of the scheduler: {:.1}s",
        takeover.as_secs_f64()
    );
}

/// Lease timings short enough for a test to wait out.
pub(crate) const FAST: [(&str, &str); 3] = [
    ("NIGHTSHIFT_HEARTBEAT", "300ms"),
    ("NIGHTSHIFT_LEASE_TTL", "2s"),
    ("NIGHTSHIFT_ROLE_TTL", "2s"),
];

fn with_fast<'a>(h: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.push(h);
    v
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
}

#[test]
fn a_frozen_worker_loses_its_try_its_child_is_killed_and_its_late_outcome_refused() {
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file(
        "slow.sh",
        "#!/bin/sh\nif [ \"$NIGHTSHIFT_TRY_NUMBER\" = 1 ]; then echo $$ > try1.pid; exec sleep 120; fi\necho fine\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"slow\"\ncommand = [\"./slow.sh\"]\n"),
    );
    let w = Proc::spawn(&p, &["worker"], &with_fast(host("host-w")), "w");
    p.wait_for("the worker to start", || {
        p.read("w.stderr").contains("worker on")
    });
    // The run is created without a scheduler; the worker is the only one to take it.
    queue(&p, &yesterday());
    p.wait_for("the worker to start try 1", || {
        !p.read("try1.pid").is_empty()
    });
    let child: i32 = p.read("try1.pid").trim().parse().unwrap();
    let u = Proc::spawn(&p, &["up", "--no-web"], &with_fast(host("host-u")), "u");
    unsafe_signal(w.id(), "STOP");
    p.wait_for(
        "the try to be retried elsewhere and the run to succeed",
        || all_succeeded(&p, "p", 1),
    );
    assert!(
        pid_alive(child),
        "the frozen worker's child runs on until its worker wakes"
    );
    unsafe_signal(w.id(), "CONT");
    p.wait_for("the woken worker to kill its child", || !pid_alive(child));
    // Give the woken worker time to try to record its late outcome.
    std::thread::sleep(Duration::from_secs(2));
    u.stop();
    drop(w);
    assert_complete(&p, "p", 1);
    let run = &p.runs_all("p")[0];
    let doc = p.json(&[
        "tasks",
        run["run_id"].as_str().unwrap(),
        "--pipeline",
        "p",
        "--json",
    ]);
    let tries: Vec<Value> = task(&doc, "slow")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0]["host"], "host-w", "{tries:?}");
    assert_eq!(tries[0]["state"], "FAILED", "{tries:?}");
    assert!(
        tries[0]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted"),
        "the late outcome did not overwrite the recorded one: {tries:?}"
    );
    assert_eq!(tries[1]["host"], "host-u", "{tries:?}");
    assert_eq!(tries[1]["state"], "SUCCESS", "{tries:?}");
    assert!(
        p.read("w.stderr").contains("lost its claim"),
        "{}",
        p.read("w.stderr")
    );
}

/// Sends a signal by name with kill(1) (the tests use no unsafe code).
fn unsafe_signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn a_database_outage_loses_no_outcome_and_creates_each_run_once() {
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file(
        "long.sh",
        "#!/bin/sh\necho started > long.started\nsleep 8\necho done >> long.done\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"long\"\ncommand = [\"./long.sh\"]\n"),
    );
    // A pipeline due every minute: intervals that end during the outage.
    p.file(
        "pipelines/minutely.toml",
        &format!(
            "name = \"minutely\"\nschedule = \"* * * * *\"\ntimezone = \"UTC\"\nstart_date = \"{}\"\ncatchup = false\n\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
            yesterday()
        ),
    );
    let up = Proc::spawn(
        &p,
        &["up", "--no-web"],
        &[
            host("host-u"),
            ("NIGHTSHIFT_LOG", "info,nightshift_engine=debug"),
        ],
        "u",
    );
    p.wait_for("the long task to start", || {
        !p.read("long.started").is_empty()
    });
    pg.halt().unwrap();
    // 60 s: longer than any lease, so every claim would have expired meanwhile.
    std::thread::sleep(Duration::from_secs(60));
    assert_eq!(
        p.read("long.done").trim(),
        "done",
        "the task ran on through the outage"
    );
    pg.resume().unwrap();
    let resumed_ago = Instant::now();
    p.wait_for("the run to finish after the outage", || {
        all_succeeded(&p, "p", 1)
    });
    // Let the scheduler create the minutes that ended while the store was away.
    std::thread::sleep(Duration::from_secs(3));
    up.stop();
    assert_complete(&p, "p", 1);
    let doc = p.json(&[
        "tasks",
        p.runs_all("p")[0]["run_id"].as_str().unwrap(),
        "--pipeline",
        "p",
        "--json",
    ]);
    let tries = task(&doc, "long")["tries"].as_array().unwrap().clone();
    assert_eq!(
        tries.len(),
        1,
        "the outcome was kept, not run again: {tries:?}"
    );
    assert_eq!(p.read("long.done").lines().count(), 1, "the task ran once");
    // `catchup = false`: after the outage, the latest ended minute gets its run (with
    // catchup, each ended minute would); either way no minute gets two.
    let minutes = p.runs_all("minutely");
    let mut starts: Vec<i64> = minutes
        .iter()
        .map(|r| epoch_secs(&r["data_interval_start"]))
        .collect();
    let n = starts.len();
    starts.sort();
    starts.dedup();
    assert_eq!(
        starts.len(),
        n,
        "a minute's run was created twice: {minutes:?}"
    );
    // The test compares with the real time of the processes it started.
    #[allow(clippy::disallowed_methods)]
    let resumed = jiff::Timestamp::now().as_second() - resumed_ago.elapsed().as_secs() as i64;
    assert!(
        starts.iter().any(|s| s + 60 >= resumed - 60),
        "no run for the minutes that ended during or after the outage: {minutes:?}"
    );
}

/// Seconds since the epoch of an RFC 3339 value in the JSON.
fn epoch_secs(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

#[test]
fn store_copy_moves_sqlite_history_into_postgres_once() {
    let pg = TestCluster::start().unwrap();
    let url = pg.database("moved").unwrap();
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n\n[[task]]\nid = \"b\"\ncommand = [\"false\"]\ndepends_on = [\"a\"]\n"),
    );
    for date in ["2024-06-01", "2024-06-02"] {
        let _ = p.run(&["run", "p", "--date", date]);
    }
    let before = p.runs_all("p");
    let before_tasks = p.tasks(before[0]["run_id"].as_str().unwrap());
    assert_eq!(before.len(), 2);
    let out = p.run(&["store", "copy", "--to", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pipeline_runs: 2 rows"),
        "{}",
        stdout(&out)
    );
    let again = p.run(&["store", "copy", "--to", &url]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already holds 2 run(s)"),
        "{}",
        stderr(&again)
    );
    // The project now uses PostgreSQL and sees the same history.
    p.file("nightshift.toml", &format!("[store]\nurl = \"{url}\"\n"));
    assert_eq!(p.runs_all("p"), before);
    assert_eq!(p.tasks(before[0]["run_id"].as_str().unwrap()), before_tasks);
    // And goes on from it: new ids follow the copied ones.
    let _ = p.run(&["run", "p", "--date", "2024-06-03"]);
    let after = p.runs_all("p");
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[2]["state"], "FAILED");
}

#[test]
fn a_log_written_on_another_host_is_read_and_followed_from_this_one() {
    let pg = TestCluster::start().unwrap();
    let here = pg_project(&pg);
    // The worker's host holds the same project in a folder of its own.
    let there = TestProject::new();
    let toml = here.read("nightshift.toml");
    let script = "#!/bin/sh\nfor i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.4; done\necho bye\n";
    let pipeline =
        daily("p", &yesterday()) + "[[task]]\nid = \"talk\"\ncommand = [\"./talk.sh\"]\n";
    for p in [&here, &there] {
        p.file("nightshift.toml", &toml);
        p.file("talk.sh", script);
        p.file("pipelines/p.toml", &pipeline);
    }
    let w = Proc::spawn(&there, &["worker"], &[host("host-w")], "w");
    there.wait_for("the worker to start", || {
        there.read("w.stderr").contains("worker on")
    });
    queue(&here, &yesterday());
    let run_id = here.runs_all("p")[0]["run_id"].as_str().unwrap().to_owned();
    here.wait_for("the try to start on the worker", || {
        here.tasks(&run_id)["tasks"][0]["tries"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    });
    // Followed live from this host, while the worker writes it.
    let followed = here.run(&["logs", &run_id, "talk", "--follow"]);
    assert!(followed.status.success(), "{}", stderr(&followed));
    let text = stdout(&followed);
    for want in ["line 1", "line 5", "bye"] {
        assert!(
            text.contains(want),
            "{want} missing from the followed log:\n{text}"
        );
    }
    let doc = here.tasks(&run_id);
    let tried = &doc["tasks"][0]["tries"][0];
    assert_eq!(tried["host"], "host-w");
    assert!(
        !here
            .path()
            .join(tried["log_path"].as_str().unwrap())
            .exists(),
        "the log file is on the other host: {tried}"
    );
    // Read again once finished: the same text.
    here.wait_for("the run to finish", || all_succeeded(&here, "p", 1));
    let again = stdout(&here.run(&["logs", &run_id, "talk"]));
    assert!(again.contains("line 3") && again.contains("bye"), "{again}");
    // The API serves it too (an `up` on this host, with its web server).
    let up = Proc::spawn(
        &here,
        &["up", "--bind", "127.0.0.1:0"],
        &[host("host-h")],
        "h",
    );
    let base = web_url(&here, "h");
    let body = http()
        .get(&format!(
            "{base}/api/v1/pipelines/p/runs/{run_id}/tasks/talk/tries/1/log"
        ))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(body.contains("line 2") && body.contains("bye"), "{body}");
    // The processes page lists the worker of the other host and this `up`.
    here.wait_for("the processes page to list both hosts", || {
        let page = http()
            .get(&format!("{base}/status"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        page.contains(r#"data-host="host-w" data-role="worker""#)
            && page.contains(r#"data-host="host-h" data-role="scheduler""#)
            && page.contains("Scheduler role: pid")
    });
    up.stop();
    w.stop();
}

/// A worker's environment whose loop, heartbeat and leases are far longer than a test may
/// take: it passes again only when the store tells it that there is work.
fn asleep(name: &'static str) -> [(&'static str, &'static str); 5] {
    [
        host(name),
        ("NIGHTSHIFT_POLL", "600s"),
        ("NIGHTSHIFT_HEARTBEAT", "600s"),
        ("NIGHTSHIFT_LEASE_TTL", "1200s"),
        ("NIGHTSHIFT_ROLE_TTL", "1200s"),
    ]
}

#[test]
fn work_queued_elsewhere_wakes_an_idle_worker_even_after_the_database_restarted() {
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file("pipelines/p.toml", &chain("p", &days_ago(3)));
    let w = Proc::spawn(&p, &["worker"], &asleep("host-w"), "w");
    p.wait_for("the worker to start", || {
        p.read("w.stderr").contains("worker on `host-w`")
    });
    queue(&p, &yesterday());
    p.wait_for("the worker to run the queued run", || {
        all_succeeded(&p, "p", 1)
    });
    // The worker sleeps now (its last pass saw the run finish). The server restarts under
    // it: its listener reconnects, and the next run queued wakes it again.
    pg.halt().unwrap();
    pg.resume().unwrap();
    queue(&p, &days_ago(2));
    p.wait_for("the worker to run the run queued after the restart", || {
        all_succeeded(&p, "p", 2)
    });
    w.stop();
    assert_complete(&p, "p", 2);
}

#[test]
fn a_task_queued_by_one_worker_wakes_the_idle_worker_that_serves_its_pool() {
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file(
        "nightshift.toml",
        &(p.read("nightshift.toml") + "\n[pools]\nfirst = { slots = 1 }\nsecond = { slots = 1 }\n"),
    );
    // `a` runs only on one worker, `b` only on the other: `b` is queued by the first
    // worker's pass, and the second learns of it only by the store's notice.
    p.file(
        "pipelines/p.toml",
        &(daily("p", &days_ago(3))
            + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\npool = \"first\"\n\n\
               [[task]]\nid = \"b\"\ncommand = [\"true\"]\npool = \"second\"\ndepends_on = [\"a\"]\n"),
    );
    let w1 = Proc::spawn(&p, &["worker", "--pool", "first"], &asleep("host-1"), "w1");
    let w2 = Proc::spawn(&p, &["worker", "--pool", "second"], &asleep("host-2"), "w2");
    for (log, name) in [("w1.stderr", "host-1"), ("w2.stderr", "host-2")] {
        p.wait_for("the workers to start", || {
            p.read(log).contains(&format!("worker on `{name}`"))
        });
    }
    queue(&p, &yesterday());
    p.wait_for("both tasks to run, each on its pool's worker", || {
        all_succeeded(&p, "p", 1)
    });
    w1.stop();
    w2.stop();
    assert_complete(&p, "p", 1);
    let doc = p.tasks(p.runs_all("p")[0]["run_id"].as_str().unwrap());
    assert_eq!(task(&doc, "a")["tries"][0]["host"], "host-1");
    assert_eq!(task(&doc, "b")["tries"][0]["host"], "host-2");
}
