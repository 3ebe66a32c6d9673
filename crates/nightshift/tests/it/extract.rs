//! The extract kind end to end: a real SQLite source, real Parquet partitions.

use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::*;

fn parquet_rows(dir: &Path) -> i64 {
    let f = std::fs::File::open(dir.join("part-0.parquet")).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows() as i64)
        .sum()
}

fn source_count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

const EXTRACT: &str = r#"
[[task]]
id = "extract_data"
kind = "extract"
connection = "shop"
retries = 1
min_ratio = 0.5

[[task.table]]
name = "orders"
sql = "SELECT * FROM orders WHERE order_ts >= :start AND order_ts < :end"

[[task.table]]
name = "payments"
sql = "SELECT * FROM payments WHERE paid_ts >= :start AND paid_ts < :end"
"#;

fn shop_project(day: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[connections.shop]\nkind = \"sqlite\"\npath = \"source/shop.db\"\n",
    );
    let out = p.run(&[
        "shop",
        "--db",
        p.path().join("source/shop.db").to_str().unwrap(),
        "--from",
        day,
        "--to",
        day,
        "--orders",
        "1500",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.file("pipelines/nightly.toml", &(daily("nightly", day) + EXTRACT));
    p
}

fn assert_partitions_match_source(p: &TestProject, day: &str) {
    let db = p.path().join("source/shop.db");
    let orders = source_count(
        &db,
        &format!("SELECT COUNT(*) FROM orders WHERE order_ts >= '{day}' AND order_ts < '{day}~'"),
    );
    let payments = source_count(
        &db,
        &format!("SELECT COUNT(*) FROM payments WHERE paid_ts >= '{day}' AND paid_ts < '{day}~'"),
    );
    assert_eq!(
        parquet_rows(&p.path().join(format!("data/raw/orders/dt={day}"))),
        orders
    );
    assert_eq!(
        parquet_rows(&p.path().join(format!("data/raw/payments/dt={day}"))),
        payments
    );
    for table in ["orders", "payments"] {
        let entries: Vec<String> = std::fs::read_dir(p.path().join("data/raw").join(table))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            entries,
            [format!("dt={day}")],
            "one partition, nothing half-written beside it"
        );
    }
    let runs = p.runs("nightly");
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0]["rows_loaded"],
        orders + payments,
        "rows_loaded matches the source's counts"
    );
}

#[test]
fn a_retried_extract_and_a_rerun_never_double_a_partition() {
    let day = yesterday();
    let p = shop_project(&day);
    // The engine dies after the extract wrote its partitions but before it recorded the
    // outcome; the restart retries the extract, which replaces what the first try wrote.
    let mut up = p.spawn(
        &["up"],
        &[("NIGHTSHIFT_CRASH_AT", "before_outcome_commit:extract_data")],
        "crash",
    );
    let _ = up.wait();
    let mut up = p.spawn(&["up"], &[], "up");
    p.wait_for("the run", || {
        p.runs("nightly")
            .first()
            .is_some_and(|r| r["status"] == "SUCCESS")
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let run_id = p.runs("nightly")[0]["run_id"].as_str().unwrap().to_owned();
    let doc = p.tasks(&run_id);
    assert_eq!(
        task(&doc, "extract_data")["tries"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{doc}"
    );
    assert_partitions_match_source(&p, &day);
    // The whole run again: same partitions, same counts.
    let out = p.run(&["run", "nightly", "--date", &day, "--rerun"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_partitions_match_source(&p, &day);
}

#[test]
fn bad_extract_settings_are_reported_with_their_location() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[connections.shop]\nkind = \"sqlite\"\npath = \"source/shop.db\"\n",
    );
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01")
            + "[[task]]\nid = \"x\"\nkind = \"extract\"\nconnection = \"shopp\"\n[[task.table]]\nname = \"orders\"\nsql = \"SELECT * FROM orders WHERE ts >= :begin\"\n"),
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("unknown connection `shopp` in task `x`"),
        "{err}"
    );
    assert!(err.contains("did you mean `shop`?"), "{err}");
    assert!(
        err.contains("unknown query parameter `:begin`\n --> pipelines/nightly.toml:19:41"),
        "{err}"
    );
}
