//! `nightshift demo`: the README's first command. Scaffolds the reference project (a SQLite
//! shop source, dbt on DuckDB, Parquet outputs), installs the pinned dbt into the project's
//! `.venv` when it is missing, generates the source data, rehearses three nights on a
//! simulated clock, backfills an earlier date, and summarises.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use nightshift_engine::{Clock, Event, Mode, SimClock};

use crate::commands::{backfill, drive, event_line, load_project, new_engine, open_store, usage};
use crate::output;
use crate::{scaffold, shop};

const SIM_FROM: &str = "2024-06-01T23:00:00Z";
const SIM_UNTIL: &str = "2024-06-04T01:00:00Z";
const BACKFILL_DS: &str = "2024-05-31";
/// The source holds these business days: the three nights and the backfilled day.
const SOURCE_DAYS: (&str, &str) = ("2024-05-31", "2024-06-03");
const ORDERS_PER_DAY: u32 = 10_000;

/// The dbt version the project pins (first `dbt-core==` line of its requirements).
fn pinned_dbt(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("requirements-dbt.txt")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("dbt-core==").map(str::to_owned))
}

/// Makes sure `<dir>/.venv` has the pinned dbt, installing it with visible progress.
fn ensure_dbt(dir: &Path) -> Result<()> {
    let want = pinned_dbt(dir).ok_or_else(|| usage("requirements-dbt.txt pins no dbt-core"))?;
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    let have = Command::new(&python)
        .args([
            "-c",
            "import dbt.version, dbt.adapters.duckdb, dbt.adapters.postgres; print(dbt.version.__version__)",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref() == Some(want.as_str()) {
        output::note(format!("dbt {want} is installed in {}", venv.display()));
        return Ok(());
    }
    output::note(format!(
        "installing dbt {want} (dbt-duckdb, dbt-postgres) into {} — about half a minute",
        venv.display()
    ));
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .context("running `python3 -m venv`: is Python 3 installed? (apt-get install python3 python3-venv)")?;
    if !status.success() {
        anyhow::bail!(
            "`python3 -m venv {}` failed; install python3-venv and try again",
            venv.display()
        );
    }
    pip_install(dir, &venv)
}

/// Runs pip with its output folded: kept whole in `.nightshift/pip-install.log`, shown as
/// one line that follows what pip is doing (on a terminal), then one summary line. A
/// failure shows the end of pip's output.
fn pip_install(dir: &Path, venv: &Path) -> Result<()> {
    use std::io::{BufRead, Write};
    let started = std::time::Instant::now();
    let log_path = dir.join(".nightshift/pip-install.log");
    if let Some(d) = log_path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating `{}`", log_path.display()))?;
    let mut child = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(dir.join("requirements-dbt.txt"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running pip")?;
    // stderr is read on a thread of its own and joined into the log at the end.
    let err = child.stderr.take();
    let errs = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = err {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) || output::json() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut installed: Vec<String> = vec![];
    let mut tail: std::collections::VecDeque<String> = Default::default();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if let Some(pkg) = line.strip_prefix("Collecting ") {
                bar.set_message(format!(
                    "pip: collecting {}",
                    pkg.split_whitespace().next().unwrap_or(pkg)
                ));
            } else if let Some(list) = line.strip_prefix("Successfully installed ") {
                installed = list.split_whitespace().map(str::to_owned).collect();
            }
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
    }
    let status = child.wait().context("waiting for pip")?;
    let errors = errs.join().unwrap_or_default();
    let _ = log.write_all(errors.as_bytes());
    bar.finish_and_clear();
    if !status.success() {
        let err_lines: Vec<&str> = errors.lines().collect();
        let err_tail = &err_lines[err_lines.len().saturating_sub(20)..];
        for l in tail
            .iter()
            .map(String::as_str)
            .chain(err_tail.iter().copied())
        {
            output::note(format!("  {l}"));
        }
        anyhow::bail!(
            "installing dbt failed (the end of pip's output is above; all of it in `{}`); the package index must be reachable",
            log_path.display()
        );
    }
    let dbt: Vec<&String> = installed.iter().filter(|p| p.starts_with("dbt-")).collect();
    output::note(format!(
        "installed {} packages in {:.0} s ({}); pip's output is in {}",
        installed.len(),
        started.elapsed().as_secs_f64(),
        dbt.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        log_path.display()
    ));
    Ok(())
}

fn generate_source(dir: &Path, postgres: Option<&str>) -> Result<()> {
    let from = nightshift_core::time::parse_date(SOURCE_DAYS.0)?;
    let to = nightshift_core::time::parse_date(SOURCE_DAYS.1)?;
    let opts = shop::Options {
        orders_per_day: ORDERS_PER_DAY,
        hold_batch: false,
        bad_row: false,
    };
    let mut days = vec![];
    let mut d = from;
    while d <= to {
        days.push(d);
        d = d.tomorrow()?;
    }
    let (total, place) = match postgres {
        None => {
            let mut conn = shop::open(&dir.join("source/shop.db"))?;
            let mut total = 0;
            for d in days {
                total += shop::generate_day(&mut conn, d, &opts)?.orders;
            }
            (total, format!("{}/source/shop.db", dir.display()))
        }
        Some(url) => {
            let location = nightshift_store::PgLocation {
                url: url.to_owned(),
                password_env: None,
            };
            // The driver blocks on a runtime of its own: not on the command's.
            let total = std::thread::scope(|s| {
                s.spawn(|| -> Result<i64> {
                    let mut client =
                        nightshift_store::postgres::connect(&location, "the demo database")
                            .map_err(anyhow::Error::msg)?;
                    shop::open_postgres(&mut client)?;
                    let mut total = 0;
                    for d in days {
                        total += shop::generate_day_postgres(&mut client, d, &opts)?.orders;
                    }
                    Ok(total)
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the shop generator stopped unexpectedly")))
            })?;
            (total, nightshift_store::redact_url(url))
        }
    };
    output::note(format!(
        "source: {total} orders over {} .. {} in {place}",
        SOURCE_DAYS.0, SOURCE_DAYS.1
    ));
    Ok(())
}

pub async fn exec(dir: &Path, postgres: Option<String>) -> Result<i32> {
    if let Some(url) = &postgres
        && nightshift_core::project::url_has_password(url)
    {
        return Err(usage(
            "the URL holds a password, which would be written into the project; export PGPASSWORD instead",
        ));
    }
    let written = match &postgres {
        Some(url) => scaffold::write_reference_postgres(dir, url)?,
        None => scaffold::write_reference(dir)?,
    };
    if written.is_empty() {
        output::note(format!(
            "using the existing demo project in `{}`",
            dir.display()
        ));
    } else {
        output::note(format!(
            "scaffolded the reference project in `{}`",
            dir.display()
        ));
    }
    ensure_dbt(dir)?;
    generate_source(dir, postgres.as_deref())?;
    let project = load_project(dir)?;
    if project.has_errors() {
        return Err(usage("the demo project has errors (see above)"));
    }
    let store = open_store(&project)?;

    output::line(format!(
        "== Three nights on a simulated clock ({SIM_FROM} .. {SIM_UNTIL}) ==\n"
    ));
    let from: jiff::Timestamp = SIM_FROM.parse()?;
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new(from));
    let mut engine = new_engine(
        project,
        store.clone(),
        clock,
        Mode::Scheduler {
            until: Some(SIM_UNTIL.parse()?),
        },
    )?;
    engine
        .acquire_scheduler_lease()
        .map_err(|e| usage(e.to_string()))?;
    drive(engine, |e| {
        if let Some(line) = event_line(&e) {
            // A blank line after each run keeps the nights apart.
            let gap = if matches!(e, Event::RunEnded { .. }) {
                "\n"
            } else {
                ""
            };
            output::line(format!("{line}{gap}"));
        }
    })
    .await?;

    output::line(format!(
        "== Backfill of an earlier date (ds {BACKFILL_DS}) ==\n"
    ));
    let code = backfill::exec(
        dir,
        "nightly",
        BACKFILL_DS,
        BACKFILL_DS,
        false,
        false,
        false,
    )
    .await?;

    output::line("\n== Summary ==\n");
    let runs = store.runs("nightly", 20)?;
    output::table(
        &["RUN_ID", "DS", "TRIGGER", "STATUS", "ROWS_LOADED"],
        &runs
            .iter()
            .map(|r| {
                vec![
                    r.run_id.clone(),
                    r.ds.to_string(),
                    r.trigger.as_str().into(),
                    r.status.to_string(),
                    r.rows_loaded.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let mut published = vec![];
    for output_name in ["fct_daily_revenue", "fct_orders"] {
        let odir = dir.join("published").join(output_name);
        let mut parts: Vec<_> = std::fs::read_dir(&odir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        parts.sort();
        for p in parts.into_iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dt="))
        }) {
            let manifest: serde_json::Value = std::fs::read_to_string(p.join("_manifest.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            published.push(vec![
                output_name.to_owned(),
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                manifest["rows"].to_string(),
                manifest["run_id"].as_str().unwrap_or("-").to_owned(),
                manifest["checks"].to_string(),
            ]);
        }
    }
    output::line("");
    output::table(
        &["PUBLISHED", "PARTITION", "ROWS", "RUN_ID", "CHECKS"],
        &published,
    );
    let d = dir.display();
    // Hints name the binary that is running, so they work after `cargo run` too.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nightshift".into());
    let warehouse = match &postgres {
        Some(url) => format!(
            "{} (schemas raw and analytics)",
            nightshift_store::redact_url(url)
        ),
        None => format!("{d}/warehouse/shop.duckdb"),
    };
    output::note(format!(
        "\nPublished outputs: {d}/published/<output>/dt=<ds>/ (part-0.parquet + _manifest.json)\nRaw partitions:    {d}/data/raw/<table>/dt=<ds>/\nWarehouse:         {warehouse}\nTry logs:          {d}/.nightshift/logs/nightly/<run_id>/<task>.try-<n>.log\n\nLook further:\n  {exe} --project {d} runs nightly\n  {exe} --project {d} tasks 20240602_0000\n  {exe} --project {d} dbt-results 20240602_0000\n  {exe} --project {d} logs 20240602_0000 dbt_run"
    ));
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pip's output goes to a log file whole, with one summary line; a failure names the
    /// log. (A small real package, from the same index the demo's dbt comes from.)
    #[test]
    fn pip_output_is_folded_into_a_log_and_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join(".venv");
        assert!(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap()
                .success()
        );
        std::fs::write(dir.path().join("requirements-dbt.txt"), "six==1.17.0\n").unwrap();
        pip_install(dir.path(), &venv).unwrap();
        let log = std::fs::read_to_string(dir.path().join(".nightshift/pip-install.log")).unwrap();
        assert!(log.contains("Successfully installed six-1.17.0"), "{log}");
        std::fs::write(
            dir.path().join("requirements-dbt.txt"),
            "nightshift-there-is-no-such-package==0.0.1\n",
        )
        .unwrap();
        let e = pip_install(dir.path(), &venv).unwrap_err().to_string();
        assert!(e.contains("pip-install.log"), "{e}");
    }
}
