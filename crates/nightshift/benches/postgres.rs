//! Benchmarks on a PostgreSQL store (a private cluster on this machine, started by the
//! bench). Each figure is printed beside a floor measured in the same run, and beside the
//! target. Run: `cargo bench -p nightshift --bench postgres`.

// A benchmark prints its table, and reads the real clock and environment to set itself up.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_core::Trigger;
use nightshift_engine::engine::create_run;
use nightshift_engine::{Engine, Mode, Options, SimClock};
use nightshift_store::Store;
use nightshift_store::postgres::testing::TestCluster;
use serde_json::Value;

mod common;
use common::*;

/// A project folder whose store is a new database of `pg`.
fn project(pg: &TestCluster, db: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let url = pg.database(db).unwrap();
    write(
        dir.path(),
        "nightshift.toml",
        &format!("{extra}[store]\nurl = \"{url}\"\n"),
    );
    dir
}

/// Starts a long-lived process. `NIGHTSHIFT_BENCH_LOGS=DIR` keeps each one's stderr in
/// `DIR/<host>.log` (with `NIGHTSHIFT_LOG=nightshift_engine::engine=debug`, the loop's
/// pass count and time are among it).
fn spawn(dir: &Path, args: &[&str], host: &str) -> Running {
    let stderr = match std::env::var_os("NIGHTSHIFT_BENCH_LOGS") {
        Some(logs) => Stdio::from(
            std::fs::File::create(Path::new(&logs).join(format!("{host}.log"))).unwrap(),
        ),
        None => Stdio::null(),
    };
    Command::new(bin())
        .arg("--project")
        .arg(dir)
        .args(args)
        .env("NIGHTSHIFT_HOSTNAME", host)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Running)
        .unwrap()
}

/// A process the bench started, stopped (SIGTERM, then waited for) when dropped: a bench
/// that panics midway leaves nothing running against its stopped cluster.
struct Running(Child);

