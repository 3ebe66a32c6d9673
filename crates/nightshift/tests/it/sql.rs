//! The sql kind end to end: statements on a real SQLite database, the run's keys bound, one
//! transaction per try.
use crate::support::*;

fn project(statements: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[connections.warehouse]\nkind = \"sqlite\"\npath = \"warehouse.db\"\n",
    );
    let conn = rusqlite::Connection::open(p.path().join("warehouse.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE loads (ds TEXT NOT NULL, run_id TEXT NOT NULL, note TEXT);
         INSERT INTO loads VALUES ('2024-06-01', 'an earlier run', NULL);
         INSERT INTO loads VALUES ('2024-05-31', 'another day', NULL);",
    )
    .unwrap();
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01")
            + "[[task]]\nid = \"record_load\"\nkind = \"sql\"\nconnection = \"warehouse\"\n"
            + statements),
    );
    p
}

fn loads(p: &TestProject) -> Vec<(String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(p.path().join("warehouse.db")).unwrap();
    let mut s = conn
        .prepare("SELECT ds, run_id, note FROM loads ORDER BY ds, run_id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_sql_task_replaces_its_days_rows_with_the_keys_bound() {
    // The note would end the statement if it were spliced into the text; bound, it is a value.
    let p = project(
        "sql = [\n  \"DELETE FROM loads WHERE ds = :ds\",\n  \"INSERT INTO loads (ds, run_id, note) VALUES (:ds, :run_id, :run_id || ''' OR 1=1 --')\",\n]\n",
    );
    for _ in 0..2 {
        let out = p.run(&["run", "nightly", "--date", "2024-06-01", "--rerun"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        loads(&p),
        [
            ("2024-05-31".into(), "another day".into(), None),
            (
                "2024-06-01".into(),
                "20240602_0000".into(),
                Some("20240602_0000' OR 1=1 --".into())
            ),
        ],
        "the day's row replaced, the other day untouched, a rerun changes nothing more"
    );
    let doc = p.tasks("20240602_0000");
    let t = task(&doc, "record_load");
    let last = t["tries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "SUCCESS", "{doc}");
    assert_eq!(last["metrics"]["rows_affected"], 2, "{doc}");
}

#[test]
fn a_failing_statement_changes_nothing_and_says_which_statement() {
    let p = project(
        "sql = [\"DELETE FROM loads WHERE ds = :ds\", \"INSERT INTO load_log (ds) VALUES (:ds)\"]\n",
    );
    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert!(!out.status.success());
    let doc = p.tasks("20240602_0000");
    let err = task(&doc, "record_load")["tries"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("statement 2"), "{err}");
    assert!(err.contains("no such table: load_log"), "{err}");
    assert_eq!(
        loads(&p).len(),
        2,
        "the DELETE was rolled back with the failed INSERT"
    );
}

#[test]
fn bad_sql_settings_are_reported_with_their_location() {
    let p = project("sql = \"DELETE FROM loads WHERE ds = :day\"\n");
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown query parameter `:day`"), "{err}");
    assert!(err.contains("pipelines/nightly.toml:17:"), "{err}");
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01")
            + "[[task]]\nid = \"record_load\"\nkind = \"sql\"\nconnection = \"warehous\"\n"),
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("did you mean `warehouse`?"), "{err}");
    assert!(err.contains("sql task `record_load` has no `sql`"), "{err}");
}
