//! Task kinds, one module each. A kind's module holds its spec (what a pipeline file says),
//! its keys and reader (how the file is checked), and, for nightshift's own kinds, the
//! request the engine hands its child process (`nightshift __<kind> REQUEST`). How the
//! engine runs a kind lives in the engine's `kinds` module; ARCHITECTURE.md says how to add
//! one.

pub mod dbt;
pub mod extract;
pub mod load;
pub mod notify;
pub mod publish;
pub mod sensor;
pub mod shell;
pub mod sql;

pub(crate) use dbt::read_dbt_runner;
pub use dbt::{DbtRunner, DbtSpec, DbtWarmRequest};
pub use extract::{ExtractRequest, ExtractSpec, ExtractTable, OnIncomplete};
pub use load::{LoadRequest, LoadSpec};
pub use notify::{NotifyRequest, NotifySpec, TaskSummary};
pub use publish::{PublishRequest, PublishSpec, Warehouse};
pub use sensor::{SENSOR_NOT_YET, SensorCondition, SensorRequest, SensorSpec};
pub use shell::ShellSpec;
pub use sql::{SqlRequest, SqlSpec};

use crate::diag::Diagnostic;
use crate::pipeline::TriggerRule;
use crate::project::ProjectSettings;
use crate::toml_reader::TableReader;

/// The closed set of task kinds. Every kind ends up as a child process.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    Shell(ShellSpec),
    Extract(ExtractSpec),
    Load(LoadSpec),
    Sensor(SensorSpec),
    Dbt(DbtSpec),
    Publish(PublishSpec),
    Notify(NotifySpec),
    Sql(SqlSpec),
}

impl TaskKind {
    /// The kind's definition: its name and keys, and how it is read.
    pub(crate) fn def(&self) -> &'static Def {
        match self {
            TaskKind::Shell(_) => &shell::DEF,
            TaskKind::Extract(_) => &extract::DEF,
            TaskKind::Load(_) => &load::DEF,
            TaskKind::Sensor(_) => &sensor::DEF,
            TaskKind::Dbt(_) => &dbt::DEF,
            TaskKind::Publish(_) => &publish::DEF,
            TaskKind::Notify(_) => &notify::DEF,
            TaskKind::Sql(_) => &sql::DEF,
        }
    }

    /// The name a pipeline file gives the kind (`kind = "…"`).
    pub fn name(&self) -> &'static str {
        self.def().name
    }
}

/// What the pipeline reader knows of a kind.
pub(crate) struct Def {
    pub name: &'static str,
    /// The keys a task of this kind may have, beside the common ones.
    pub keys: &'static [&'static str],
    /// The trigger rule when the task names none.
    pub trigger_rule: TriggerRule,
    /// Reads the kind's own keys of a `[[task]]` table (`id` is the task's id).
    pub read:
        fn(&TableReader<'_, '_>, &str, &ProjectSettings, &mut Vec<Diagnostic>) -> Option<TaskKind>,
}

/// Every kind, in the order the docs list them.
pub(crate) const KINDS: [&Def; 8] = [
    &shell::DEF,
    &extract::DEF,
    &load::DEF,
    &sensor::DEF,
    &dbt::DEF,
    &publish::DEF,
    &notify::DEF,
    &sql::DEF,
];

/// A task's `connection`: named, declared in nightshift.toml, and one `fits` accepts (else
/// `misfit` says why, with `help`). `None`, with a diagnostic, when any of that fails.
pub(crate) fn read_connection(
    r: &TableReader<'_, '_>,
    id: &str,
    kind: &str,
    settings: &ProjectSettings,
    fits: (fn(&crate::project::Connection) -> bool, &str, &str),
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let Some(c) = r.string("connection", diags) else {
        if !r.has("connection") {
            diags.push(
                Diagnostic::error(
                    format!("{kind} task `{id}` has no `connection`"),
                    Some(r.span()),
                )
                .with_help("add `connection = \"shop\"`, a connection of nightshift.toml"),
            );
        }
        return None;
    };
    crate::pipeline::check_connection(&c, id, settings, diags);
    let (accepts, misfit, help) = fits;
    if settings
        .connections
        .get(&c.value)
        .is_some_and(|conn| !accepts(conn))
    {
        diags.push(
            Diagnostic::error(
                format!("{kind} task `{id}`: `{}` {misfit}", c.value),
                Some(c.span.clone()),
            )
            .with_help(help),
        );
    }
    Some(c.value)
}

/// Any connection will do.
pub(crate) const ANY_CONNECTION: (fn(&crate::project::Connection) -> bool, &str, &str) =
    (|_| true, "", "");

/// A folder of the project a task names under `key` (default `default`): relative, and
/// staying inside the project.
pub(crate) fn project_folder(
    r: &TableReader<'_, '_>,
    key: &str,
    id: &str,
    default: &str,
    diags: &mut Vec<Diagnostic>,
) -> String {
    let folder = r
        .string(key, diags)
        .map(|o| o.value)
        .unwrap_or_else(|| default.to_owned());
    if folder.split('/').any(|c| c == "..") || folder.starts_with('/') {
        diags.push(
            Diagnostic::error(
                format!("`{key}` of task `{id}` must stay inside the project"),
                r.raw(key).map(|v| v.span()),
            )
            .with_help(format!("write a relative path such as `{default}`")),
        );
    }
    folder
}

/// The kind named `name` (a task without `kind` is a shell task).
pub(crate) fn find(name: &str) -> Option<&'static Def> {
    KINDS.into_iter().find(|k| k.name == name)
}

/// The names of every kind, for did-you-mean help.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    KINDS.into_iter().map(|k| k.name)
}
