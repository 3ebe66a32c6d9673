//! The `publish` kind (write-audit-publish): makes the tested ds partition of each output
//! visible under `<output>/<name>/dt=<ds>/` with a `_manifest.json`, atomically, and only
//! when no dbt test of the run failed.

use super::dbt::DbtSpec;
use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::{TriggerRule, valid_identifier};
use crate::run::RunKeys;
use crate::toml_reader::TableReader;

/// `<output>/<name>/dt=<ds>/` with a `_manifest.json`, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// dbt models to publish.
    pub outputs: Vec<String>,
    /// Folder of published partitions, relative to the project.
    pub output: String,
    /// The dbt project holding the audited models (for `dbt run-operation nightshift_export`).
    pub dbt: DbtSpec,
    /// A PostgreSQL warehouse to read the models from, instead of the dbt export (which
    /// only DuckDB can write as Parquet).
    pub warehouse: Option<Warehouse>,
}

/// Where a PostgreSQL warehouse keeps the models a publish reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Warehouse {
    /// A `postgres` connection of nightshift.toml (resolved in a request).
    pub connection: String,
    /// The schema dbt builds the models in (the target's `schema`).
    pub schema: String,
    /// The models' date column that names a partition (`dt` in the reference project).
    pub partition_column: String,
}

/// What the engine hands a publish child (`nightshift __publish REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublishRequest {
    pub outputs: Vec<String>,
    pub root: String,
    /// `dbt run-operation nightshift_export` and its flags, without `--args`.
    pub dbt_argv: Vec<String>,
    pub dbt_env: Vec<(String, String)>,
    /// Where dbt runs: the dbt project, as for the dbt kind.
    #[serde(default)]
    pub dbt_cwd: Option<String>,
    pub keys: RunKeys,
    /// dbt test results of this run: status → count.
    pub checks: std::collections::BTreeMap<String, u32>,
    pub dbt_invocation_id: Option<String>,
    /// Read the models from this PostgreSQL warehouse instead of exporting them with dbt.
    pub warehouse: Option<(Warehouse, crate::project::Connection)>,
}

fn read_spec(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &crate::project::ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<PublishSpec> {
    let outputs = r.string_list("outputs", true, diags).unwrap_or_default();
    if outputs.is_empty() {
        diags.push(
            Diagnostic::error(
                format!("publish task `{id}` has no `outputs`"),
                Some(r.span()),
            )
            .with_help("add `outputs = [\"fct_daily_revenue\"]`: the dbt models to publish"),
        );
        return None;
    }
    for o in &outputs {
        if !valid_identifier(&o.value) {
            diags.push(Diagnostic::error(
                format!("invalid output name `{}`", o.value),
                Some(o.span.clone()),
            ));
        }
    }
    let output = r
        .string("output", diags)
        .map(|o| o.value)
        .unwrap_or_else(|| "published".to_owned());
    if output.split('/').any(|c| c == "..") || output.starts_with('/') {
        diags.push(Diagnostic::error(
            format!("`output` of task `{id}` must stay inside the project"),
            r.raw("output").map(|v| v.span()),
        ));
    }
    let (project_dir, profiles_dir) = super::dbt::read_dirs(r, diags);
    let warehouse = r.has("connection").then(|| {
        let connection = super::read_connection(
            r,
            id,
            "publish",
            settings,
            (
                |c| matches!(c, crate::project::Connection::Postgres { .. }),
                "is a SQLite connection; a publish reads a PostgreSQL warehouse (DuckDB models are exported by dbt, with no connection)",
                "name the warehouse's `postgres` connection, or remove `connection` for a DuckDB project",
            ),
            diags,
        );
        let name = |key: &str, default: &str, diags: &mut Vec<Diagnostic>| match r.string(key, diags) {
            Some(v) if valid_identifier(&v.value) => v.value,
            Some(v) => {
                diags.push(Diagnostic::error(format!("invalid `{key}` `{}`", v.value), Some(v.span)));
                default.to_owned()
            }
            None => default.to_owned(),
        };
        Warehouse {
            connection: connection.unwrap_or_default(),
            schema: name("schema", "public", diags),
            partition_column: name("partition_column", "dt", diags),
        }
    });
    Some(PublishSpec {
        outputs: outputs.into_iter().map(|o| o.value).collect(),
        output,
        dbt: DbtSpec {
            command: vec!["run-operation".into(), "nightshift_export".into()],
            project_dir,
            profiles_dir,
            target: r.string("target", diags).map(|t| t.value),
            select: vec![],
            exclude: vec![],
            selector: None,
            threads: None,
            executable: r.string("executable", diags).map(|t| t.value),
            vars: vec![],
            args: vec![],
            operation_args: vec![],
            runner: None,
        },
        warehouse,
    })
}

pub(crate) const DEF: Def = Def {
    name: "publish",
    keys: &[
        "outputs",
        "output",
        "project_dir",
        "profiles_dir",
        "target",
        "executable",
        "connection",
        "schema",
        "partition_column",
    ],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, settings, diags| read_spec(r, id, settings, diags).map(TaskKind::Publish),
};
