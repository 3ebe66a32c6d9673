//! The extract kind end to end: a real SQLite source, real Parquet partitions.
use crate::support::*;

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
    // Relative to the project (the test runs from elsewhere), like every project path.
    let out = p.run(&[
        "shop",
        "--db",
        "source/shop.db",
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
            .is_some_and(|r| r["state"] == "SUCCESS")
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
        err.contains("unknown query parameter `:begin`\n  --> pipelines/nightly.toml:19:41"),
        "{err}"
    );
}

const SENSOR: &str = r#"
[[task]]
id = "wait_for_batch"
kind = "sensor"
connection = "shop"
sql = "SELECT COUNT(*) FROM source_batches WHERE business_date = :ds"
poke_interval = "200ms"
timeout = "TIMEOUT"

[[task]]
id = "other"
command = ["sh", "-c", "date +%s%N > other.txt"]
"#;

fn sensor_project(day: &str, timeout: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "parallelism = 1\n[connections.shop]\nkind = \"sqlite\"\npath = \"source/shop.db\"\n",
    );
    let db = p.path().join("source/shop.db");
    let out = p.run(&[
        "shop",
        "--db",
        db.to_str().unwrap(),
        "--from",
        day,
        "--to",
        day,
        "--orders",
        "300",
        "--hold-batch",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let extract = EXTRACT.replace("retries = 1", "depends_on = [\"wait_for_batch\"]");
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", day) + &SENSOR.replace("TIMEOUT", timeout) + &extract),
    );
    p
}

