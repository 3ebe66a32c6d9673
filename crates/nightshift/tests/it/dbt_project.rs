//! dbt as dbt users run it, with the real pinned dbt on a small project written here:
//! typed vars (a boolean gating the seeds), a profile's relative path, `deps` from a local
//! package, `run-operation` with arguments, one full parse per run, whole failure messages,
//! and the target folders kept per task.

use std::path::Path;

use crate::support::*;

/// A dbt project in `dbt/` whose seeds are enabled only by the boolean var
/// `load_source_data` (as in dbt's own example project), with a DuckDB file at a path
/// relative to the dbt project, and a local package in `localpkg/`.
fn project() -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[pools]\nwarehouse = { slots = 1 }\n[channels.ops]\nkind = \"log\"\n[alerts]\nchannels = [\"ops\"]\n",
    );
    p.file(
        "dbt/dbt_project.yml",
        "name: shop\nversion: \"1.0.0\"\nprofile: shop\nseeds:\n  shop:\n    +enabled: \"{{ var('load_source_data', false) }}\"\n",
    );
    p.file(
        "dbt/profiles.yml",
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: warehouse.duckdb\n      threads: 1\n",
    );
    p.file("dbt/packages.yml", "packages:\n  - local: ../localpkg\n");
    p.file(
        "dbt/seeds/customers.csv",
        "id,name\n1,Ada\n2,Grace\n3,Edsger\n",
    );
    p.file(
        "dbt/models/customers_by_day.sql",
        "select id, name, '{{ var(\"ds\") }}' as ds, '{{ var(\"run_id\") }}' as run_id from {{ ref('customers') }}\n",
    );
    p.file(
        "localpkg/dbt_project.yml",
        "name: localpkg\nversion: \"1.0.0\"\n",
    );
    p.file(
        "localpkg/macros/hello.sql",
        "{% macro hello(who) %}{{ log('hello ' ~ who ~ ' from localpkg', info=True) }}{% endmacro %}\n",
    );
    p
}

fn pipeline(name: &str, tasks: &str) -> String {
    daily(name, "2024-06-01")
        + &tasks.replace("DBT", &crate::dbt::venv().join("bin/dbt").to_string_lossy())
}

