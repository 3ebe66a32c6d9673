//! What the benches share: the binary, project files, the plain-loop floors, and figures
//! read back from the store. Each bench uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nightshift")
}

pub fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub fn header(name: &str) -> String {
    format!(
        "name = \"{name}\"\nschedule = \"0 0 * * *\"\nstart_date = \"2024-06-01\"\nmax_active_tasks = 1000\n\n"
    )
}

pub fn nightshift(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .arg("--project")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn ts_us(v: &Value) -> i64 {
    let t: jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    t.as_microsecond()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The plain-loop floor: the same processes, one after another.
pub fn floor_chain(n: usize) -> Vec<f64> {
    let mut gaps = vec![];
    let mut last_end: Option<Instant> = None;
    for _ in 0..n {
        let start = Instant::now();
        if let Some(e) = last_end {
            gaps.push(start.duration_since(e).as_secs_f64() * 1000.0);
        }
        Command::new("true").status().unwrap();
        last_end = Some(Instant::now());
    }
    gaps
}

/// The plain-loop floor for the fan-out: root, then 198 at `parallelism` at a time, then join.
pub fn floor_fanout(width: usize, parallelism: usize) -> Duration {
    let t0 = Instant::now();
    Command::new("true").status().unwrap();
    let mut running: Vec<std::process::Child> = vec![];
    let mut started = 0;
    while started < width || !running.is_empty() {
        while started < width && running.len() < parallelism {
            running.push(Command::new("true").spawn().unwrap());
            started += 1;
        }
        let mut i = 0;
        while i < running.len() {
            if running[i].try_wait().unwrap().is_some() {
                let _ = running.swap_remove(i).wait();
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Command::new("true").status().unwrap();
    t0.elapsed()
}

/// Gaps (ms) between one try's end and its successor's start, from the store.
pub fn chain_gaps(dir: &Path, n: usize) -> Vec<f64> {
    let doc: Value =
        serde_json::from_slice(&nightshift(dir, &["tasks", "20240602_0000", "--json"]).stdout)
            .unwrap();
    let tasks = doc["tasks"].as_array().unwrap();
    (1..n)
        .map(|i| {
            let prev = &tasks[i - 1]["tries"][0];
            let next = &tasks[i]["tries"][0];
            (ts_us(&next["start_time"]) - ts_us(&prev["end_time"])) as f64 / 1000.0
        })
        .collect()
}

/// Tasks `t0` … `t{n-1}` of `true`, each depending on the one before.
pub fn chain_tasks(n: usize) -> String {
    (0..n)
        .map(|i| {
            let dep = if i == 0 {
                String::new()
            } else {
                format!("depends_on = [\"t{}\"]\n", i - 1)
            };
            format!("[[task]]\nid = \"t{i}\"\ncommand = [\"true\"]\n{dep}\n")
        })
        .collect()
}

/// A `root`, `width` tasks after it, and a `join` after them all; every one `true`.
pub fn fan_tasks(width: usize) -> String {
    let mut src = "[[task]]\nid = \"root\"\ncommand = [\"true\"]\n\n".to_owned();
    let mut mids = vec![];
    for i in 0..width {
        src +=
            &format!("[[task]]\nid = \"m{i}\"\ncommand = [\"true\"]\ndepends_on = [\"root\"]\n\n");
        mids.push(format!("\"m{i}\""));
    }
    src + &format!(
        "[[task]]\nid = \"join\"\ncommand = [\"true\"]\ndepends_on = [{}]\n",
        mids.join(", ")
    )
}

/// The median time (ms) of `n` scheduler passes over one active run whose first task runs
/// elsewhere: every pass evaluates everything and claims nothing.
pub fn median_pass_ms(
    engine: &mut nightshift_engine::Engine,
    now: jiff::Timestamp,
    n: usize,
) -> f64 {
    let mut times = vec![];
    for _ in 0..n {
        let t0 = Instant::now();
        let out = engine.pass(now, true).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(out.active_runs, 1);
        assert_eq!(out.claimed, 0);
    }
    median(times)
}

/// The demo project (three nights and a backfill, real dbt) in `dir/demo`, with the test
/// command's dbt linked in; `None` when that dbt is not installed.
pub fn demo_project(dir: &Path) -> Option<std::path::PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv");
    if !venv.join("bin/dbt").exists() {
        return None;
    }
    let demo = dir.join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    std::os::unix::fs::symlink(venv.canonicalize().unwrap(), demo.join(".venv")).unwrap();
    let out = Command::new(bin()).arg("demo").arg(&demo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(demo)
}
