//! The reference nightly run with real dbt, in one benchmark run: the `cli` runner (a dbt
//! process per call) and the `warm` runner (one long-lived dbt per project), each with and
//! without dbt's partial parsing (`DBT_PARTIAL_PARSE=false` turns it off: every call then
//! parses the project whole, as every call did before nightshift kept a run's parse). Each
//! variant reruns the demo's three nights in one process, as `up` would run them; the
//! figures are the nights' wall times, and per dbt call its time and the part of it dbt spent
//! loading or parsing the project (from dbt's own log: adapter registered → nodes found).
//!
//! Needs the dbt of `bash tools/dbt/install`. Run: `cargo bench -p nightshift --bench dbt`.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{median, nightshift, ts_us};
use serde_json::Value;

const CALLS: [&str; 4] = ["check_freshness", "dbt_run", "dbt_test", "publish"];
const NIGHTS: [&str; 3] = ["20240602_0000", "20240603_0000", "20240604_0000"];

/// Seconds dbt spent loading or parsing the project in one call, from its JSON log file:
/// from `AdapterRegistered` to `FoundStats` (a warm call that parsed first has two).
fn parse_secs(log: &Path) -> f64 {
    let Ok(text) = std::fs::read_to_string(log) else {
        return 0.0;
    };
    let mut total = 0.0;
    let mut from: Option<i64> = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["info"]["name"].as_str() {
            Some("AdapterRegistered") => from = Some(ts_us(&v["info"]["ts"])),
            Some("FoundStats") => {
                if let Some(f) = from.take() {
                    total += (ts_us(&v["info"]["ts"]) - f) as f64 / 1e6;
                }
            }
            _ => {}
        }
    }
    total
}

struct Figures {
    first_night: f64,
    later_nights: f64,
    call: Vec<(String, f64, f64)>,
}

fn variant(demo: &Path, dir: &Path, runner: &str, partial_parse: bool) -> Figures {
    let st = Command::new("cp")
        .arg("-a")
        .arg(demo)
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    for saved in [".nightshift/dbt", ".nightshift/dbt-parse"] {
        let _ = std::fs::remove_dir_all(dir.join(saved));
    }
    let toml = dir.join("nightshift.toml");
    let mut settings = std::fs::read_to_string(&toml).unwrap();
    settings += &format!("\n[dbt]\nrunner = \"{runner}\"\n");
    std::fs::write(&toml, settings).unwrap();
    if !partial_parse {
        let file = dir.join("pipelines/nightly.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text
            .replace(
                "kind = \"dbt\"\n",
                "kind = \"dbt\"\nenv = { DBT_PARTIAL_PARSE = \"false\" }\n",
            )
            .replace(
                "kind = \"publish\"\n",
                "kind = \"publish\"\nenv = { DBT_PARTIAL_PARSE = \"false\" }\n",
            );
        std::fs::write(&file, text).unwrap();
    }
    nightshift(
        dir,
        &[
            "backfill",
            "nightly",
            "--from",
            "2024-06-01",
            "--to",
            "2024-06-03",
            "--rerun",
        ],
    );
    let mut nights = vec![];
    let mut calls: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    for run in NIGHTS {
        let doc: Value =
            serde_json::from_slice(&nightshift(dir, &["tasks", run, "--json"]).stdout).unwrap();
        let r = &doc["run"];
        assert_eq!(r["state"], "SUCCESS", "{r}");
        nights.push((ts_us(&r["end_time"]) - ts_us(&r["start_time"])) as f64 / 1e6);
        for t in doc["tasks"].as_array().unwrap() {
            let id = t["task_id"].as_str().unwrap();
            let Some(name) = CALLS.iter().find(|c| **c == id) else {
                continue;
            };
            let last = t["tries"].as_array().unwrap().last().unwrap();
            let n = last["try_number"].as_u64().unwrap();
            let log = dir.join(format!(
                ".nightshift/dbt/nightly/{run}/{id}/try-{n}/dbt.log"
            ));
            let e = calls.entry(name).or_default();
            e.0.push(last["duration_ms"].as_f64().unwrap() / 1000.0);
            e.1.push(parse_secs(&log));
        }
    }
    Figures {
        first_night: nights[0],
        later_nights: median(nights[1..].to_vec()),
        call: CALLS
            .iter()
            .map(|c| {
                let (d, p) = calls.remove(c).unwrap_or_default();
                (c.to_string(), median(d), median(p))
            })
            .collect(),
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(demo) = common::demo_project(tmp.path()) else {
        eprintln!("skipping: run `bash tools/dbt/install` first (the pinned dbt)");
        return;
    };
    let mut table = vec![];
    for (runner, pp) in [
        ("cli", false),
        ("cli", true),
        ("warm", false),
        ("warm", true),
    ] {
        let name = format!(
            "{runner}, partial parsing {}",
            if pp { "on" } else { "off" }
        );
        let dir = tmp.path().join(name.replace([' ', ','], "-"));
        let f = variant(&demo, &dir, runner, pp);
        eprintln!("measured: {name}");
        table.push((name, f));
    }
    let today = table[0].1.later_nights;
    println!(
        "\n| runner | first night | later nights (median) | vs `cli` without partial parsing |"
    );
    println!("|---|---|---|---|");
    for (name, f) in &table {
        println!(
            "| {name} | {:.1} s | {:.1} s | {:.1}x faster |",
            f.first_night,
            f.later_nights,
            today / f.later_nights
        );
    }
    println!(
        "\n| runner | {} |",
        CALLS
            .iter()
            .map(|c| format!("{c}: call / parse"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(CALLS.len()));
    for (name, f) in &table {
        println!(
            "| {name} | {} |",
            f.call
                .iter()
                .map(|(_, d, p)| format!("{d:.2} s / {p:.2} s"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}
