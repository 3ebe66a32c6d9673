//! Chaos on a shared PostgreSQL store: three `up` and two `worker` processes, each playing a
//! host, run twenty pipelines of random DAGs while a random process is SIGKILLed and
//! restarted every few seconds and PostgreSQL itself is restarted once. A checker over the
//! store's history then asserts: one run per (pipeline, interval); every task of every run
//! succeeded exactly once; no two tries of one task instance were alive at the same time
//! (marker files the task processes write); every run finished within two minutes after
//! the faults stopped.
//!
//! Bounded here by `NIGHTSHIFT_CHAOS_SECONDS` of faults (default 60); `tools/chaos.sh` runs it
//! for longer.

use std::time::{Duration, Instant};

use nightshift_store::postgres::testing::TestCluster;

use crate::ha::{Proc, pg_project};
use crate::support::*;

const PIPELINES: usize = 20;

/// A task that refuses to run while an earlier process of the same task instance is alive
/// (it records OVERLAP), and takes 0.1 to 1.9 s.
const TASK: &str = r#"#!/bin/sh
# usage: task.sh PIPELINE TASK; one marker file per task instance (pipeline, ds, task).
m="markers/$1.$NIGHTSHIFT_DS.$2"
mkdir -p markers
for pid in $(cat "$m" 2>/dev/null); do
  s=$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)
  [ -n "$s" ] && [ "$s" != Z ] && echo "OVERLAP $1 $NIGHTSHIFT_DS $2 $pid" >> markers/OVERLAP
done
echo $$ >> "$m"
sleep $(( $$ % 2 )).$(( $$ % 9 + 1 ))
"#;

/// A random DAG of 2–6 tasks: each task depends on some earlier ones.
fn random_pipeline(name: &str, days: u32, rng: &mut fastrand::Rng) -> String {
    let mut src = daily(name, &days_ago(days));
    let n = rng.usize(2..=6);
    for i in 0..n {
        let deps: Vec<String> = (0..i)
            .filter(|_| rng.u8(0..3) == 0)
            .map(|d| format!("\"t{d}\""))
            .collect();
        src.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ncommand = [\"./task.sh\", \"{name}\", \"t{i}\"]\ndepends_on = [{}]\n\n",
            deps.join(", ")
        ));
    }
    src
}