impl Running {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Median time of one scheduler pass over a PostgreSQL store holding `history_runs` × 5
/// finished tries and one active run.
fn pass_time(pg: &TestCluster, db: &str, history_runs: i64) -> (f64, i64) {
    let dir = project(pg, db, "");
    let src = header("active") + &chain_tasks(6);
    write(dir.path(), "pipelines/active.toml", &src);
    let project = nightshift_engine::project::load(dir.path()).unwrap();
    let store = Arc::new(Store::open(&project.store_location()).unwrap());
    let lp = project.pipelines["active"].clone();
    let version = store.put_version("active", &lp.source, 0).unwrap();
    let pg_store = store.postgres().expect("a PostgreSQL store");
    // History in bulk, inside the database: runs of another pipeline, five tries each.
    pg_store
        .bulk(|tx| {
            tx.execute(
                "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, start_time, end_time, status, rows_loaded, \"trigger\", version)
                 SELECT 'h' || r, 'hist', '2000-01-01', r * 86400000000, (r + 1) * 86400000000, r * 86400000000, r * 86400000000, (r + 1) * 86400000000, 'SUCCESS', 10, 'scheduled', $2
                 FROM generate_series(0::BIGINT, $1::BIGINT - 1) AS r",
                &[&history_runs, &version],
            )?;
            tx.execute(
                "INSERT INTO task_instances (run, pipeline, task_id, state, try_number, max_tries, updated_at)
                 SELECT r.id, 'hist', 't' || t, 'SUCCESS', 1, 1, 0 FROM pipeline_runs r, generate_series(0, 4) AS t WHERE r.pipeline = 'hist'",
                &[],
            )?;
            tx.execute(
                "INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, end_time, duration_ms, exit_code, host)
                 SELECT i.id, i.run, i.task_id, 1, 'SUCCESS', 0, 1000, 1, 0, 'h' FROM task_instances i WHERE i.pipeline = 'hist'",
                &[],
            )?;
            tx.batch_execute("ANALYZE")
        })
        .unwrap();
    let now: jiff::Timestamp = "2024-06-02T00:00:00Z".parse().unwrap();
    let iv = lp.pipeline.schedule.interval_ending_at(now).unwrap();
    let pk = create_run(&store, &lp, iv, Trigger::Scheduled, now)
        .unwrap()
        .pk();
    // The first task is running elsewhere, so the pass evaluates everything and claims nothing.
    pg_store
        .bulk(|tx| {
            tx.execute("UPDATE pipeline_runs SET status = 'RUNNING', start_time = 0 WHERE id = $1", &[&pk])?;
            tx.execute(
                "UPDATE task_instances SET state = 'RUNNING', try_number = 1, owner = 'elsewhere:1:1', host = 'elsewhere', lease_until = $2 WHERE run = $1 AND task_id = 't0'",
                &[&pk, &i64::MAX],
            )
        })
        .unwrap();
    let tries = store.count("task_tries").unwrap();
    let mut engine = Engine::new(
        project,
        store,
        Arc::new(SimClock::new(now)),
        Mode::Scheduler { until: None },
        Options::default(),
    );
    (median_pass_ms(&mut engine, now, 200), tries)
}

/// Runs `psql` on `url`; returns its wall time.
fn psql(url: &str, args: &[&str], stdout: Stdio) -> Duration {
    let t0 = Instant::now();
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("psql (tools/testdeps/install)");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed()
}

/// A table of `n` rows and 8 columns (integers, a double, a numeric, text, timestamptz,
/// date, boolean), all of ds 2024-06-01.
fn wide_table(url: &str, name: &str, n: u64) {
    psql(
        url,
        &["-c", &format!(
            "CREATE TABLE {name} AS SELECT i::bigint AS id, (i % 1000)::int AS store, i * 0.37::float8 AS amount,
                 (i % 100000 / 100.0)::numeric(12, 2) AS price, 'customer ' || (i % 5000) AS name,
                 timestamptz '2024-06-01' + (i % 86400) * interval '1 second' AS at, date '2024-06-01' AS day,
                 i % 2 = 0 AS paid
             FROM generate_series(1, {n}) AS i; ANALYZE {name}"
        )],
        Stdio::null(),
    );
}

/// `nightshift run PIPELINE --date 2024-06-01` under GNU time: (wall, peak RSS in kB of the
/// process and the task processes it waited for).
fn timed_run(dir: &Path, pipeline: &str) -> (Duration, u64) {
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(bin())
        .arg("--project")
        .arg(dir)
        .args(["run", pipeline, "--date", "2024-06-01"])
        .stdin(Stdio::null())
        .output()
        .expect("GNU time (/usr/bin/time)");
    let wall = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{pipeline}: {err}");
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (wall, rss)
}

fn data_figures(pg: &TestCluster, rows: &mut Vec<[String; 4]>) {
    const N: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let url = pg.database("data").unwrap();
    write(
        dir.path(),
        "nightshift.toml",
        &format!("[connections.src]\nkind = \"postgres\"\nurl = \"{url}\"\n"),
    );
    let extract = |table: &str| {
        format!(
            "[[task]]\nid = \"extract\"\nkind = \"extract\"\nconnection = \"src\"\n[[task.table]]\nname = \"{table}\"\nsql = \"SELECT * FROM {table} WHERE day = :ds\"\n"
        )
    };
    if wanted("extract") || wanted("load") {
        wide_table(&url, "wide", N);
        write(
            dir.path(),
            "pipelines/ex.toml",
            &(header("ex") + &extract("wide")),
        );
        let (ns, _) = timed_run(dir.path(), "ex");
        let floor = psql(
            &url,
            &[
                "-c",
                "COPY (SELECT * FROM wide WHERE day = '2024-06-01') TO STDOUT (FORMAT binary)",
            ],
            Stdio::null(),
        );
        // A row of rows/s beside the floor's, within 2x of its time.
        let throughput =
            |rows: &mut Vec<[String; 4]>, what: String, ns: Duration, floor: Duration| {
                let rate = |d: Duration| N as f64 / d.as_secs_f64();
                rows_push(
                    rows,
                    [
                        what,
                        format!(
                            "{:.0} rows/s ({:.2} s) = {:.2}x floor time",
                            rate(ns),
                            ns.as_secs_f64(),
                            ns.as_secs_f64() / floor.as_secs_f64()
                        ),
                        format!("{:.0} rows/s ({:.2} s)", rate(floor), floor.as_secs_f64()),
                        "within 2x floor".into(),
                    ],
                );
            };
        throughput(
            rows,
            format!(
                "PostgreSQL → Parquet: {N} rows of 8 columns, `nightshift run` of one extract task (floor: `psql` binary `COPY … TO STDOUT` to /dev/null)"
            ),
            ns,
            floor,
        );
        if wanted("load") {
            write(
                dir.path(),
                "pipelines/ld.toml",
                &(header("ld")
                    + "[[task]]\nid = \"load\"\nkind = \"load\"\nconnection = \"src\"\ntables = [\"wide\"]\nschema = \"wh\"\n"),
            );
            let (ns, _) = timed_run(dir.path(), "ld");
            // The floor: the same rows, from a file, into a table of the same shape.
            let file = dir.path().join("wide.bin");
            psql(
                &url,
                &[
                    "-c",
                    &format!("\\copy wh.wide TO '{}' (FORMAT binary)", file.display()),
                ],
                Stdio::null(),
            );
            psql(
                &url,
                &["-c", "CREATE TABLE floor_wide (LIKE wh.wide INCLUDING ALL)"],
                Stdio::null(),
            );
            let floor = psql(
                &url,
                &[
                    "-c",
                    &format!(
                        "\\copy floor_wide FROM '{}' (FORMAT binary)",
                        file.display()
                    ),
                ],
                Stdio::null(),
            );
            throughput(
                rows,
                format!(
                    "Parquet → PostgreSQL: the same {N} rows, `nightshift run` of one load task (floor: `psql \\copy` of the same rows from a file into a table of the same shape)"
                ),
                ns,
                floor,
            );
        }
    }
    if wanted("rss") {
        const BIG: u64 = 10_000_000;
        wide_table(&url, "big", BIG);
        write(
            dir.path(),
            "pipelines/big.toml",
            &(header("big") + &extract("big")),
        );
        let (ns, rss) = timed_run(dir.path(), "big");
        let (_, floor) = {
            let out = Command::new("/usr/bin/time")
                .args(["-f", "%M", "true"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            ((), err.parse::<u64>().unwrap_or(0))
        };
        rows_push(
            rows,
            [
                format!(
                    "peak RSS of an extract of {BIG} rows of 8 columns ({:.1} s; `nightshift run` and its task process, by GNU time; floor: `true`)",
                    ns.as_secs_f64()
                ),
                format!("{:.0} MB", rss as f64 / 1024.0),
                format!("{:.1} MB", floor as f64 / 1024.0),
                "< 200 MB".into(),
            ],
        );
    }
}

/// Keeps a row for the table, and shows it at once (a later figure may take long).
fn rows_push(rows: &mut Vec<[String; 4]>, r: [String; 4]) {
    eprintln!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    rows.push(r);
}

/// `NIGHTSHIFT_BENCH_ONLY=chain,fan,pass,idle` picks figures (default: all).
fn wanted(figure: &str) -> bool {
    std::env::var("NIGHTSHIFT_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|f| f.trim() == figure))
}

fn main() {
    let pg = TestCluster::start().expect("PostgreSQL for the benchmark (tools/testdeps/install)");
    let mut rows: Vec<[String; 4]> = vec![];

    // 1. A 50-task chain of `true` on PostgreSQL: end of a task to start of its successor.
    if wanted("chain") {
        let dir = project(&pg, "chain", "");
        let src = header("chain") + &chain_tasks(50);
        write(dir.path(), "pipelines/chain.toml", &src);
        nightshift(dir.path(), &["run", "chain", "--date", "2024-06-01"]);
        let ns = median(chain_gaps(dir.path(), 50));
        let floor = median(floor_chain(50));
        rows_push(
            &mut rows,
            [
                "PostgreSQL store: 50-task chain of `true`, median end→next start".into(),
                format!("{ns:.2} ms"),
                format!("{floor:.3} ms"),
                "< 5 ms".into(),
            ],
        );
    }

    // 2. 1 → 1,000 → 1 across one `up` and three workers (16 slots each).
    if wanted("fan") {
        let slots = 16;
        let dir = project(&pg, "fan", &format!("parallelism = {slots}\n"));
        // One interval: yesterday's, created by `up` when it starts.
        let yesterday = jiff::Zoned::now().date().yesterday().unwrap().to_string();
        let src = header("fan").replace("2024-06-01", &yesterday) + &fan_tasks(1000);
        write(dir.path(), "pipelines/fan.toml", &src);
        // The workers first, so all four processes are there when `up` creates the run.
        let workers: Vec<Running> = (1..=3)
            .map(|i| spawn(dir.path(), &["worker"], &format!("bench-w{i}")))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let up = spawn(dir.path(), &["up", "--no-web"], "bench-up");
        let t0 = Instant::now();
        let run = loop {
            let doc: Value =
                serde_json::from_slice(&nightshift(dir.path(), &["runs", "fan", "--json"]).stdout)
                    .unwrap();
            if doc.get(0).is_some_and(|r| r["state"] == "SUCCESS") {
                break doc[0].clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "the fan-out did not finish: {doc}"
            );
            // The wall time comes from the store's start and end times; looking less often
            // takes less of the two cores from the processes measured.
            std::thread::sleep(Duration::from_secs(1));
        };
        let status: Value =
            serde_json::from_slice(&nightshift(dir.path(), &["status", "--json"]).stdout).unwrap();
        let worker_rss: Vec<u64> = workers.iter().map(|w| rss_kb(w.id())).collect();
        drop(up);
        for w in workers {
            drop(w);
        }
        let hosts: std::collections::BTreeSet<String> = {
            let doc: Value = serde_json::from_slice(
                &nightshift(
                    dir.path(),
                    &["tasks", run["run_id"].as_str().unwrap(), "--json"],
                )
                .stdout,
            )
            .unwrap();
            doc["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["tries"][0]["host"].as_str().map(str::to_owned))
                .collect()
        };
        let wall = (ts_us(&run["end_time"]) - ts_us(&run["start_time"])) as f64 / 1e6;
        let rate = 1002.0 / wall;
        let floor = 1002.0 / floor_fanout(1000, 4 * slots).as_secs_f64();
        rows_push(
            &mut rows,
            [
                format!(
                    "PostgreSQL store: 1 → 1,000 → 1 of `true` across one `up` and 3 workers, {slots} slots each ({} hosts ran tries; {} processes in status; floor: a plain loop at {} at a time)",
                    hosts.len(),
                    status["processes"].as_array().map_or(0, Vec::len),
                    4 * slots
                ),
                format!(
                    "{rate:.0} tasks/s ({wall:.2} s) = {:.0}% of floor",
                    100.0 * rate / floor
                ),
                format!("{floor:.0} tasks/s"),
                ">= 50% of floor".into(),
            ],
        );
        eprintln!("worker RSS after the fan-out: {worker_rss:?} kB");
    }

    // 3. One scheduler pass with 1,000,000 historical tries (floor: empty history).
    if wanted("pass") {
        let (with_history, tries) = pass_time(&pg, "history", 200_000);
        let (empty, _) = pass_time(&pg, "empty", 0);
        rows_push(
            &mut rows,
            [
                format!(
                    "PostgreSQL store: one scheduler pass, {tries} tries in the store (floor: empty history)"
                ),
                format!("{with_history:.2} ms"),
                format!("{empty:.2} ms"),
                "< 20 ms".into(),
            ],
        );
    }

    // 4. Idle RSS of a worker (floor: `sleep`).
    if wanted("idle") {
        let dir = project(&pg, "idle", "");
        write(
            dir.path(),
            "pipelines/idle.toml",
            &(header("idle").replace("2024-06-01", "2099-01-01")
                + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
        );
        let w = spawn(dir.path(), &["worker"], "idle-w");
        std::thread::sleep(Duration::from_secs(5));
        let rss = rss_kb(w.id());
        let mut sleeper = Command::new("sleep").arg("10").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let floor = rss_kb(sleeper.id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        drop(w);
        rows_push(
            &mut rows,
            [
                "PostgreSQL store: idle RSS of `nightshift worker` (floor: `sleep`)".into(),
                format!("{:.1} MB", rss as f64 / 1024.0),
                format!("{:.1} MB", floor as f64 / 1024.0),
                "< 20 MB".into(),
            ],
        );
    }

    // 5–7. A PostgreSQL source and warehouse: extract, load, and the extract's peak memory.
    if wanted("extract") || wanted("load") || wanted("rss") {
        data_figures(&pg, &mut rows);
    }

    println!("\n| figure | nightshift | floor (same run) | target |\n|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
}
