//! Write-audit-publish: the tested ds partition of each dbt output is exported into a hidden
//! staging folder (one `dbt run-operation nightshift_export` for all outputs), described by a
//! `_manifest.json`, and only then swapped into `published/<output>/dt=<ds>/`. Readers see
//! the previous published partition until the swap, and never an untested one: the engine
//! refuses to start a publish when a dbt test of the run failed.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nightshift_core::kinds::PublishRequest;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::{Error, PartitionWriter, swap_in};

fn werr(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Write {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Exports the ds partition of every output into its staging file with
/// `dbt run-operation nightshift_export` (DuckDB writes the Parquet).
fn export_with_dbt(
    req: &PublishRequest,
    exports: &[serde_json::Value],
    ds: &str,
    root: &std::path::Path,
    log: &mut dyn Write,
) -> Result<(), Error> {
    let args = serde_json::json!({"exports": exports, "ds": ds}).to_string();
    let Some((exe, rest)) = req.dbt_argv.split_first() else {
        return Err(werr(root, "no dbt command"));
    };
    let mut cmd = Command::new(exe);
    if let Some(dir) = &req.dbt_cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .args(rest)
        .arg("--args")
        .arg(&args)
        .envs(req.dbt_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| werr(root, format!("cannot start `{exe}`: {e}")))?;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            // dbt's JSON log: keep the message.
            let text = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("info")?.get("msg")?.as_str().map(str::to_owned))
                .unwrap_or(line);
            let _ = writeln!(log, "{text}");
        }
    }
    let status = child.wait().map_err(|e| werr(root, e))?;
    if !status.success() {
        return Err(werr(
            root,
            format!("dbt run-operation nightshift_export failed ({status}); nothing was published"),
        ));
    }
    Ok(())
}

/// Reads the ds partition of every output from a PostgreSQL warehouse into its staging file,
/// all in one snapshot.
#[cfg(feature = "postgres")]
fn read_from_warehouse(
    req: &PublishRequest,
    w: &nightshift_core::kinds::Warehouse,
    connection: &nightshift_core::project::Connection,
    staged: &mut [(String, PartitionWriter)],
) -> Result<(), Error> {
    let params = crate::Params {
        keys: &req.keys,
        extracted_at: "",
        lineage: false,
    };
    crate::on_postgres(connection, &params, |tx| {
        for (output, writer) in staged.iter_mut() {
            let sql = format!(
                "SELECT * FROM {}.{} WHERE {} = :ds",
                crate::load::ident(&w.schema),
                crate::load::ident(output),
                crate::load::ident(&w.partition_column)
            );
            crate::postgres::read_into(tx, &sql, &params, writer).map_err(|message| {
                Error::Table {
                    table: output.clone(),
                    message,
                }
            })?;
            writer.finish()?;
        }
        Ok(())
    })
}

#[cfg(not(feature = "postgres"))]
fn read_from_warehouse(
    _: &PublishRequest,
    _: &nightshift_core::kinds::Warehouse,
    _: &nightshift_core::project::Connection,
    _: &mut [(String, PartitionWriter)],
) -> Result<(), Error> {
    Err(crate::without_postgres())
}

