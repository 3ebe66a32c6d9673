//! Engine benchmarks. Each figure is printed beside a floor measured in the same run on
//! the same machine (the same processes spawned by a plain loop, or the same pass without
//! history), and beside the target. Run: `cargo bench -p nightshift --bench engine`.

// A benchmark prints its table, and reads the real clock and environment to set itself up.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_core::Trigger;
use nightshift_engine::engine::create_run;
use nightshift_engine::{Engine, Mode, Options, SimClock};
use nightshift_store::Store;
use serde_json::Value;

mod common;
use common::*;

fn seed_history(store: &Store, version: &str, runs: i64, tasks_per_run: i64) {
    store
        .sqlite()
        .expect("benchmarks seed a SQLite store")
        .bulk(|tx| {
            let mut run = tx.prepare(
                "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, start_time, end_time, status, rows_loaded, \"trigger\", version)
                 VALUES (?1, 'hist', '2000-01-01', ?2, ?3, ?2, ?2, ?3, 'SUCCESS', 10, 'scheduled', ?4)",
            )?;
            let mut ti = tx.prepare("INSERT INTO task_instances (run, pipeline, task_id, state, try_number, max_tries, updated_at) VALUES (?1, 'hist', ?2, 'SUCCESS', 1, 1, 0)")?;
            let mut tr = tx.prepare(
                "INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, end_time, duration_ms, exit_code, host) VALUES (?1, ?2, ?3, 1, 'SUCCESS', 0, 1000, 1, 0, 'h')",
            )?;
            for r in 0..runs {
                run.execute(rusqlite_params(r, version))?;
                let run_pk = tx.last_insert_rowid();
                for t in 0..tasks_per_run {
                    let id = format!("t{t}");
                    ti.execute((run_pk, &id))?;
                    let ti_pk = tx.last_insert_rowid();
                    tr.execute((ti_pk, run_pk, &id))?;
                }
            }
            Ok(())
        })
        .unwrap();
}

fn rusqlite_params(r: i64, version: &str) -> (String, i64, i64, String) {
    (
        format!("h{r}"),
        r * 86_400_000_000,
        (r + 1) * 86_400_000_000,
        version.to_owned(),
    )
}

