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
    let args = serde_json::json!({"exports": exports, "ds": ds}).to_string();
    let Some((exe, rest)) = req.dbt_argv.split_first() else {
        return Err(werr(&root, "no dbt command"));
    };
    let mut child = Command::new(exe)
        .args(rest)
        .arg("--args")
        .arg(&args)
        .envs(req.dbt_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| werr(&root, format!("cannot start `{exe}`: {e}")))?;
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
    let status = child.wait().map_err(|e| werr(&root, e))?;
    if !status.success() {
        return Err(werr(
            &root,
            format!("dbt run-operation nightshift_export failed ({status}); nothing was published"),
        ));
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