/// Publishes every output; returns (output, rows, partition) for each.
pub fn publish(
    req: &PublishRequest,
    clock: &dyn nightshift_core::clock::Clock,
    log: &mut dyn Write,
) -> Result<Vec<(String, i64, PathBuf)>, Error> {
    let ds = req.keys.ds_text();
    let root = PathBuf::from(&req.root);
    let mut staged = vec![];
    let mut exports = vec![];
    for o in &req.outputs {
        let w = PartitionWriter::new(&root.join(o), &ds)?;
        exports
            .push(serde_json::json!({"model": o, "path": w.staging_dir().join("part-0.parquet")}));
        staged.push((o.clone(), w));
    }
    match &req.warehouse {
        Some((w, connection)) => read_from_warehouse(req, w, connection, &mut staged)?,
        None => export_with_dbt(req, &exports, &ds, &root, log)?,
    }
    let published_at = clock.now().to_string();
    let mut out = vec![];
    for (o, w) in staged {
        let file = w.staging_dir().join("part-0.parquet");
        let f = std::fs::File::open(&file)
            .map_err(|e| werr(&file, format!("the export wrote nothing: {e}")))?;
        let rows = SerializedFileReader::new(f)
            .map_err(|e| werr(&file, e))?
            .metadata()
            .file_metadata()
            .num_rows();
        let manifest = serde_json::json!({
            "output": o,
            "run_id": req.keys.run_id,
            "ds": ds,
            "rows": rows,
            "checks": req.checks,
            "dbt_invocation_id": req.dbt_invocation_id,
            "published_at": published_at,
        });
        let mpath = w.staging_dir().join("_manifest.json");
        let mut mf = std::fs::File::create(&mpath).map_err(|e| werr(&mpath, e))?;
        mf.write_all(
            serde_json::to_string_pretty(&manifest)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(|e| werr(&mpath, e))?;
        mf.sync_all().map_err(|e| werr(&mpath, e))?;
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| werr(&file, e))?;
        let _ = writeln!(log, "{o}: {rows} rows ready for dt={ds}");
        out.push((o, rows, w));
    }
    let mut done = vec![];
    for (o, rows, w) in out {
        let partition = swap_in(w)?;
        let _ = writeln!(log, "{o}: published → {}", partition.display());
        done.push((o, rows, partition));
    }
    Ok(done)
}

/// Publishing from a real PostgreSQL warehouse.
#[cfg(all(test, feature = "postgres"))]
mod on_postgres {
    use nightshift_core::clock::SystemClock;
    use nightshift_core::kinds::{PublishRequest, Warehouse};
    use nightshift_store::postgres::testing::TestCluster;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use crate::postgres::on_postgres::request;

    #[test]
    fn a_warehouse_models_ds_partition_is_published_with_its_manifest() {
        let pg = TestCluster::start().expect("PostgreSQL (tools/testdeps/install)");
        let url = pg.database("wh").unwrap();
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(
            "CREATE SCHEMA analytics;
             CREATE TABLE analytics.fct_orders (order_id int, amount numeric(10, 2), dt date);
             INSERT INTO analytics.fct_orders SELECT i, i / 4.0, date '2024-05-31' + (i % 2) FROM generate_series(1, 101) AS i;",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = request(dir.path(), &url, "");
        let req = PublishRequest {
            outputs: vec!["fct_orders".into()],
            root: dir.path().join("published").to_string_lossy().into_owned(),
            dbt_argv: vec![],
            dbt_env: vec![],
            dbt_cwd: None,
            keys: keys.keys.clone(),
            checks: [("pass".to_owned(), 3)].into(),
            dbt_invocation_id: Some("inv-1".into()),
            warehouse: Some((
                Warehouse {
                    connection: "wh".into(),
                    schema: "analytics".into(),
                    partition_column: "dt".into(),
                },
                keys.connection.clone(),
            )),
        };
        let done = crate::publish(&req, &SystemClock, &mut std::io::sink()).unwrap();
        // Odd ids fall on 2024-06-01: 51 of the 101.
        assert_eq!(done[0].1, 51);
        let part = dir.path().join("published/fct_orders/dt=2024-06-01");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(part.join("_manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["rows"], 51);
        assert_eq!(manifest["checks"]["pass"], 3);
        let f = std::fs::File::open(part.join("part-0.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let names: Vec<String> = reader
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["order_id", "amount", "dt"],
            "the model's columns, no lineage"
        );

        // A model the warehouse does not have fails the publish, and nothing is swapped in.
        let mut missing = req.clone();
        missing.outputs = vec!["fct_orders".into(), "no_such_model".into()];
        c.batch_execute("DELETE FROM analytics.fct_orders").unwrap();
        let err = crate::publish(&missing, &SystemClock, &mut std::io::sink())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_model"), "{err}");
        let rows: i64 = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(part.join("part-0.parquet")).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows() as i64)
        .sum();
        assert_eq!(
            rows, 51,
            "the published partition is the earlier one, whole"
        );
    }
}