#[test]
fn a_sensor_that_times_out_fails_the_run_and_writes_no_partition() {
    let day = "2024-06-01";
    let p = sensor_project(day, "1s");
    let out = p.run(&["run", "nightly", "--date", day]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = p.tasks("20240602_0000");
    let sensor = task(&doc, "wait_for_batch");
    assert_eq!(sensor["state"], "FAILED");
    let tries = sensor["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 1, "pokes are not tries: {sensor}");
    let err = tries[0]["error"].as_str().unwrap();
    assert!(
        err.starts_with(
            "sensor timed out after 1s waiting for `SELECT COUNT(*) FROM source_batches"
        ),
        "{err}"
    );
    assert_eq!(task(&doc, "extract_data")["state"], "UPSTREAM_FAILED");
    assert_eq!(doc["run"]["state"], "FAILED");
    assert!(
        !p.path().join("data/raw/orders").exists(),
        "no empty partition was written"
    );
}

#[test]
fn a_sensor_waits_without_a_slot_and_the_run_succeeds_when_the_batch_arrives() {
    let day = "2024-06-01";
    let p = sensor_project(day, "60s");
    let mut run = p.spawn(&["run", "nightly", "--date", day], &[], "run");
    // With one slot, `other` can only run if the waiting sensor does not hold it.
    p.wait_for("the independent task", || {
        p.path().join("other.txt").exists()
    });
    assert!(
        run.try_wait().unwrap().is_none(),
        "still waiting for the batch"
    );
    let db = p.path().join("source/shop.db");
    let out = p.run(&[
        "shop",
        "--db",
        db.to_str().unwrap(),
        "--from",
        day,
        "--to",
        day,
        "--release",
    ]);
    assert!(out.status.success());
    let status = run.wait().unwrap();
    assert!(status.success(), "{}", p.read("run.stderr"));
    let doc = p.tasks("20240602_0000");
    assert_eq!(task(&doc, "wait_for_batch")["state"], "SUCCESS");
    assert_eq!(
        task(&doc, "wait_for_batch")["tries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(parquet_rows(&p.path().join(format!("data/raw/orders/dt={day}"))) > 0);
}

/// A PostgreSQL source through the CLI: a sensor waits on it, the extract reads the
/// interval's rows from one snapshot, and the URL comes from the environment.
#[test]
fn a_postgres_source_is_sensed_and_extracted_through_the_cli() {
    let pg = nightshift_store::postgres::testing::TestCluster::start()
        .expect("PostgreSQL (tools/testdeps/install)");
    let url = pg.database("shop").unwrap();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, order_ts timestamptz NOT NULL, amount numeric(10, 2), tags text[]);
         INSERT INTO orders SELECT i, timestamptz '2024-06-01 00:00:00+00' + i * interval '1 minute', i / 100.0, ARRAY['a', 'b']
         FROM generate_series(0, 2999) AS i;
         CREATE TABLE batches (business_date date PRIMARY KEY);
         INSERT INTO batches VALUES ('2024-06-01');",
    )
    .unwrap();
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[connections.shop]\nkind = \"postgres\"\nurl_env = \"SHOP_URL\"\n",
    );
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01")
            + r#"
[[task]]
id = "wait_for_batch"
kind = "sensor"
connection = "shop"
sql = "SELECT COUNT(*) FROM batches WHERE business_date = :ds"
poke_interval = "1s"
timeout = "30s"

[[task]]
id = "extract_data"
kind = "extract"
connection = "shop"
depends_on = ["wait_for_batch"]

[[task.table]]
name = "orders"
sql = "SELECT * FROM orders WHERE order_ts >= :start AND order_ts < :end"

[[task]]
id = "load_orders"
kind = "load"
connection = "shop"
tables = ["orders"]
schema = "warehouse"
depends_on = ["extract_data"]
"#),
    );
    let warehouse_rows = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT COUNT(*) FROM warehouse.orders WHERE ds = '2024-06-01'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    for args in [
        &["--date", "2024-06-01"][..],
        &["--date", "2024-06-01", "--rerun"],
    ] {
        let out = p
            .cmd(&[&["run", "nightly"][..], args].concat())
            .env("SHOP_URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        // 1,440 minutes of the day; the rest of the 3,000 minutes are the next days'.
        assert_eq!(
            parquet_rows(&p.path().join("data/raw/orders/dt=2024-06-01")),
            1440
        );
        // The rerun replaced the warehouse's ds instead of adding to it.
        assert_eq!(warehouse_rows(&mut c), 1440);
    }
    // The run's rows_loaded counts the source's rows once (the extract's); the load reports
    // what it wrote and replaced. The rerun was a second try of each task.
    let run = &p.runs("nightly")[0];
    assert_eq!(run["rows_loaded"], 1440);
    let tasks = p.tasks(run["run_id"].as_str().unwrap());
    let tries = task(&tasks, "load_orders")["tries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(tries.len(), 2);
    let metrics = tries[1]["metrics"].to_string();
    assert!(
        metrics.contains("\"rows_written\":1440") && metrics.contains("\"rows_replaced\":1440"),
        "{metrics}"
    );

    // Without the variable, the try fails and says which variable to set.
    let out = p
        .cmd(&["run", "nightly", "--date", "2024-06-02"])
        .env_remove("SHOP_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let run = &p.runs("nightly")[1];
    assert_eq!(run["state"], "FAILED");
    let tasks = p.tasks(run["run_id"].as_str().unwrap());
    let error = task(&tasks, "wait_for_batch")["tries"][0]["error"].to_string();
    assert!(error.contains("SHOP_URL"), "{error}");
}

/// `shop --postgres` fills a PostgreSQL database with the same rows as `shop --db`.
#[test]
fn the_shop_on_postgres_holds_the_same_rows_as_on_sqlite() {
    let pg = nightshift_store::postgres::testing::TestCluster::start()
        .expect("PostgreSQL (tools/testdeps/install)");
    let url = pg.database("shop").unwrap();
    let p = TestProject::new();
    let db = p.path().join("shop.db");
    let days = [
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-02",
        "--orders",
        "300",
        "--bad-row",
    ];
    for target in [vec!["--db", db.to_str().unwrap()], vec!["--postgres", &url]] {
        let out = p.run(&[&["shop"][..], &target, &days, &["--hold-batch"]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        let out = p.run(
            &[
                &["shop"][..],
                &target,
                &["--from", "2024-06-02", "--to", "2024-06-02", "--release"],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for (table, key) in [
        ("customers", "CAST(customer_id AS TEXT) || country"),
        (
            "orders",
            "CAST(order_id AS TEXT) || CAST(customer_id AS TEXT) || status",
        ),
        (
            "order_items",
            "CAST(order_id * 10 + line_no AS TEXT) || CAST(product_id * 10 + quantity AS TEXT)",
        ),
        (
            "payments",
            "CAST(payment_id AS TEXT) || method || CAST(amount_cents AS TEXT)",
        ),
        ("source_batches", "CAST(orders AS TEXT)"),
    ] {
        let sql = format!("SELECT COUNT(*), SUM(length({key})) FROM {table}");
        let lite: (i64, i64) = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        let row = c
            .query_one(
                &format!("SELECT COUNT(*), SUM(length({key}))::bigint FROM {table}"),
                &[],
            )
            .unwrap();
        assert_eq!(lite, (row.get(0), row.get(1)), "{table}");
    }
    // Timestamps are timestamps there: the same instants as SQLite's text.
    let first: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT order_ts FROM orders ORDER BY order_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let pg_first: String = c
        .query_one("SELECT to_char(order_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM orders ORDER BY order_id LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(first, pg_first);
    // A password on the command line is refused: it would show in the process list.
    let out = p.run(&[
        "shop",
        "--postgres",
        "postgresql://u:secret@localhost/shop",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-01",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PGPASSWORD"), "{}", stderr(&out));
}
