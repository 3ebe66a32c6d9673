//! Web and retention benchmark: 10,000 runs of a 6-task pipeline in the store; the
//! pipeline page with its (paginated) grid served by `nightshift up`, beside the floor of
//! the same server answering `/healthz` in the same run; then the store and the
//! scheduler's memory with and without a retention setting.
//! Run: `cargo bench -p nightshift --bench web`.

// A benchmark prints its table, and reads the real clock and environment to set itself up.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nightshift_store::Store;

const RUNS: i64 = 10_000;
const TASKS: i64 = 6;
const DAY_US: i64 = 86_400_000_000;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

// The caller stops and reaps the child (`stop`).
#[allow(clippy::zombie_processes)]
fn up(dir: &Path) -> (Child, String) {
    let err = dir.join("up.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("--project")
        .arg(dir)
        .args(["up", "--bind", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(u) = t.lines().find_map(|l| l.split("web UI and API at ").nth(1)) {
            return (
                child,
                u.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("up did not start: {t}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = c.wait();
}

/// Median milliseconds of `n` GETs (after one warm-up).
fn time_get(agent: &ureq::Agent, url: &str, n: usize) -> f64 {
    let mut body = String::new();
    let mut fetch = || {
        let mut r = agent.get(url).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        body = r.body_mut().read_to_string().unwrap();
    };
    fetch();
    let mut v = vec![];
    for _ in 0..n {
        let t = Instant::now();
        fetch();
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(v)
}

fn live_bytes(store: &Path) -> (u64, u64) {
    let c = rusqlite::Connection::open(store).unwrap();
    let q = |s: &str| c.query_row(s, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    let size = q("PRAGMA page_count") * q("PRAGMA page_size");
    let free = q("PRAGMA freelist_count") * q("PRAGMA page_size");
    (size, size - free)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut src =
        String::from("name = \"hist\"\nschedule = \"0 0 * * *\"\nstart_date = \"1990-01-01\"\n\n");
    for t in 0..TASKS {
        src.push_str(&format!("[[task]]\nid = \"t{t}\"\ncommand = [\"true\"]\n"));
        if t > 0 {
            src.push_str(&format!("depends_on = [\"t{}\"]\n", t - 1));
        }
        src.push('\n');
    }
    write(d, "pipelines/hist.toml", &src);
    let db = d.join(".nightshift/nightshift.db");
    let store = Store::open_file(&db).unwrap();
    let version = store.put_version("hist", &src, 0).unwrap();
    #[allow(clippy::disallowed_methods)]
    let today = jiff::Timestamp::now().as_microsecond() / DAY_US * DAY_US;
    store
        .sqlite()
        .expect("benchmarks seed a SQLite store")
        .bulk(|tx| {
            let mut run = tx.prepare(
                "INSERT INTO pipeline_runs (run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at, start_time, end_time, status, rows_loaded, \"trigger\", version)
                 VALUES (?1, 'hist', ?2, ?3, ?4, ?4, ?4, ?4 + 60000000, ?5, 1000 + ?6 % 97, 'scheduled', ?7)",
            )?;
            let mut ti = tx.prepare("INSERT INTO task_instances (run, pipeline, task_id, state, try_number, max_tries, updated_at) VALUES (?1, 'hist', ?2, ?3, 1, 1, 0)")?;
            let mut tr = tx.prepare(
                "INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, end_time, duration_ms, exit_code, host) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5 + 10000000, 10000, 0, 'h')",
            )?;
            for r in 0..RUNS {
                let start = today - (RUNS - r) * DAY_US;
                let date = jiff::Timestamp::from_microsecond(start).unwrap().to_zoned(jiff::tz::TimeZone::UTC).date();
                let failed = r % 50 == 7;
                let status = if failed { "FAILED" } else { "SUCCESS" };
                let end = start + DAY_US;
                run.execute(rusqlite::params![format!("{}_0000", date.tomorrow().unwrap().strftime("%Y%m%d")), date.to_string(), start, end, status, r, version])?;
                let run_pk = tx.last_insert_rowid();
                for t in 0..TASKS {
                    let state = if failed && t == TASKS - 1 { "FAILED" } else { "SUCCESS" };
                    let id = format!("t{t}");
                    ti.execute(rusqlite::params![run_pk, id, state])?;
                    let ti_pk = tx.last_insert_rowid();
                    tr.execute(rusqlite::params![ti_pk, run_pk, id, state, end + t * 10_000_000])?;
                }
            }
            Ok(())
        })
        .unwrap();
    store.set_paused("hist", true, 0).unwrap();
    drop(store);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();

    let measure = |label: &str| {
        let (child, url) = up(d);
        std::thread::sleep(Duration::from_millis(300));
        let floor = time_get(&agent, &format!("{url}/healthz"), 50);
        let page = time_get(&agent, &format!("{url}/pipelines/hist"), 50);
        let deep_before = today - (RUNS - 100) * DAY_US;
        let deep = time_get(
            &agent,
            &format!("{url}/pipelines/hist?before={deep_before}"),
            50,
        );
        let api = time_get(
            &agent,
            &format!("{url}/api/v1/pipelines/hist/runs?limit=25"),
            50,
        );
        let rss = rss_kb(child.id());
        let c = rusqlite::Connection::open(&db).unwrap();
        let runs: i64 = c
            .query_row("SELECT COUNT(*) FROM pipeline_runs", [], |r| r.get(0))
            .unwrap();
        let (file, live) = live_bytes(&db);
        stop(child);
        println!("{label}: {runs} runs in the store");
        println!(
            "  pipeline page + grid (25 runs, newest) {page:7.2} ms   floor /healthz {floor:5.2} ms   target < 100 ms"
        );
        println!("  pipeline page + grid (a page near the oldest run) {deep:5.2} ms");
        println!("  API runs page (25 runs)                {api:7.2} ms");
        println!(
            "  store file {:.1} MB, live data {:.1} MB; RSS of `up` after serving {} MB",
            file as f64 / 1e6,
            live as f64 / 1e6,
            rss / 1024
        );
    };
    measure("without retention");
    // Retention: keep a year. The scheduler prunes at its first heartbeat.
    write(d, "nightshift.toml", "[retention]\nmax_age = \"365d\"\n");
    let (child, _) = up(d);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = rusqlite::Connection::open(&db).unwrap();
        let runs: i64 = c
            .query_row("SELECT COUNT(*) FROM pipeline_runs", [], |r| r.get(0))
            .unwrap();
        if runs <= 366 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(child);
    measure("with [retention] max_age = \"365d\" (after the scheduler pruned)");
}
