//! The `extract` kind: source tables to date-partitioned Parquet, one partition per run,
//! replaced atomically; row counts checked against the trailing average.

use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::{TriggerRule, check_sql_params, valid_identifier};
use crate::project::ProjectSettings;
use crate::run::RunKeys;
use crate::toml_reader::TableReader;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnIncomplete {
    Fail,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtractTable {
    /// Names the output folder `<output>/<name>/dt=<ds>/`.
    pub name: String,
    /// A query with bound parameters `:start`, `:end` (the data interval, RFC 3339 UTC),
    /// `:ds` and `:run_id`; values are bound, never spliced into the text.
    pub sql: String,
}

/// Source tables to date-partitioned Parquet, one partition per run, replaced atomically.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtractSpec {
    pub connection: String,
    pub tables: Vec<ExtractTable>,
    /// Folder for the partitions, relative to the project.
    pub output: String,
    /// A table's rows must be at least this share of its trailing 7-run average.
    pub min_ratio: Option<f64>,
    pub on_incomplete: OnIncomplete,
}

/// What the engine hands an extract child process (`nightshift __extract REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtractRequest {
    pub spec: ExtractSpec,
    /// With its path made absolute.
    pub connection: crate::project::Connection,
    pub project_dir: String,
    pub keys: RunKeys,
    /// Row counts per table of the latest successful runs before this one, newest first.
    pub history: std::collections::BTreeMap<String, Vec<i64>>,
}

fn read_spec(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<ExtractSpec> {
    let connection =
        super::read_connection(r, id, "extract", settings, super::ANY_CONNECTION, diags)?;
    let mut tables = vec![];
    let table_tables = r.tables("table", diags);
    if table_tables.is_empty() && !r.has("table") {
        diags.push(
            Diagnostic::error(format!("extract task `{id}` has no tables"), Some(r.span()))
                .with_help("add `[[task.table]]` with `name` and `sql`"),
        );
    }
    for (t, span) in table_tables {
        let tr = TableReader::new(
            t,
            span.clone(),
            format!("a table of task `{id}`"),
            &[TABLE_KEYS],
        );
        let name = tr.string("name", diags);
        let sql = tr.string("sql", diags);
        tr.finish(diags);
        let (Some(name), Some(sql)) = (name, sql) else {
            diags.push(Diagnostic::error(
                format!("a table of task `{id}` needs `name` and `sql`"),
                Some(span),
            ));
            continue;
        };
        if !valid_identifier(&name.value) {
            diags.push(
                Diagnostic::error(
                    format!("invalid table name `{}`", name.value),
                    Some(name.span.clone()),
                )
                .with_help("use letters, digits, `_`, `-` and `.`"),
            );
        }
        if tables.iter().any(|t: &ExtractTable| t.name == name.value) {
            diags.push(Diagnostic::error(
                format!("duplicate table `{}` in task `{id}`", name.value),
                Some(name.span.clone()),
            ));
        }
        check_sql_params(&sql, diags);
        if sql.value.trim().is_empty() {
            diags.push(Diagnostic::error("empty `sql`", Some(sql.span.clone())));
        }
        tables.push(ExtractTable {
            name: name.value,
            sql: sql.value,
        });
    }
    let output = super::project_folder(r, "output", id, "data/raw", diags);
    let min_ratio = match r.raw("min_ratio") {
        Some(v) => match v.get_ref() {
            toml::de::DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x)),
            toml::de::DeValue::Integer(i) => i
                .as_str()
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x)),
            _ => None,
        }
        .or_else(|| {
            diags.push(
                Diagnostic::error("`min_ratio` must be a number from 0 to 1", Some(v.span()))
                    .with_help("e.g. `min_ratio = 0.5`: at least half the trailing average"),
            );
            None
        }),
        None => None,
    };
    let on_incomplete = match r.string("on_incomplete", diags) {
        Some(v) => match v.value.as_str() {
            "fail" => OnIncomplete::Fail,
            "warn" => OnIncomplete::Warn,
            other => {
                diags.push(
                    Diagnostic::error(format!("unknown on_incomplete `{other}`"), Some(v.span))
                        .with_help("use `fail` or `warn`"),
                );
                OnIncomplete::Fail
            }
        },
        None => OnIncomplete::Fail,
    };
    Some(ExtractSpec {
        connection,
        tables,
        output,
        min_ratio,
        on_incomplete,
    })
}

pub(crate) const DEF: Def = Def {
    name: "extract",
    keys: &[
        "connection",
        "table",
        "output",
        "min_ratio",
        "on_incomplete",
    ],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, settings, diags| read_spec(r, id, settings, diags).map(TaskKind::Extract),
};

const TABLE_KEYS: &[&str] = &["name", "sql"];
