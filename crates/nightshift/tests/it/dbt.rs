//! The dbt kind with real dbt (dbt-core + dbt-duckdb from tools/dbt/install), real
//! Parquet from a real SQLite source, and the reference dbt project.

use std::path::{Path, PathBuf};

use crate::support::*;

/// The pinned dbt the test command installs.
fn dbt() -> String {
    #[allow(clippy::disallowed_methods)]
    let from_env = std::env::var("NIGHTSHIFT_TEST_DBT").ok();
    let path = from_env
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/dbt"));
    assert!(
        path.exists(),
        "dbt is not installed at {}: run `bash tools/dbt/install` (tools/test.sh does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// The folder of the Python environment holding the pinned dbt.
pub fn venv() -> PathBuf {
    Path::new(&dbt())
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

const PIPELINE: &str = r#"
[[task]]
id = "extract_data"
kind = "extract"
connection = "shop"

[[task.table]]
name = "orders"
sql = "SELECT * FROM orders WHERE order_ts >= :start AND order_ts < :end"

[[task.table]]
name = "order_items"
sql = "SELECT i.* FROM order_items i JOIN orders o USING (order_id) WHERE o.order_ts >= :start AND o.order_ts < :end"

[[task.table]]
name = "payments"
sql = "SELECT * FROM payments WHERE paid_ts >= :start AND paid_ts < :end"

[[task.table]]
name = "customers"
sql = "SELECT * FROM customers WHERE created_at < :end"

[[task]]
id = "dbt_run"
kind = "dbt"
command = "run"
executable = "DBT"
depends_on = ["extract_data"]
pool = "warehouse"

[[task]]
id = "dbt_test"
kind = "dbt"
command = "test"
executable = "DBT"
depends_on = ["dbt_run"]
pool = "warehouse"

[[task]]
id = "publish"
kind = "publish"
executable = "DBT"
outputs = ["fct_daily_revenue", "fct_orders"]
depends_on = ["dbt_test"]
pool = "warehouse"

[[task]]
id = "notify"
kind = "notify"
depends_on = ["publish"]
"#;

/// The reference pipeline (extract → dbt run → dbt test → publish → notify) over the
/// shop source, with `retries` for every task.
pub fn reference_project(retries: u32) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[pools]\nwarehouse = { slots = 1 }\n[connections.shop]\nkind = \"sqlite\"\npath = \"source/shop.db\"\n[channels.ops_log]\nkind = \"log\"\n",
    );
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scaffold/reference/dbt"),
        &p.path().join("dbt"),
    );
    std::fs::create_dir_all(p.path().join("warehouse")).unwrap();
    p.file(
        "pipelines/nightly.toml",
        &(daily("nightly", "2024-06-01").replace("retries = 0", &format!("retries = {retries}"))
            + &PIPELINE.replace("DBT", &dbt())),
    );
    p
}