/// Median time of one scheduler pass over a store holding `history_runs` × 5 finished tries
/// and one active run.
fn pass_time(history_runs: i64) -> (f64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let src = header("active") + &chain_tasks(6);
    write(dir.path(), "pipelines/active.toml", &src);
    let project = nightshift_engine::project::load(dir.path()).unwrap();
    let store = Arc::new(Store::open(&project.store_location()).unwrap());
    let lp = project.pipelines["active"].clone();
    let version = store.put_version("active", &lp.source, 0).unwrap();
    seed_history(&store, &version, history_runs, 5);
    let now: jiff::Timestamp = "2024-06-02T00:00:00Z".parse().unwrap();
    let iv = lp.pipeline.schedule.interval_ending_at(now).unwrap();
    let pk = create_run(&store, &lp, iv, Trigger::Scheduled, now)
        .unwrap()
        .pk();
    // The first task is running elsewhere, so the pass evaluates everything and claims nothing.
    store
        .sqlite()
        .expect("benchmarks seed a SQLite store")
        .bulk(|tx| {
            tx.execute("UPDATE pipeline_runs SET status = 'RUNNING', start_time = 0 WHERE id = ?1", [pk])?;
            tx.execute(
                "UPDATE task_instances SET state = 'RUNNING', try_number = 1, owner = 'elsewhere:1:1', host = 'elsewhere', lease_until = ?2 WHERE run = ?1 AND task_id = 't0'",
                (pk, i64::MAX),
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
    (median_pass_ms(&mut engine, now, 300), tries)
}

fn rows_table_push(t: &mut Vec<[String; 4]>, a: String, b: String, c: String, d: String) {
    t.push([a, b, c, d]);
}

fn main() {
    // Called by `cargo bench` with `--bench`; also runnable directly.
    let mut rows: Vec<[String; 4]> = vec![];
    let mut rows_table: Vec<[String; 4]> = vec![];

    // 1. A 50-task chain of `true`: end of a task to start of its successor.
    {
        let dir = tempfile::tempdir().unwrap();
        let src = header("chain") + &chain_tasks(50);
        write(dir.path(), "pipelines/chain.toml", &src);
        nightshift(dir.path(), &["run", "chain", "--date", "2024-06-01"]);
        let ns = median(chain_gaps(dir.path(), 50));
        let floor = median(floor_chain(50));
        rows.push([
            "50-task chain of `true`: median end→next start".into(),
            format!("{ns:.2} ms"),
            format!("{floor:.3} ms"),
            "< 5 ms".into(),
        ]);
    }

    // 2. One root, 198 parallel `true`, one join: wall time at parallelism 16.
    {
        let parallelism = 16;
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "nightshift.toml",
            &format!("parallelism = {parallelism}\n"),
        );
        let src = header("fan") + &fan_tasks(198);
        write(dir.path(), "pipelines/fan.toml", &src);
        let floor = floor_fanout(198, parallelism).as_secs_f64() * 1000.0;
        let t0 = Instant::now();
        nightshift(dir.path(), &["run", "fan", "--date", "2024-06-01"]);
        let cmd_wall = t0.elapsed();
        let doc: Value =
            serde_json::from_slice(&nightshift(dir.path(), &["runs", "fan", "--json"]).stdout)
                .unwrap();
        let run = &doc[0];
        let run_wall = (ts_us(&run["end_time"]) - ts_us(&run["start_time"])) as f64 / 1000.0;
        rows.push([
            format!("root + 198 parallel + join, parallelism {parallelism}: run wall time (whole command incl. start-up)"),
            format!("{run_wall:.0} ms ({:.0} ms) = {:.1}x floor", cmd_wall.as_secs_f64() * 1000.0, run_wall / floor),
            format!("{floor:.0} ms"),
            "within 2x floor".into(),
        ]);
    }

    // 3. Idle RSS of `nightshift up` with one pipeline.
    {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pipelines/idle.toml",
            &(header("idle").replace("2024-06-01", "2099-01-01")
                + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
        );
        let mut up = Command::new(bin())
            .arg("--project")
            .arg(dir.path())
            .arg("up")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let rss = rss_kb(up.id());
        let mut sleeper = Command::new("sleep").arg("10").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let floor = rss_kb(sleeper.id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let _ = Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status();
        let _ = up.wait();
        rows.push([
            "idle RSS of `nightshift up`, one pipeline (floor: `sleep`)".into(),
            format!("{:.1} MB", rss as f64 / 1024.0),
            format!("{:.1} MB", floor as f64 / 1024.0),
            "< 30 MB".into(),
        ]);
    }

    // 4. One scheduler pass with 100,000 historical task tries (floor: the same pass, no history).
    {
        let (with_history, tries) = pass_time(20_000);
        let (empty, _) = pass_time(0);
        rows.push([
            format!("one scheduler pass, {tries} tries in the store (floor: empty history)"),
            format!("{with_history:.3} ms"),
            format!("{empty:.3} ms"),
            "< 10 ms".into(),
        ]);
    }

    // 5. Extract throughput, SQLite source to Parquet (floor: the same query read and discarded).
    {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("source/shop.db");
        let out = Command::new(bin())
            .args(["shop", "--db"])
            .arg(&db)
            .args([
                "--from",
                "2024-06-01",
                "--to",
                "2024-06-01",
                "--orders",
                "200000",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let sql = "SELECT i.*, o.customer_id, o.order_ts, o.status FROM order_items i JOIN orders o USING (order_id) WHERE o.order_ts >= :start AND o.order_ts < :end";
        let request = serde_json::json!({
            "spec": {"connection": "shop", "tables": [{"name": "items", "sql": sql}], "output": "raw", "min_ratio": null, "on_incomplete": "fail"},
            "connection": {"kind": "sqlite", "path": db},
            "project_dir": dir.path(),
            "keys": nightshift_core::RunKeys {
                pipeline: "bench".into(),
                run_id: "20240602_0000".into(),
                ds: jiff::civil::date(2024, 6, 1),
                interval: nightshift_core::DataInterval {
                    start: "2024-06-01T00:00:00Z".parse().unwrap(),
                    end: "2024-06-02T00:00:00Z".parse().unwrap(),
                },
            },
            "history": {}
        });
        let t0 = Instant::now();
        let out = Command::new(bin())
            .arg("__extract")
            .arg(request.to_string())
            .output()
            .unwrap();
        let ns_secs = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conn = rusqlite::Connection::open(&db).unwrap();
        let t0 = Instant::now();
        let mut stmt = conn.prepare(sql).unwrap();
        let mut rows = stmt.query(rusqlite::named_params! {":start": "2024-06-01T00:00:00Z", ":end": "2024-06-02T00:00:00Z"}).unwrap();
        let mut n = 0u64;
        while let Some(r) = rows.next().unwrap() {
            for c in 0..r.as_ref().column_count() {
                let _ = r.get_ref(c).unwrap();
            }
            n += 1;
        }
        let floor_secs = t0.elapsed().as_secs_f64();
        rows_table_push(
            &mut rows_table,
            format!(
                "extract {n} rows (8 columns) SQLite → Parquet, rows/s (floor: the query read and discarded with rusqlite)"
            ),
            format!(
                "{:.0} rows/s = {:.1}x floor time",
                n as f64 / ns_secs,
                ns_secs / floor_secs
            ),
            format!("{:.0} rows/s", n as f64 / floor_secs),
            "within 2x floor".into(),
        );
    }

    // 6. The orchestrator's share of a whole nightly run (needs the test command's dbt).
    {
        let dir = tempfile::tempdir().unwrap();
        if let Some(demo) = common::demo_project(dir.path()) {
            let doc: Value = serde_json::from_slice(
                &nightshift(&demo, &["tasks", "20240602_0000", "--json"]).stdout,
            )
            .unwrap();
            let run = &doc["run"];
            let wall = (ts_us(&run["end_time"]) - ts_us(&run["start_time"])) as f64 / 1000.0;
            let tasks: f64 = doc["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|t| t["tries"].as_array().unwrap().clone())
                .map(|t| t["duration_ms"].as_f64().unwrap_or(0.0))
                .sum();
            rows_table_push(
                &mut rows_table,
                "orchestrator's share of the reference nightly run (run wall time minus its task processes' time; tasks run one after another)".into(),
                format!("{:.2}% ({:.0} ms of {:.1} s)", 100.0 * (wall - tasks).max(0.0) / wall, (wall - tasks).max(0.0), wall / 1000.0),
                format!("task processes: {:.1} s", tasks / 1000.0),
                "< 1%".into(),
            );
        } else {
            eprintln!("skipping the orchestration share: run `bash tools/dbt/install` first");
        }
    }

    // 7. Log throughput: 200 MB of 100-byte lines through a try's log (floor: the same
    //    command writing straight to a file).
    {
        let dir = tempfile::tempdir().unwrap();
        let line = "0123456789".repeat(10);
        let cmd = format!("yes {} | head -c 200000000", &line[..99]);
        write(
            dir.path(),
            "pipelines/loud.toml",
            &(header("loud")
                + &format!("[[task]]\nid = \"loud\"\ncommand = [\"sh\", \"-c\", \"{cmd}\"]\n")),
        );
        nightshift(dir.path(), &["run", "loud", "--date", "2024-06-01"]);
        let doc: Value = serde_json::from_slice(
            &nightshift(dir.path(), &["tasks", "20240602_0000", "--json"]).stdout,
        )
        .unwrap();
        let ms = doc["tasks"][0]["tries"][0]["duration_ms"].as_f64().unwrap();
        let out = dir.path().join("straight.txt");
        let t0 = Instant::now();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} > {}", out.display()))
            .status()
            .unwrap();
        assert!(st.success());
        let floor_ms = t0.elapsed().as_secs_f64() * 1000.0;
        rows.push([
            "log throughput, 200 MB in 100-byte lines (floor: the same command straight to a file)"
                .into(),
            format!(
                "{:.0} MB/s ({ms:.0} ms) = {:.0}% of floor",
                200_000.0 / ms,
                100.0 * floor_ms / ms
            ),
            format!("{:.0} MB/s ({floor_ms:.0} ms)", 200_000.0 / floor_ms),
            ">= 50% of floor".into(),
        ]);
    }

    // 8. Catch-up never starves the schedule: the fire-to-start delay of an every-minute
    //    pipeline's run while another pipeline's 10,000 catch-up runs are created (floor: the
    //    same delay one minute earlier, with no catch-up). Real clock: takes 2-3 minutes.
    if std::env::var_os("NIGHTSHIFT_BENCH_QUICK").is_none() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pipelines/minutely.toml",
            "schedule = \"* * * * *\"\nstart_date = \"2024-01-01\"\ncatchup = false\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
        );
        let mut up = Command::new(bin())
            .arg("--project")
            .arg(dir.path())
            .args(["up", "--no-web"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let runs = |p: &str| -> Vec<Value> {
            let out = Command::new(bin())
                .arg("--project")
                .arg(dir.path())
                .args(["runs", p, "--json", "--limit", "100000"])
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        };
        let delay_ms = |r: &Value| -> Option<f64> {
            Some((ts_us(&r["start_time"]) - ts_us(&r["data_interval_end"])) as f64 / 1000.0)
                .filter(|_| r["start_time"].is_string())
        };
        let wait_scheduled = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(150);
            loop {
                let rs: Vec<Value> = runs("minutely")
                    .into_iter()
                    .filter(|r| r["trigger"] == "scheduled" && r["start_time"].is_string())
                    .collect();
                if rs.len() >= n || Instant::now() > deadline {
                    return rs;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        // The first run is the latest interval, created at start; the next fires on the
        // minute: that delay is the floor.
        let first = wait_scheduled(2);
        let floor = first.last().and_then(delay_ms).unwrap_or(f64::NAN);
        // Add a pipeline with 10,000 hourly intervals to catch up, just after a fire.
        let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(10_000);
        let start_date = start.strftime("%Y-%m-%d").to_string();
        write(
            dir.path(),
            "pipelines/big.toml",
            &format!(
                "schedule = \"@hourly\"\nstart_date = \"{start_date}\"\ncatchup = true\nmax_active_runs = 1\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n"
            ),
        );
        let added = Instant::now();
        let during = wait_scheduled(first.len() + 2);
        let delays: Vec<f64> = during[first.len()..].iter().filter_map(delay_ms).collect();
        let worst = delays.iter().cloned().fold(f64::NAN, f64::max);
        let created = runs("big").len();
        let rss = rss_kb(up.id());
        let _ = Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status();
        let _ = up.wait();
        rows.push([
            format!(
                "fire→start of an every-minute run while another pipeline catches up ({created} runs created in the {:.0} s measured; RSS of `up` {:.1} MB)",
                added.elapsed().as_secs_f64(),
                rss as f64 / 1024.0
            ),
            format!("worst {worst:.0} ms of {} fires", delays.len()),
            format!("{floor:.0} ms"),
            "< 2000 ms".into(),
        ]);
    }

    println!("\n| figure | nightshift | floor (same run) | target |\n|---|---|---|---|");
    for r in rows.into_iter().chain(rows_table) {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
}
