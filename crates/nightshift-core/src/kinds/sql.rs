//! The `sql` kind: statements run on a connection in one transaction, with the run's keys
//! bound as `:start`, `:end`, `:ds` and `:run_id` (never spliced): housekeeping around a
//! load, such as recording a batch or deleting a partition before it is loaded again. All
//! or nothing: a failed or killed try changes nothing.

use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::{TriggerRule, check_sql_params};
use crate::project::ProjectSettings;
use crate::run::RunKeys;
use crate::toml_reader::TableReader;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SqlSpec {
    pub connection: String,
    /// One statement each, run in order.
    pub statements: Vec<String>,
}

/// What the engine hands a sql child (`nightshift __sql REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SqlRequest {
    pub spec: SqlSpec,
    /// With its path made absolute.
    pub connection: crate::project::Connection,
    pub keys: RunKeys,
}

pub(crate) const DEF: Def = Def {
    name: "sql",
    keys: &["connection", "sql"],
    trigger_rule: TriggerRule::AllSuccess,
    read,
};

fn read(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    let connection = super::read_connection(
        r,
        id,
        "sql",
        settings,
        (
            |c| matches!(c, crate::project::Connection::Sqlite { .. }),
            "is a PostgreSQL connection, and the `sql` kind runs on SQLite connections only for now",
            "run the statements from a `command` task with `psql`, or in a dbt model",
        ),
        diags,
    );
    let statements = r.string_list("sql", true, diags).unwrap_or_default();
    if statements.is_empty() {
        diags.push(
            Diagnostic::error(format!("sql task `{id}` has no `sql`"), Some(r.span())).with_help(
                "add `sql = \"DELETE FROM loads WHERE ds = :ds\"` (or a list of statements)",
            ),
        );
    }
    for s in &statements {
        if s.value.trim().is_empty() {
            diags.push(Diagnostic::error(
                "empty statement in `sql`",
                Some(s.span.clone()),
            ));
        }
        check_sql_params(s, diags);
    }
    Some(TaskKind::Sql(SqlSpec {
        connection: connection?,
        statements: statements.into_iter().map(|s| s.value).collect(),
    }))
}