/// Adds a day of source data (`bad`: with a negative payment).
pub fn shop_day(p: &TestProject, day: &str, bad: bool) {
    let db = p.path().join("source/shop.db");
    let mut args = vec![
        "shop",
        "--db",
        db.to_str().unwrap(),
        "--from",
        day,
        "--to",
        day,
        "--orders",
        "300",
    ];
    if bad {
        args.push("--bad-row");
    }
    let out = p.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_failing_dbt_test_fails_the_run_after_the_models_were_built() {
    let p = reference_project(0);
    shop_day(&p, "2024-06-01", false);
    shop_day(&p, "2024-06-02", true);

    let out = p.run(&["run", "nightly", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let nodes = p.json(&["dbt-results", "20240602_0000", "--json"]);
    let nodes = nodes.as_array().unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["unique_id"] == "model.shop.fct_orders" && n["status"] == "success"),
        "{nodes:?}"
    );
    assert!(nodes.iter().any(|n| {
        n["unique_id"]
            .as_str()
            .unwrap()
            .starts_with("test.shop.reconcile_fct_orders_with_raw")
            && n["status"] == "pass"
    }));

    let manifest: serde_json::Value =
        serde_json::from_str(&p.read("published/fct_daily_revenue/dt=2024-06-01/_manifest.json"))
            .unwrap();
    assert_eq!(manifest["run_id"], "20240602_0000");
    assert_eq!(manifest["rows"], 1);
    assert_eq!(manifest["checks"]["pass"], 19);
    assert!(manifest["dbt_invocation_id"].is_string());
    let orders_manifest: serde_json::Value =
        serde_json::from_str(&p.read("published/fct_orders/dt=2024-06-01/_manifest.json")).unwrap();
    let raw_orders =
        p.tasks("20240602_0000")["tasks"][0]["tries"][0]["metrics"]["rows.orders"].clone();
    assert_eq!(
        orders_manifest["rows"], raw_orders,
        "every extracted order is published"
    );
    let published_before = p.read("published/fct_orders/dt=2024-06-01/_manifest.json");

    // A negative payment in the source: the models build, a data test fails.
    let out = p.run(&["run", "nightly", "--date", "2024-06-02"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = p.tasks("20240603_0000");
    assert_eq!(task(&doc, "dbt_run")["state"], "SUCCESS");
    assert_eq!(task(&doc, "dbt_test")["state"], "FAILED");
    let err = task(&doc, "dbt_test")["tries"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        err,
        "dbt: 0 error(s), 1 failed test(s)\nnon_negative_stg_payments_amount_cents: Got 1 result, configured to fail if != 0"
    );
    assert_eq!(
        task(&doc, "publish")["state"],
        "UPSTREAM_FAILED",
        "untested data is never published"
    );
    assert!(!p.path().join("published/fct_orders/dt=2024-06-02").exists());
    assert_eq!(
        p.read("published/fct_orders/dt=2024-06-01/_manifest.json"),
        published_before,
        "the previous good state stays"
    );
    assert_eq!(
        task(&doc, "notify")["state"],
        "SUCCESS",
        "notify runs after the failure"
    );
    assert_eq!(doc["run"]["state"], "FAILED");
    let notes: Vec<serde_json::Value> = p
        .read(".nightshift/notifications.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(notes.len(), 2, "one notification per run");
    let failed = &notes[1]["summary"];
    assert_eq!(failed["run_id"], "20240603_0000");
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["failed_checks"][0]
            .as_str()
            .unwrap()
            .starts_with("test.shop.non_negative_stg_payments_amount_cents"),
        "{failed}"
    );
    let nodes = p.json(&[
        "dbt-results",
        "20240603_0000",
        "--task",
        "dbt_test",
        "--json",
    ]);
    let failing: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "fail")
        .collect();
    assert_eq!(failing.len(), 1, "{nodes}");
    assert_eq!(failing[0]["failures"], 1);
}

/// Runs `nightshift demo` (with the test command's dbt, so the install step is skipped) in
/// a folder of `p`, and checks the seed's task lines of three nights and the backfill.
fn run_demo(p: &TestProject, args: &[&str], tasks: &[&str]) -> PathBuf {
    let demo = p.path().join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    std::os::unix::fs::symlink(venv(), demo.join(".venv")).unwrap();
    let out = std::process::Command::new(bin())
        .arg("demo")
        .arg(&demo)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for night in ["2024-06-02", "2024-06-03", "2024-06-04"] {
        for task in tasks {
            assert!(
                text.contains(&format!("Task {task}: SUCCESS ({night} 00:")),
                "{task} on {night}:\n{text}"
            );
        }
    }
    assert!(
        text.contains("Run nightly 20240601_0000 (ds 2024-05-31): SUCCESS"),
        "{text}"
    );
    demo
}

/// The README's first command, end to end (with the test command's dbt, so the install
/// step is skipped): three nights, a backfill, published partitions with manifests; run
/// again, it changes nothing.
#[test]
fn the_demo_runs_three_nights_and_a_backfill_and_is_safe_to_repeat() {
    let p = TestProject::new();
    let demo = run_demo(&p, &[], &["extract_data", "dbt_run", "dbt_test", "notify"]);
    // One full parse per run: its first dbt call; the others start from that parse.
    for run in ["20240602_0000", "20240603_0000"] {
        let full: Vec<&str> = ["check_freshness", "dbt_run", "dbt_test", "publish"]
            .into_iter()
            .filter(|t| {
                std::fs::read_to_string(
                    demo.join(format!(".nightshift/logs/nightly/{run}/{t}.try-1.log")),
                )
                .unwrap()
                .contains("Unable to do partial parsing")
            })
            .collect();
        assert_eq!(full, ["check_freshness"], "full parses in {run}");
    }
    let mut manifests = vec![];
    for ds in ["2024-05-31", "2024-06-01", "2024-06-02", "2024-06-03"] {
        for output in ["fct_daily_revenue", "fct_orders"] {
            let m = std::fs::read_to_string(
                demo.join(format!("published/{output}/dt={ds}/_manifest.json")),
            )
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            assert_eq!(v["ds"], ds);
            assert!(v["rows"].as_i64().unwrap() > 0);
            manifests.push(m);
        }
    }
    // rows_loaded of each run equals the source's rows for its interval.
    let runs: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new(bin())
            .args(["--project"])
            .arg(&demo)
            .args(["runs", "nightly", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let c = rusqlite::Connection::open(demo.join("source/shop.db")).unwrap();
    for r in runs.as_array().unwrap() {
        let ds = r["ds"].as_str().unwrap();
        let end = r["data_interval_end"].as_str().unwrap();
        let start = r["data_interval_start"].as_str().unwrap();
        let n: i64 = c
            .query_row(
                "SELECT (SELECT COUNT(*) FROM orders WHERE order_ts >= ?1 AND order_ts < ?2)
                      + (SELECT COUNT(*) FROM order_items i JOIN orders o USING (order_id) WHERE o.order_ts >= ?1 AND o.order_ts < ?2)
                      + (SELECT COUNT(*) FROM payments WHERE paid_ts >= ?1 AND paid_ts < ?2)
                      + (SELECT COUNT(*) FROM customers WHERE created_at < ?2)",
                rusqlite::params![start, end],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(r["rows_loaded"], n, "rows_loaded of ds {ds}");
    }
    let again = std::process::Command::new(bin())
        .arg("demo")
        .arg(&demo)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    let mut after = vec![];
    for ds in ["2024-05-31", "2024-06-01", "2024-06-02", "2024-06-03"] {
        for output in ["fct_daily_revenue", "fct_orders"] {
            after.push(
                std::fs::read_to_string(
                    demo.join(format!("published/{output}/dt={ds}/_manifest.json")),
                )
                .unwrap(),
            );
        }
    }
    assert_eq!(
        manifests, after,
        "a second demo changes no published partition"
    );

    // Backfill of a prior date, reprocessed: no duplicates in raw, the warehouse or published.
    let out = std::process::Command::new(bin())
        .arg("--project")
        .arg(&demo)
        .args([
            "backfill",
            "nightly",
            "--from",
            "2024-06-01",
            "--to",
            "2024-06-01",
            "--rerun",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Run nightly 20240602_0000 (ds 2024-06-01): SUCCESS"),
        "{}",
        stdout(&out)
    );
    let orders: i64 = c
        .query_row("SELECT COUNT(*) FROM orders WHERE order_ts >= '2024-06-01' AND order_ts < '2024-06-02'", [], |r| r.get(0))
        .unwrap();
    let raw = {
        let f =
            std::fs::File::open(demo.join("data/raw/orders/dt=2024-06-01/part-0.parquet")).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .metadata()
            .file_metadata()
            .num_rows()
    };
    assert_eq!(raw, orders, "raw");
    let python = demo.join(".venv/bin/python");
    let q = std::process::Command::new(&python)
        .arg("-c")
        .arg("import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print(c.execute(\"select count(*) from fct_orders where dt = date '2024-06-01'\").fetchone()[0], c.execute('select count(*) from fct_orders').fetchone()[0])")
        .arg(demo.join("warehouse/shop.duckdb"))
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", stderr(&q));
    let counts: Vec<i64> = stdout(&q)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(counts[0], orders, "warehouse partition");
    let all: i64 = c
        .query_row("SELECT COUNT(*) FROM orders WHERE order_ts >= '2024-05-31' AND order_ts < '2024-06-04'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        counts[1], all,
        "the warehouse holds each order once, over all four days"
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(demo.join("published/fct_orders/dt=2024-06-01/_manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m["rows"], orders, "published");
    assert_eq!(m["run_id"], "20240602_0000");
}

/// The reference pipeline on PostgreSQL (`demo --postgres`): the shop source and the
/// warehouse in a real PostgreSQL, dbt through dbt-postgres. Three nights and a backfill;
/// each published partition holds the source's orders of its ds; a rerun of a date leaves
/// the warehouse's rows for that ds as they were.
#[test]
fn the_demo_runs_on_postgres_and_a_rerun_keeps_the_warehouse_counts() {
    let pg = nightshift_store::postgres::testing::TestCluster::start()
        .expect("PostgreSQL (tools/testdeps/install)");
    let url = pg.database("demo").unwrap();
    let p = TestProject::new();
    let demo = run_demo(
        &p,
        &["--postgres", &url],
        &[
            "extract_data",
            "load_raw",
            "dbt_run",
            "dbt_test",
            "publish",
            "notify",
        ],
    );
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let count = |c: &mut postgres::Client, sql: &str, ds: &str| -> i64 {
        c.query_one(sql, &[&ds]).unwrap().get(0)
    };
    for ds in ["2024-05-31", "2024-06-01", "2024-06-02", "2024-06-03"] {
        let source = count(
            &mut c,
            "SELECT COUNT(*) FROM orders WHERE order_ts >= $1::text::date AND order_ts < $1::text::date + 1",
            ds,
        );
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                demo.join(format!("published/fct_orders/dt={ds}/_manifest.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(m["rows"], source, "published fct_orders of ds {ds}");
        assert_eq!(
            parquet_rows(&demo.join(format!("published/fct_orders/dt={ds}"))),
            source
        );
    }
    let raw = "SELECT COUNT(*) FROM raw.orders WHERE dt = $1::text::date";
    let fact = "SELECT COUNT(*) FROM analytics.fct_orders WHERE dt = $1::text::date";
    let before = (
        count(&mut c, raw, "2024-06-01"),
        count(&mut c, fact, "2024-06-01"),
    );
    let out = std::process::Command::new(bin())
        .arg("--project")
        .arg(&demo)
        .args(["run", "nightly", "--date", "2024-06-01", "--rerun"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        (
            count(&mut c, raw, "2024-06-01"),
            count(&mut c, fact, "2024-06-01")
        ),
        before,
        "the rerun replaced the ds in the warehouse"
    );
}

/// The reference project on PostgreSQL, as `demo --postgres` writes it, with short waits:
/// the shop and the warehouse in the database at `url`, dbt through dbt-postgres.
fn postgres_reference_project(url: &str) -> TestProject {
    let p = TestProject::new();
    let scaffold = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scaffold/reference");
    let read = |rel: &str| std::fs::read_to_string(scaffold.join(rel)).unwrap();
    p.file(
        "nightshift.toml",
        &read("postgres/nightshift.toml").replace("@URL@", url),
    );
    p.file(
        "pipelines/nightly.toml",
        &read("postgres/nightly.toml")
            .replace("poke_interval = \"5m\"", "poke_interval = \"1s\"")
            .replace("retry_delay = \"10s\"", "retry_delay = \"1s\""),
    );
    copy_dir(&scaffold.join("dbt"), &p.path().join("dbt"));
    let cfg: postgres::Config = url.parse().unwrap();
    let port = cfg.get_ports()[0];
    let db = cfg.get_dbname().unwrap();
    let user = cfg.get_user().unwrap();
    let profile = std::fs::read_to_string(p.path().join("dbt/profiles.yml")).unwrap()
        + &format!(
            "    postgres:\n      type: postgres\n      host: 127.0.0.1\n      port: {port}\n      user: {user}\n      password: ''\n      dbname: {db}\n      schema: analytics\n      threads: 2\n"
        );
    p.file("dbt/profiles.yml", &profile);
    std::os::unix::fs::symlink(venv(), p.path().join(".venv")).unwrap();
    p
}

/// The seed's failure modes on PostgreSQL: a day whose source batch is late waits and then
/// runs; a day with a bad source row fails its data test and publishes nothing, while the
/// day before stays published. (Backfill and reruns: the demo test above.)
#[test]
fn on_postgres_late_data_waits_and_a_failed_check_publishes_nothing() {
    let pg = nightshift_store::postgres::testing::TestCluster::start()
        .expect("PostgreSQL (tools/testdeps/install)");
    let url = pg.database("shop").unwrap();
    let p = postgres_reference_project(&url);
    let shop = |args: &[&str]| {
        let out = p.run(&[&["shop", "--postgres", &url, "--orders", "300"][..], args].concat());
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // Missing upstream data: the batch of 2024-06-01 is held.
    shop(&["--from", "2024-05-31", "--to", "2024-06-01", "--hold-batch"]);
    shop(&["--from", "2024-05-31", "--to", "2024-05-31", "--release"]);
    let mut run = p.spawn(&["run", "nightly", "--date", "2024-06-01"], &[], "late");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run waits for its batch"
    );
    assert!(
        !p.path().join("data/raw/orders/dt=2024-06-01").exists(),
        "nothing extracted yet"
    );
    shop(&["--from", "2024-06-01", "--to", "2024-06-01", "--release"]);
    let status = run.wait().unwrap();
    assert!(status.success(), "the run finished once the batch arrived");
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let source: i64 = c
        .query_one("SELECT COUNT(*) FROM orders WHERE order_ts >= '2024-06-01' AND order_ts < '2024-06-02'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        parquet_rows(&p.path().join("published/fct_orders/dt=2024-06-01")),
        source
    );

    // Partial failure: a negative payment fails the data test; publish refuses.
    shop(&["--from", "2024-06-02", "--to", "2024-06-02", "--bad-row"]);
    let out = p.run(&["run", "nightly", "--date", "2024-06-02"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("Task dbt_test: FAILED"), "{text}");
    assert!(
        !p.path().join("published/fct_orders/dt=2024-06-02").exists(),
        "nothing published"
    );
    assert_eq!(
        parquet_rows(&p.path().join("published/fct_orders/dt=2024-06-01")),
        source,
        "the day before stays published"
    );
}
