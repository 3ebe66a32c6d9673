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
}

/// What the engine hands a publish child (`nightshift __publish REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublishRequest {
    pub outputs: Vec<String>,
    pub root: String,
    /// `dbt run-operation nightshift_export` and its flags, without `--args`.
    pub dbt_argv: Vec<String>,
    pub dbt_env: Vec<(String, String)>,
    pub keys: RunKeys,
    /// dbt test results of this run: status → count.
    pub checks: std::collections::BTreeMap<String, u32>,
    pub dbt_invocation_id: Option<String>,
}

fn read_spec(
    r: &TableReader<'_, '_>,
    id: &str,
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
        },
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
    ],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, _settings, diags| read_spec(r, id, diags).map(TaskKind::Publish),
};
