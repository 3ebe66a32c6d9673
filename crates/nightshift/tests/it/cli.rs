//! End-to-end CLI behaviour: validation messages, run lines, inspection commands.

use std::process::Command;

use crate::support::*;

#[test]
fn validate_reports_every_problem_with_its_location() {
    let p = TestProject::new();
    p.file(
        "pipelines/nightly.toml",
        r#"name = "nightly"
schedule = "0 0 * * * *"
timezone = "Europe/Berln"
start_date = "2024-06-01"

[defaults]
retires = 2
retry_delay = "ten seconds"

[[task]]
id = "extract_data"
command = ["./x.sh", "{{ ds }}"]

[[task]]
id = "dbt_run"
command = ["./y.sh"]
depends_on = ["extract_dat", "dbt_test"]

[[task]]
id = "dbt_test"
command = ["./z.sh"]
depends_on = ["dbt_run"]

[[task]]
id = "dbt_test"
command = ["./z.sh"]
"#,
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for want in [
        "error: invalid cron expression `0 0 * * * *`: expected 5 fields",
        " --> pipelines/nightly.toml:2:12",
        "error: unknown time zone `Europe/Berln`\n --> pipelines/nightly.toml:3:12",
        "error: unknown key `retires` in `[defaults]`\n --> pipelines/nightly.toml:7:1",
        "did you mean `retries`?",
        "invalid duration `ten seconds` for `retry_delay`",
        "unknown task `extract_dat` in `depends_on` of `dbt_run`\n  --> pipelines/nightly.toml:17:15",
        "error: dependency cycle: dbt_run → dbt_test → dbt_run",
        "error: duplicate task id `dbt_test`\n  --> pipelines/nightly.toml:25:6",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Every command that loads the project refuses the broken pipeline the same way.
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pipelines/nightly.toml:2:12"));
}

#[test]
fn malformed_toml_and_bad_settings() {
    let p = TestProject::new();
    p.file("pipelines/a.toml", "name = \"a\nschedule = 1\n");
    p.file(
        "nightshift.toml",
        "paralelism = 4\n[pools]\nw = { slots = 0 }\n",
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("error: invalid TOML"), "{err}");
    assert!(err.contains(" --> pipelines/a.toml:1:"), "{err}");
    assert!(
        err.contains("unknown key `paralelism` in nightshift.toml\n --> nightshift.toml:1:1"),
        "{err}"
    );
    assert!(err.contains("did you mean `parallelism`?"), "{err}");
    assert!(err.contains("pool `w` must have at least 1 slot"), "{err}");
}

#[test]
fn a_bad_file_affects_only_its_pipeline() {
    let p = TestProject::example();
    p.file("pipelines/broken.toml", "schedule = \"nope\"\n");
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("pipelines/broken.toml"));
}

#[test]
fn init_scaffolds_a_valid_project() {
    let p = TestProject::example();
    let out = p.run(&["validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "ok: nightly (4 tasks, schedule `0 0 * * *` in UTC)"
    );
    // A second init changes nothing.
    let before = p.read("pipelines/nightly.toml");
    p.file(
        "pipelines/nightly.toml",
        &before.replace("retries = 2", "retries = 1"),
    );
    let out = p.run(&["init"]);
    assert!(out.status.success());
    assert!(p.read("pipelines/nightly.toml").contains("retries = 1"));
}

#[test]
fn run_prints_the_seed_lines_and_records_the_run() {
    let p = TestProject::example();
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l[..l.find(" (").unwrap()].to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "Task extract_data: SUCCESS",
            "Task dbt_run: SUCCESS",
            "Task dbt_test: SUCCESS",
            "Task notify: SUCCESS"
        ]
    );
    for l in stdout(&out).lines() {
        let t = &l[l.find(" (").unwrap() + 2..l.find(')').unwrap()];
        assert_eq!(t.len(), 16, "time as YYYY-MM-DD HH:MM in {l}");
        // Then how long the try took: ` in 4.2s`.
        let took = l.split(") in ").nth(1).unwrap_or_default();
        assert!(took.ends_with('s'), "a duration in {l}");
    }
    let runs = p.runs("nightly");
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["run_id"], "20240602_0000");
    assert_eq!(r["ds"], "2024-06-01");
    assert_eq!(r["state"], "SUCCESS");
    assert_eq!(r["trigger"], "manual");
    assert_eq!(r["data_interval_start"], "2024-06-01T00:00:00Z");
    assert_eq!(r["data_interval_end"], "2024-06-02T00:00:00Z");
    // The example extract reports rows_loaded through NIGHTSHIFT_METRICS: 20240601 % 97 + 100.
    let expected_rows = 20240601 % 97 + 100;
    assert_eq!(r["rows_loaded"], expected_rows);
    assert_eq!(
        p.read("data/raw/orders/dt=2024-06-01/orders.csv")
            .lines()
            .count() as i64,
        expected_rows + 1
    );
    let doc = p.tasks("20240602_0000");
    assert_eq!(
        task(&doc, "extract_data")["tries"][0]["metrics"]["rows_loaded"],
        expected_rows
    );

    // Running a finished interval again needs --rerun; history is kept, no run is added.
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("already finished: SUCCESS"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["run", "nightly", "--date", "2024-06-01", "--rerun"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(p.runs("nightly").len(), 1);
    let doc = p.tasks("20240602_0000");
    let tries = task(&doc, "extract_data")["tries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        tries
            .iter()
            .map(|t| t["try_number"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        p.runs("nightly")[0]["rows_loaded"],
        expected_rows,
        "a rerun replaces, never adds"
    );

    // Logs of each try are kept.
    let out = p.run(&["logs", "20240602_0000", "extract_data", "--try", "1"]);
    assert!(stdout(&out).contains("[out] extracted"), "{}", stdout(&out));
}

#[test]
fn bad_flags_get_clear_errors() {
    let p = TestProject::example();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "nightly", "--date", "2024-13-01"],
            "invalid --date `2024-13-01`: write a date as YYYY-MM-DD",
        ),
        (
            &["run", "nightlly", "--date", "2024-06-01"],
            "no pipeline `nightlly` in this project",
        ),
        (
            &[
                "backfill",
                "nightly",
                "--from",
                "2024-06-03",
                "--to",
                "2024-06-01",
            ],
            "--to 2024-06-01 is before --from 2024-06-03",
        ),
        (
            &[
                "up",
                "--simulate-from",
                "yesterday",
                "--simulate-until",
                "2024-06-04T01:00:00Z",
            ],
            "invalid --simulate-from `yesterday`",
        ),
        (&["tasks", "19990101_0000"], "no run `19990101_0000`"),
        (&["logs", "19990101_0000", "x"], "no run `19990101_0000`"),
    ];
    for (args, want) in cases {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert!(out.status.success());
    let out = p.run(&["logs", "20240602_0000", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("has no task `nope`; its tasks: extract_data, dbt_run, dbt_test, notify"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn next_shows_dst_behaviour() {
    let p = TestProject::new();
    let task = "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n";
    p.file("pipelines/berlin.toml", &format!("schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nstart_date = \"2024-01-01\"\n{task}"));
    p.file("pipelines/ny.toml", &format!("schedule = \"30 1 * * *\"\ntimezone = \"America/New_York\"\nstart_date = \"2024-01-01\"\n{task}"));
    let out = p.run(&[
        "next",
        "berlin",
        "-n",
        "2",
        "--after",
        "2024-03-30T12:00:00Z",
    ]);
    let text = squash(&stdout(&out));
    assert!(text.contains("2024-03-31 03:00 CEST 20240331_0300 2024-03-30 [2024-03-30T01:30:00Z, 2024-03-31T01:00:00Z) DST: the scheduled local time does not exist"), "{text}");
    assert!(
        text.contains("2024-04-01 02:30 CEST 20240401_0230"),
        "{text}"
    );
    let out = p.run(&[
        "next",
        "berlin",
        "-n",
        "1",
        "--after",
        "2024-10-26T12:00:00Z",
    ]);
    assert!(squash(&stdout(&out)).contains("2024-10-27 02:30 CEST 20241027_0230 2024-10-26 [2024-10-26T00:30:00Z, 2024-10-27T00:30:00Z) DST: this local time occurs twice; fires once, at the first"), "{}", stdout(&out));
    let out = p.run(&["next", "ny", "-n", "2", "--after", "2024-11-02T12:00:00Z"]);
    let text = squash(&stdout(&out));
    assert!(
        text.contains("2024-11-03 01:30 EDT 20241103_0130"),
        "{text}"
    );
    assert!(text.contains("2024-11-04 01:30 EST 20241104_0130 2024-11-03 [2024-11-03T05:30:00Z, 2024-11-04T06:30:00Z)"), "{text}");
}

#[test]
fn secrets_are_masked_in_try_logs() {
    let p = TestProject::new();
    // A listed secret, and a database connection's password: both masked.
    p.file(
        "nightshift.toml",
        "secrets = [\"SHOP_TOKEN\"]\n[connections.wh]\nkind = \"postgres\"\nurl = \"postgresql://loader@db/wh\"\npassword_env = \"WH_PASSWORD\"\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"leaky\"\ncommand = [\"sh\", \"-c\", \"echo token=$SHOP_TOKEN; echo \\\"$SHOP_TOKEN\\\" >&2; echo pw=$WH_PASSWORD\"]\n"),
    );
    let out = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("SHOP_TOKEN", "s3cr3t-v4lue")
        .env("WH_PASSWORD", "wh-pa55word")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stdout(&p.run(&["logs", "20240602_0000", "leaky"]));
    assert!(log.contains("[out] token=***"), "{log}");
    assert!(log.contains("[err] ***"), "{log}");
    assert!(log.contains("[out] pw=***"), "{log}");
    assert!(
        !log.contains("s3cr3t-v4lue") && !log.contains("wh-pa55word"),
        "{log}"
    );
}

/// `pipelines` lists each pipeline with its schedule, next run and latest runs (as JSON with
/// the API's field names), and `completions` prints a script for the shell.
#[test]
fn pipelines_are_listed_and_completions_are_printed() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"t\"\ncommand = [\"false\"]\n"),
    );
    p.file(
        "pipelines/q.toml",
        &(daily("q", "2024-06-01") + "[[task]]\nid = \"t\"\ncommand = [\"true\"]\n"),
    );
    assert_eq!(
        p.run(&["run", "p", "--date", "2024-06-01"]).status.code(),
        Some(1)
    );
    assert!(p.run(&["pause", "q"]).status.success());
    let doc = p.json(&["pipelines", "--json"]);
    let list = doc["pipelines"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "p");
    assert_eq!(list[0]["schedule"], "0 0 * * *");
    assert_eq!(list[0]["last_finished_run"]["state"], "FAILED");
    assert_eq!(list[0]["last_finished_run"]["ds"], "2024-06-01");
    assert_eq!(list[1]["paused"], true);
    assert!(list[1]["last_run"].is_null());
    let table = stdout(&p.run(&["pipelines"]));
    assert!(
        table.contains("20240602_0000 FAILED") && table.contains("paused"),
        "{table}"
    );

    let bash = p.run(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = stdout(&bash);
    assert!(
        script.contains("complete -F") && script.contains("backfill"),
        "{script}"
    );
    let bad = p.run(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));

    let version = stdout(&p.run(&["--version"]));
    assert!(
        version.starts_with("nightshift ") && version.contains("(commit "),
        "{version}"
    );
}

/// A project moved with `mv` serves its old logs in the CLI and the UI: the store keeps
/// paths relative to the project (and a store from before, with absolute paths, is
/// migrated).
#[test]
fn a_moved_project_serves_its_old_logs() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"old\"\ncommand = [\"echo\", \"hello from old\"]\n\n[[task]]\nid = \"new\"\ncommand = [\"echo\", \"hello from new\"]\n"),
    );
    assert!(
        p.run(&["run", "p", "--date", "2024-06-01"])
            .status
            .success()
    );
    // As a store written before relative paths: one absolute path, migration 10 not applied.
    {
        let db = rusqlite::Connection::open(p.path().join(".nightshift/nightshift.db")).unwrap();
        let rel: String = db
            .query_row(
                "SELECT log_path FROM task_tries WHERE task_id = 'new'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            rel.starts_with(".nightshift/logs/"),
            "stored relative: {rel}"
        );
        db.execute(
            "UPDATE task_tries SET log_path = ?1 || '/' || log_path WHERE task_id = 'old'",
            [p.path().to_string_lossy()],
        )
        .unwrap();
        db.execute("DELETE FROM schema_migrations WHERE version = 10", [])
            .unwrap();
    }
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("moved-project");
    assert!(
        Command::new("mv")
            .arg(p.path())
            .arg(&to)
            .status()
            .unwrap()
            .success()
    );
    let at = |args: &[&str]| {
        Command::new(bin())
            .arg("--project")
            .arg(&to)
            .args(args)
            .output()
            .unwrap()
    };
    for task in ["old", "new"] {
        let out = at(&["logs", "20240602_0000", task]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("hello from {task}")),
            "{}",
            stdout(&out)
        );
    }
    let mut up = Command::new(bin())
        .arg("--project")
        .arg(&to)
        .args(["up", "--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(moved.path().join("up.stderr")).unwrap())
        .spawn()
        .unwrap();
    let url = served_url(&moved.path().join("up.stderr"));
    for task in ["old", "new"] {
        let mut r = http()
            .get(format!(
                "{url}/api/v1/pipelines/p/runs/20240602_0000/tasks/{task}/tries/1/log"
            ))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.body_mut().read_to_string().unwrap();
        assert!(text.contains(&format!("hello from {task}")), "{text}");
    }
    sigkill(&mut up);
}

/// `validate --json` and `next --json` for tools; a bad cron field is named with its range,
/// and a mistyped zone gets a did-you-mean.
#[test]
fn validate_and_next_speak_json_and_name_what_is_wrong() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        "schedule = \"0 25 * * *\"\ntimezone = \"Europe/Berln\"\nstart_date = \"2024-06-01\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
    );
    let out = p.run(&["validate", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    let problems = doc["problems"].as_array().unwrap();
    let zone = problems.iter().find(|d| d["line"] == 2).unwrap();
    assert_eq!(zone["help"], "did you mean `Europe/Berlin`?");
    assert_eq!(
        (zone["file"].as_str(), zone["column"].as_u64()),
        (Some("pipelines/p.toml"), Some(12))
    );
    let cron = problems.iter().find(|d| d["line"] == 1).unwrap();
    assert!(
        cron["message"]
            .as_str()
            .unwrap()
            .contains("the hour field `25`"),
        "{cron}"
    );

    p.file(
        "pipelines/p.toml",
        "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nstart_date = \"2024-06-01\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
    );
    assert_eq!(p.json(&["validate", "--json"])["ok"], true);
    let next = p.json(&[
        "next",
        "p",
        "-n",
        "2",
        "--after",
        "2024-03-30T00:00:00Z",
        "--json",
    ]);
    assert_eq!(next[0]["ds"], "2024-03-29");
    assert_eq!(next[1]["dst_note"], "skipped", "{next}");
    assert_eq!(next[1]["fire_at"], "2024-03-31T01:00:00Z");
}

/// `up --log-format json` (or NIGHTSHIFT_LOG_FORMAT=json) writes one JSON object per line,
/// on stdout and on stderr.
#[test]
fn up_with_json_logs_writes_one_json_object_per_line() {
    for (args, env) in [(vec!["--log-format", "json"], None), (vec![], Some("json"))] {
        let p = TestProject::example();
        let mut cmd = p.cmd(
            &[
                &[
                    "up",
                    "--simulate-from",
                    "2024-06-01T23:00:00Z",
                    "--simulate-until",
                    "2024-06-02T01:00:00Z",
                ][..],
                &args[..],
            ]
            .concat(),
        );
        if let Some(v) = env {
            cmd.env("NIGHTSHIFT_LOG_FORMAT", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let (so, se) = (stdout(&out), stderr(&out));
        let mut events = 0;
        for l in so.lines().chain(se.lines()) {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            events += usize::from(v["event"] == "task_ended");
        }
        assert!(events >= 4, "{so}");
        assert!(so.contains(r#""event":"run_ended""#), "{so}");
    }
}

/// On a terminal, diagnostics are coloured like cargo's, unless NO_COLOR is set; in a pipe
/// they are plain.
#[test]
fn diagnostics_are_coloured_on_a_terminal_unless_no_color() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        "schedule = \"0 25 * * *\"\nstart_date = \"2024-06-01\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
    );
    // `script` gives the command a pseudo-terminal.
    let on_tty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args(["-qec"])
            .arg(format!(
                "{} --project {} validate",
                bin().display(),
                p.path().display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        stdout(&c.output().unwrap())
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains("\u{1b}[") && coloured.contains("the hour field"),
        "{coloured:?}"
    );
    let plain = on_tty(Some("1"));
    assert!(
        !plain.contains("\u{1b}[") && plain.contains("the hour field"),
        "{plain:?}"
    );
    let piped = p.run(&["validate"]);
    assert!(!stderr(&piped).contains('\u{1b}'));
}

/// On a terminal the backfill bar shows elapsed time, the time left and the ds being run,
/// counting from the store.
#[test]
fn the_backfill_bar_shows_elapsed_eta_and_the_current_ds() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"t\"\ncommand = [\"sleep\", \"1.5\"]\n"),
    );
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --project {} backfill p --from 2024-06-01 --to 2024-06-03",
            bin().display(),
            p.path().display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("elapsed") && text.contains("left"),
        "{text:?}"
    );
    assert!(
        text.contains("ds 2024-06-0") && text.contains("running"),
        "{text:?}"
    );
    assert!(
        text.contains("3 run(s), 0 failed, 0 unfinished"),
        "{text:?}"
    );
}