fn log(p: &TestProject, run_id: &str, task: &str) -> String {
    let out = p.run(&["logs", run_id, task]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_dbt_project_runs_as_dbt_users_run_it() {
    let p = project();
    p.file(
        "pipelines/shop.toml",
        &pipeline(
            "shop",
            r#"
[[task]]
id = "deps"
kind = "dbt"
command = "deps"
executable = "DBT"
vars = { load_source_data = true }
pool = "warehouse"

[[task]]
id = "seed"
kind = "dbt"
command = "seed"
executable = "DBT"
vars = { load_source_data = true }
depends_on = ["deps"]
pool = "warehouse"

[[task]]
id = "run"
kind = "dbt"
command = "run"
executable = "DBT"
vars = { load_source_data = true }
depends_on = ["seed"]
pool = "warehouse"

[[task]]
id = "hello"
kind = "dbt"
command = "run-operation hello"
operation_args = { who = "ds {{ ds }}" }
executable = "DBT"
vars = { load_source_data = true }
depends_on = ["run"]
pool = "warehouse"

[[task]]
id = "docs"
kind = "dbt"
command = "docs generate"
executable = "DBT"
vars = { load_source_data = true }
depends_on = ["hello"]
pool = "warehouse"
"#,
        ),
    );
    let out = p.run(&["validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["run", "shop", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let run_id = "20240602_0000";

    // `deps` installed the local package, and the macro from it ran with its arguments.
    assert!(p.path().join("dbt/dbt_packages/localpkg").is_dir());
    let hello = log(&p, run_id, "hello");
    assert!(
        hello.contains("hello ds 2024-06-01 from localpkg"),
        "{hello}"
    );

    // `docs generate` wrote the catalog into the try's target folder.
    assert!(
        p.path()
            .join(".nightshift/dbt/shop/20240602_0000/docs/try-1/catalog.json")
            .exists()
    );

    // The boolean var enabled the seeds, and nightshift's own vars came along.
    let doc = p.tasks(run_id);
    let seed = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "seed")
        .unwrap();
    assert_eq!(seed["tries"][0]["rows_loaded"], 3, "{seed}");
    let db = p.path().join("dbt/warehouse.duckdb");
    assert!(
        db.exists() && !p.path().join("warehouse.duckdb").exists(),
        "the profile's relative path resolves in the dbt project"
    );
    assert_eq!(
        query(
            &p,
            "select count(*) || ' ' || min(ds) || ' ' || min(run_id) from customers_by_day"
        ),
        "3 2024-06-01 20240602_0000"
    );

    // One full parse in the run: the first call that parses; the others start from it.
    let full = "Unable to do partial parsing";
    let parsed: Vec<(&str, bool)> = ["seed", "run", "hello"]
        .iter()
        .map(|t| (*t, log(&p, run_id, t).contains(full)))
        .collect();
    assert_eq!(
        parsed,
        [("seed", true), ("run", false), ("hello", false)],
        "full parses per call"
    );

    // A changed model is still picked up from the saved parse.
    p.file(
        "dbt/models/customers_by_day.sql",
        "select id, upper(name) as name, '{{ var(\"ds\") }}' as ds, '{{ var(\"run_id\") }}' as run_id from {{ ref('customers') }}\n",
    );
    let out = p.run(&["clear", run_id, "--task", "run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["run", "shop", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        query(&p, "select name from customers_by_day where id = 1"),
        "ADA"
    );
}

#[test]
fn bad_dbt_settings_are_refused_with_where_and_what_to_do() {
    let p = project();
    p.file(
        "pipelines/shop.toml",
        &pipeline(
            "shop",
            r#"
[[task]]
id = "run"
kind = "dbt"
command = "run"
vars = { ds = "2024-01-01", inf = inf }
args = ["--vars", "{load_source_data: true}"]

[[task]]
id = "deps"
kind = "dbt"
command = "deps"
select = ["x"]

[[task]]
id = "op"
kind = "dbt"
command = "run-operation"
runner = "hot"
"#,
        ),
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "`vars.ds` is reserved",
        "`vars.inf`",
        "`--vars` in the `args` of dbt task `run`",
        "write them as `vars = {",
        "dbt `deps` selects no nodes",
        "`run-operation` needs one macro name",
        "unknown dbt runner `hot`",
    ] {
        assert!(err.contains(needle), "{needle}:\n{err}");
    }
    assert!(err.contains("pipelines/shop.toml:"), "{err}");
}

#[test]
fn a_contract_mismatch_is_explained_whole_and_alerted() {
    let p = project();
    std::fs::remove_file(p.path().join("dbt/packages.yml")).unwrap();
    p.file(
        "dbt/models/contracted.sql",
        "select cast(1 as bigint) as projected_renewal_ncd\n",
    );
    p.file(
        "dbt/models/contracted.yml",
        "version: 2\nmodels:\n  - name: contracted\n    config:\n      contract: {enforced: true}\n    columns:\n      - name: projected_renewal_ncd\n        data_type: integer\n",
    );
    p.file(
        "pipelines/contract.toml",
        &pipeline(
            "contract",
            r#"
[[task]]
id = "run"
kind = "dbt"
command = "run"
select = ["contracted"]
vars = { load_source_data = true }
executable = "DBT"
"#,
        ),
    );
    let out = p.run(&["run", "contract", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let run_id = "20240602_0000";
    let explained = stdout(&p.run(&["explain", run_id, "run"]));
    for needle in [
        "contracted:",
        "projected_renewal_ncd",
        "INTEGER",
        "BIGINT",
        "data type mismatch",
    ] {
        assert!(explained.contains(needle), "{needle}:\n{explained}");
    }
    let failed = stdout(&p.run(&["dbt-results", run_id, "--failed"]));
    assert!(failed.contains("ERROR contracted (model"), "{failed}");
    assert!(failed.contains("data type mismatch"), "{failed}");
    let alert = p.read(".nightshift/notifications.jsonl");
    assert!(alert.contains("data type mismatch"), "{alert}");
}

#[test]
fn a_parse_error_shows_dbt_own_words_and_target_folders_are_pruned() {
    let p = project();
    p.file(
        "pipelines/deps.toml",
        &pipeline(
            "deps",
            r#"
[[task]]
id = "deps"
kind = "dbt"
command = "deps"
executable = "DBT"
"#,
        ),
    );
    // Ten runs: the task keeps the target folders of its latest five tries (the default).
    let out = p.run(&[
        "backfill",
        "deps",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = || -> Vec<_> {
        walk(&p.path().join(".nightshift/dbt/deps"))
            .into_iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("try-"))
            })
            .collect()
    };
    assert_eq!(kept().len(), 5, "{:?}", kept());
    assert_eq!(p.runs("deps").len(), 10);
    // Retention removes old runs with their target folders.
    p.file("nightshift.toml", "[retention]\nmax_age = \"2d\"\n");
    assert!(p.run(&["pause", "deps"]).status.success());
    let up = p.spawn(&["up", "--no-web"], &[], "up");
    p.wait_for("retention to remove the runs", || p.runs("deps").is_empty());
    sigterm(&up);
    let mut up = up;
    up.wait().unwrap();
    assert!(kept().is_empty(), "and their target folders: {:?}", kept());

    // dbt cannot parse the project: its own error lines are the try's error.
    p.file("dbt/models/broken.sql", "select {{ ref( }}\n");
    p.file(
        "pipelines/broken.toml",
        &pipeline(
            "broken",
            r#"
[[task]]
id = "compile"
kind = "dbt"
command = "compile"
executable = "DBT"
"#,
        ),
    );
    let out = p.run(&["run", "broken", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = p.json(&["tasks", "20240602_0000", "--pipeline", "broken", "--json"]);
    let error = doc["tasks"][0]["tries"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.starts_with("dbt could not run ("), "{error}");
    assert!(error.lines().count() > 1, "dbt's own lines follow: {error}");
    assert!(error.contains("broken"), "dbt names the file: {error}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.push(path.clone());
                out.extend(walk(&path));
            }
        }
    }
    out
}

/// DuckDB's answer for a one-row query, from the warehouse of `project()`.
fn query(p: &TestProject, sql: &str) -> String {
    let python = crate::dbt::venv().join("bin/python");
    let q = std::process::Command::new(&python)
        .arg("-c")
        .arg("import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print(c.execute(sys.argv[2]).fetchone()[0])")
        .arg(p.path().join("dbt/warehouse.duckdb"))
        .arg(sql)
        .output()
        .unwrap();
    assert!(q.status.success(), "{sql}: {}", stderr(&q));
    stdout(&q).trim().to_owned()
}

fn warm_log(p: &TestProject, run_id: &str, task: &str) -> String {
    let log = log(p, run_id, task);
    if log.contains("reusing the parsed project") {
        "reused".into()
    } else if log.contains("parsed the project") {
        "parsed".into()
    } else {
        format!("neither:\n{log}")
    }
}

#[test]
fn the_warm_runner_parses_once_across_nights_and_still_sees_changes() {
    let p = project();
    std::fs::remove_file(p.path().join("dbt/packages.yml")).unwrap();
    p.file(
        "dbt/models/by_day.sql",
        "select 'v1' as version, '{{ var(\"ds\") }}' as ds\n",
    );
    // A config read at parse time, from a var of the task's own.
    p.file(
        "dbt/models/shape.sql",
        "{{ config(materialized=('table' if var('shape') == 'table-2024-06-02' else 'view')) }}\nselect 1 as x\n",
    );
    p.file(
        "pipelines/warm.toml",
        &pipeline(
            "warm",
            r#"
[[task]]
id = "build"
kind = "dbt"
command = "run"
runner = "warm"
select = ["by_day"]
vars = { load_source_data = true }
executable = "DBT"

[[task]]
id = "shape"
kind = "dbt"
command = "run"
runner = "warm"
select = ["shape"]
vars = { load_source_data = true, shape = "table-{{ ds }}" }
executable = "DBT"
depends_on = ["build"]

# After the second night's build: the model changes, as a developer's commit would.
[[task]]
id = "edit"
command = ["sh", "-c", "[ {{ ds }} != 2024-06-02 ] || sed -i s/v1/v2/ dbt/models/by_day.sql"]
depends_on = ["shape"]
"#,
        ),
    );
    // Three nights in one process, as `up` runs them: one worker for the project.
    let out = p.run(&[
        "backfill",
        "warm",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-03",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let nights = ["20240602_0000", "20240603_0000", "20240604_0000"];
    let build: Vec<String> = nights.iter().map(|r| warm_log(&p, r, "build")).collect();
    assert_eq!(
        build,
        ["parsed", "reused", "parsed"],
        "night 2 reuses night 1's parse; night 3 sees the edited model"
    );
    assert!(
        !log(&p, nights[1], "build").contains("Unable to do partial parsing"),
        "night 2 parses nothing"
    );
    // nightshift's own ds reaches the reused project, and the edit the third night.
    assert_eq!(
        query(&p, "select ds || ' ' || version from by_day"),
        "2024-06-03 v2"
    );
    // A var read in a config changed on night 2: parsed again, and the config applied.
    let shape: Vec<String> = nights.iter().map(|r| warm_log(&p, r, "shape")).collect();
    assert_eq!(shape, ["parsed", "parsed", "parsed"]);
    assert_eq!(
        query(
            &p,
            "select table_type from information_schema.tables where table_name = 'shape'"
        ),
        "VIEW",
        "night 3 is a view again"
    );
    let tables = stdout(&p.run(&["logs", nights[1], "shape"]));
    assert!(tables.contains("table model"), "{tables}");
}

/// A project whose model `slow` counts for hours while the file `slow-marker` exists in the
/// project, and is quick after; `quick` always is. (Sized for hours: this machine has counted
/// 5e10 rows in 4 s, so a count meant to last a minute finished before a test's 8 s timeout.)
fn slow_project() -> TestProject {
    let p = project();
    std::fs::remove_file(p.path().join("dbt/packages.yml")).unwrap();
    let marker = p.path().join("slow-marker");
    std::fs::write(&marker, "").unwrap();
    p.file(
        "dbt/models/slow.sql",
        &format!(
            "{{{{ config(materialized='table') }}}}\nselect count(*) as n from range(case when (select count(*) from glob('{}')) > 0 then 50000000000000 else 10 end)\n",
            marker.display()
        ),
    );
    p.file("dbt/models/quick.sql", "select 1 as x\n");
    p
}

#[test]
fn a_warm_worker_that_crashes_fails_only_that_try() {
    let p = slow_project();
    p.file(
        "pipelines/crash.toml",
        &pipeline(
            "crash",
            r#"
[[task]]
id = "slow"
kind = "dbt"
command = "run"
runner = "warm"
select = ["slow"]
vars = { load_source_data = true }
executable = "DBT"
retries = 1
retry_delay = "100ms"

# Kills this engine's warm worker while `slow` counts, and lets the retry be quick.
[[task]]
id = "killer"
command = ["sh", "-c", "for i in $(seq 300); do s=$(ls .nightshift/dbt-warm/ 2>/dev/null | grep '[.]sock$' | head -1); [ -n \"$s\" ] && break; sleep 0.1; done; sleep 3; rm -f slow-marker; pid=${s#w-}; pkill -KILL -f \"worker.py w-${pid%%-*}-\""]
"#,
        ),
    );
    let out = p.run(&["run", "crash", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc = p.tasks("20240602_0000");
    let slow = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "slow")
        .unwrap()
        .clone();
    let tries = slow["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{slow}");
    assert_eq!(tries[0]["state"], "FAILED");
    assert!(
        tries[0]["error"]
            .as_str()
            .unwrap()
            .contains("worker ended without an answer"),
        "{slow}"
    );
    assert_eq!(
        tries[1]["state"], "SUCCESS",
        "the retry gets a fresh worker"
    );
}

#[test]
fn a_timeout_ends_the_warm_worker_and_the_next_call_gets_a_fresh_one() {
    let p = slow_project();
    p.file(
        "pipelines/timeout.toml",
        &pipeline(
            "timeout",
            r#"
[[task]]
id = "slow"
kind = "dbt"
command = "run"
runner = "warm"
select = ["slow"]
vars = { load_source_data = true }
executable = "DBT"
timeout = "8s"

[[task]]
id = "after"
kind = "dbt"
command = "run"
runner = "warm"
select = ["quick"]
vars = { load_source_data = true }
executable = "DBT"
depends_on = ["slow"]
trigger_rule = "all_done"
"#,
        ),
    );
    let out = p.run(&["run", "timeout", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = p.json(&["tasks", "20240602_0000", "--pipeline", "timeout", "--json"]);
    let state = |id: &str| {
        doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task_id"] == id)
            .unwrap()["tries"][0]
            .clone()
    };
    assert_eq!(state("slow")["error"], "timed out after 8s", "{doc}");
    assert_eq!(state("after")["state"], "SUCCESS", "{doc}");
    let after = stdout(&p.run(&["logs", "20240602_0000", "after", "--pipeline", "timeout"]));
    assert!(
        after.contains("parsed the project"),
        "a fresh worker: {after}"
    );
}
