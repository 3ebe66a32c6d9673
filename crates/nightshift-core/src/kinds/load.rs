//! The `load` kind: the run's Parquet partitions (an extract's output) into tables of a
//! PostgreSQL warehouse, each partition replacing the rows of its ds in one transaction.

use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::TriggerRule;
use crate::project::{Connection, ProjectSettings};
use crate::run::RunKeys;
use crate::toml_reader::TableReader;

/// Partitions `<from>/<table>/dt=<ds>/` into `<schema>.<table>`, with the ds in
/// `partition_column`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadSpec {
    pub connection: String,
    /// The tables (folders under `from`) to load, each into a table of the same name.
    pub tables: Vec<String>,
    /// Folder of the partitions, relative to the project.
    pub from: String,
    /// The warehouse schema the tables live in (created when missing).
    pub schema: String,
    /// The column holding each row's ds: what a rerun replaces by.
    pub partition_column: String,
}

/// What the engine hands a load child (`nightshift __load REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadRequest {
    pub spec: LoadSpec,
    pub connection: Connection,
    pub project_dir: String,
    pub keys: RunKeys,
}

pub(crate) const DEF: Def = Def {
    name: "load",
    keys: &["connection", "tables", "from", "schema", "partition_column"],
    trigger_rule: TriggerRule::AllSuccess,
    read,
};

/// A name PostgreSQL takes unquoted: lower-case letters, digits and `_`, not starting with a
/// digit. (Quoted names would work too, but a warehouse's users then must quote them.)
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn read(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    let connection = super::read_connection(
        r,
        id,
        "load",
        settings,
        (
            |c| matches!(c, Connection::Postgres { .. }),
            "is a SQLite connection; `load` writes to PostgreSQL",
            "declare the warehouse with `kind = \"postgres\"` in nightshift.toml",
        ),
        diags,
    );
    let tables = r.string_list("tables", true, diags).unwrap_or_default();
    if tables.is_empty() && !r.has("tables") {
        diags.push(
            Diagnostic::error(format!("load task `{id}` has no `tables`"), Some(r.span()))
                .with_help("add `tables = [\"orders\"]`: folders of the extract's output"),
        );
    }
    let mut seen: Vec<&str> = vec![];
    for t in &tables {
        if !plain_name(&t.value) {
            diags.push(
                Diagnostic::error(
                    format!("invalid table name `{}`", t.value),
                    Some(t.span.clone()),
                )
                .with_help(
                    "use lower-case letters, digits and `_`, as PostgreSQL names are unquoted",
                ),
            );
        } else if seen.contains(&t.value.as_str()) {
            diags.push(Diagnostic::error(
                format!("duplicate table `{}` in task `{id}`", t.value),
                Some(t.span.clone()),
            ));
        }
        seen.push(&t.value);
    }
    let name_or = |key: &str, default: &str, diags: &mut Vec<Diagnostic>| match r.string(key, diags)
    {
        Some(v) if plain_name(&v.value) => v.value,
        Some(v) => {
            diags.push(
                Diagnostic::error(format!("invalid `{key}` `{}`", v.value), Some(v.span))
                    .with_help("use lower-case letters, digits and `_`"),
            );
            default.to_owned()
        }
        None => default.to_owned(),
    };
    let schema = name_or("schema", "public", diags);
    let partition_column = name_or("partition_column", "ds", diags);
    let from = super::project_folder(r, "from", id, "data/raw", diags);
    Some(TaskKind::Load(LoadSpec {
        connection: connection?,
        tables: tables.into_iter().map(|t| t.value).collect(),
        from,
        schema,
        partition_column,
    }))
}