/// The first hour, as a new user meets it: `up` on the scaffold, whose start_date lies far
/// back, creates at most `catchup_limit` runs, says once which range it left to a
/// backfill, prints a screenful at most, and raises no deadline alarm for history.
#[test]
fn up_on_a_fresh_project_catches_up_boundedly_and_quietly() {
    let p = TestProject::example();
    let up = p.spawn(&["up", "--bind", "127.0.0.1:0"], &[], "up");
    p.wait_for("the catch-up runs", || p.runs_all("nightly").len() >= 100);
    p.wait_for("some runs to finish", || {
        p.runs_all("nightly")
            .iter()
            .filter(|r| r["state"] == "SUCCESS")
            .count()
            >= 10
    });
    sigterm(&up);
    let mut up = up;
    assert!(up.wait().unwrap().success(), "{}", p.read("up.stderr"));

    let runs = p.runs_all("nightly");
    assert_eq!(runs.len(), 100, "catchup_limit's default");
    let printed = p.read("up.stdout") + &p.read("up.stderr");
    let lines = printed.lines().count();
    assert!(lines <= 20, "{lines} lines:\n{printed}");
    // Only the latest interval's run is judged against the deadline (06:00 has passed
    // today when the test runs after it: then that one run may be missed, and say so).
    let latest = runs.last().unwrap()["run_id"].as_str().unwrap().to_owned();
    for line in printed
        .lines()
        .filter(|l| l.to_lowercase().contains("deadline"))
    {
        if !line.contains("catchup_limit") {
            assert!(line.contains(&latest), "deadline noise: {line}\n{printed}");
        }
    }
    let oldest = runs[0]["ds"].as_str().unwrap().to_owned();
    let last_skipped = jiff::civil::Date::strptime("%Y-%m-%d", &oldest)
        .unwrap()
        .yesterday()
        .unwrap();
    assert!(
        printed.contains(&format!(
            "nightshift backfill nightly --from 2024-06-01 --to {last_skipped}"
        )),
        "{printed}"
    );
    // No deadline alert for any run but the latest scheduled one.
    let alerts = p.json(&["alerts", "--json", "--limit", "1000"]);
    for a in alerts.as_array().unwrap() {
        if a["kind"].as_str().unwrap().starts_with("deadline") {
            assert_eq!(a["run_id"], latest.as_str(), "{a}");
        }
    }
}