/// The test's knobs (tools/chaos.sh sets them): how long faults go on
/// (`NIGHTSHIFT_CHAOS_SECONDS`, default 60) and the pause between two kills in seconds
/// (`NIGHTSHIFT_CHAOS_EVERY`, `MIN-MAX`, default `2-6`).
// Read where the test is: they are the test's own.
#[allow(clippy::disallowed_methods)]
fn knobs() -> (u64, u64, u64) {
    let secs = std::env::var("NIGHTSHIFT_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(60);
    let every = std::env::var("NIGHTSHIFT_CHAOS_EVERY").unwrap_or_default();
    let (lo, hi) = every
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .filter(|(a, b)| a < b)
        .unwrap_or((2, 6));
    (secs, lo, hi)
}

#[test]
fn chaos_on_a_shared_store_loses_nothing_and_runs_nothing_twice() {
    let (secs, every_lo, every_hi) = knobs();
    // Enough intervals that the work outlasts the faults (about 7 s of work per day here).
    let days = u32::try_from(secs / 7).unwrap_or(u32::MAX).max(8);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let pg = TestCluster::start().unwrap();
    let p = pg_project(&pg);
    p.file("task.sh", TASK);
    // Few slots per process, so the work spans the faults instead of finishing first.
    let toml = p.read("nightshift.toml");
    p.file("nightshift.toml", &format!("parallelism = 3\n{toml}"));
    for i in 0..PIPELINES {
        let name = format!("p{i:02}");
        p.file(
            &format!("pipelines/{name}.toml"),
            &random_pipeline(&name, days, &mut rng),
        );
    }
    let roles: Vec<(&str, &str)> = vec![
        ("up", "host-a"),
        ("up", "host-b"),
        ("up", "host-c"),
        ("worker", "host-w1"),
        ("worker", "host-w2"),
    ];
    let start = |i: usize, round: u32| -> Proc {
        let (cmd, host) = roles[i];
        // Short leases, so takeovers happen within the test; long enough that a restarted
        // process kills its predecessor's orphans (same host) before another host could
        // judge their leases expired.
        let env = [
            ("NIGHTSHIFT_HEARTBEAT", "500ms"),
            ("NIGHTSHIFT_LEASE_TTL", "5s"),
            ("NIGHTSHIFT_ROLE_TTL", "3s"),
            ("NIGHTSHIFT_HOSTNAME", host),
        ];
        let args: Vec<&str> = if cmd == "up" {
            vec!["up", "--no-web"]
        } else {
            vec!["worker"]
        };
        Proc::spawn(&p, &args, &env, &format!("{host}-{round}"))
    };
    let mut procs: Vec<Proc> = (0..roles.len()).map(|i| start(i, 0)).collect();
    let mut generation = vec![0u32; roles.len()];
    let faults = Duration::from_secs(secs);
    let began = Instant::now();
    let pg_restart_at = faults / 2;
    let mut pg_restarted = false;
    let mut kills = 0;
    while began.elapsed() < faults {
        std::thread::sleep(Duration::from_millis(
            rng.u64(every_lo * 1000..every_hi * 1000),
        ));
        if !pg_restarted && began.elapsed() >= pg_restart_at {
            pg.halt().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            pg.resume().unwrap();
            pg_restarted = true;
            continue;
        }
        let victim = rng.usize(0..roles.len());
        procs[victim].kill();
        kills += 1;
        generation[victim] += 1;
        procs[victim] = start(victim, generation[victim]);
    }
    if !pg_restarted {
        pg.halt().unwrap();
        pg.resume().unwrap();
    }
    let faults_over = Instant::now();
    // Every run finishes within two minutes after the faults stop.
    let deadline = faults_over + Duration::from_secs(120);
    let mut db = postgres::Client::connect(&pg.url("nightshift"), postgres::NoTls).unwrap();
    loop {
        let unfinished: i64 = db
            .query_one(
                "SELECT COUNT(*) FROM pipeline_runs WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED')",
                &[],
            )
            .unwrap()
            .get(0);
        let runs: i64 = db
            .query_one("SELECT COUNT(*) FROM pipeline_runs", &[])
            .unwrap()
            .get(0);
        if unfinished == 0 && runs == (PIPELINES as i64) * i64::from(days) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {unfinished} of {runs} runs unfinished two minutes after the faults stopped"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let settled = faults_over.elapsed();
    let last_end: i64 = db
        .query_one(
            "SELECT COALESCE(MAX(end_time) - MIN(queued_at), 0) FROM pipeline_runs",
            &[],
        )
        .unwrap()
        .get(0);
    // Stopped as the faults did (a process restarted a moment ago may not handle SIGTERM
    // yet); what counts is the store's history, checked next.
    drop(procs);
    // One run per (pipeline, interval), each pipeline with every interval.
    let doubled: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM (SELECT 1 FROM pipeline_runs GROUP BY pipeline, data_interval_start HAVING COUNT(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0, "seed {seed}: a run was created twice");
    let per_pipeline = db
        .query(
            "SELECT pipeline, COUNT(*) FROM pipeline_runs GROUP BY pipeline",
            &[],
        )
        .unwrap();
    assert_eq!(per_pipeline.len(), PIPELINES, "seed {seed}");
    for r in &per_pipeline {
        assert_eq!(
            r.get::<_, i64>(1),
            i64::from(days),
            "seed {seed}: {}",
            r.get::<_, String>(0)
        );
    }
    // Every task of every run succeeded, by exactly one successful try.
    let not_success: Vec<(String, String)> = db
        .query(
            "SELECT r.pipeline || ' ' || r.run_id, t.task_id || ' ' || t.state FROM task_instances t JOIN pipeline_runs r ON r.id = t.run WHERE t.state != 'SUCCESS'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        not_success.is_empty(),
        "seed {seed}: tasks not SUCCESS: {not_success:?}"
    );
    let twice: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM (SELECT ti FROM task_tries WHERE state = 'SUCCESS' GROUP BY ti HAVING COUNT(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "seed {seed}: a task succeeded twice");
    let left_running: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM task_tries WHERE state = 'RUNNING'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left_running, 0, "seed {seed}: a try was left RUNNING");
    // No two tries of one task instance alive at once.
    assert_eq!(
        p.read("markers/OVERLAP"),
        "",
        "seed {seed}: two processes of one task ran at once"
    );
    let tries: i64 = db
        .query_one("SELECT COUNT(*) FROM task_tries", &[])
        .unwrap()
        .get(0);
    let interrupted: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM task_tries WHERE error LIKE 'interrupted%'",
            &[],
        )
        .unwrap()
        .get(0);
    eprintln!(
        "chaos seed {seed}: {PIPELINES} pipelines, {} runs, {tries} tries ({interrupted} interrupted), {kills} SIGKILLs, 1 PostgreSQL restart in {:.0}s of faults; the work took {:.1}s; all runs finished {:.1}s after the faults stopped",
        PIPELINES as u32 * days,
        faults.as_secs_f64(),
        last_end as f64 / 1e6,
        settled.as_secs_f64()
    );
}
