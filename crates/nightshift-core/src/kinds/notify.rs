//! The `notify` kind: a run summary sent to channels of nightshift.toml (default: all of
//! them). It runs after every upstream finished, whatever their states.

use super::{Def, TaskKind};
use crate::diag::{Diagnostic, did_you_mean};
use crate::pipeline::TriggerRule;
use crate::project::ProjectSettings;
use crate::run::RunKeys;
use crate::toml_reader::TableReader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySpec {
    pub channels: Vec<String>,
}

/// One task's line in a run summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub state: String,
    pub tries: u32,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// What the engine hands a notify child (`nightshift __notify REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NotifyRequest {
    pub keys: RunKeys,
    /// FAILED when any task failed so far, else SUCCESS.
    pub status: String,
    pub rows_loaded: i64,
    pub tasks: Vec<TaskSummary>,
    /// Names of dbt tests that failed in this run.
    pub failed_checks: Vec<String>,
    /// (name, channel), with webhook URLs resolved from the environment.
    pub channels: Vec<(String, crate::project::Channel)>,
    pub project_dir: String,
}

pub(crate) const DEF: Def = Def {
    name: "notify",
    keys: &["channels"],
    // A notification is most needed when something failed.
    trigger_rule: TriggerRule::AllDone,
    read,
};

fn read(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    let channels: Vec<String> = match r.string_list("channels", true, diags) {
        Some(list) => {
            for c in &list {
                if !settings.channels.contains_key(&c.value) {
                    let mut d = Diagnostic::error(
                        format!("unknown channel `{}` in task `{id}`", c.value),
                        Some(c.span.clone()),
                    );
                    d = match did_you_mean(&c.value, settings.channels.keys().map(String::as_str)) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!(
                            "declare it in nightshift.toml:\n[channels.{}]\nkind = \"log\"",
                            c.value
                        )),
                    };
                    diags.push(d);
                }
            }
            list.into_iter().map(|c| c.value).collect()
        }
        None => settings.channels.keys().cloned().collect(),
    };
    if channels.is_empty() {
        diags.push(
            Diagnostic::error(format!("notify task `{id}` has no channel"), Some(r.span()))
                .with_help(
                    "declare one in nightshift.toml: `[channels.ops]` with `kind = \"log\"`",
                ),
        );
    }
    Some(TaskKind::Notify(NotifySpec { channels }))
}
