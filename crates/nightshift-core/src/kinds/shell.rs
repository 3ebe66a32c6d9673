//! The `shell` kind: an argv array (or, with `shell = true`, one script for `sh -c`), run as
//! it is with its arguments templated.

use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::{TriggerRule, check_template};
use crate::project::ProjectSettings;
use crate::toml_reader::TableReader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellSpec {
    /// argv; templated per element.
    pub command: Vec<String>,
    /// Run `command[0]` with `sh -c`; templates are then refused (use `$NIGHTSHIFT_DS`).
    pub shell: bool,
}

pub(crate) const DEF: Def = Def {
    name: "shell",
    keys: &["command", "shell"],
    trigger_rule: TriggerRule::AllSuccess,
    read,
};

fn read(
    r: &TableReader<'_, '_>,
    id: &str,
    _settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<TaskKind> {
    let shell = r.bool("shell", diags).map(|b| b.value).unwrap_or(false);
    let command = match r.string_list("command", shell, diags) {
        Some(c) if c.is_empty() => {
            diags.push(Diagnostic::error(
                format!("`command` of task `{id}` is empty"),
                r.raw("command").map(|v| v.span()),
            ));
            None
        }
        Some(c) => Some(c),
        None => {
            if !r.has("command") {
                diags.push(
                    Diagnostic::error(format!("task `{id}` has no `command`"), Some(r.span()))
                        .with_help("add `command = [\"./scripts/extract.sh\", \"{{ ds }}\"]` (an argv array)"),
                );
            }
            None
        }
    };
    let command = command.unwrap_or_default();
    if shell && command.len() > 1 {
        diags.push(
            Diagnostic::error(
                format!("task `{id}` has `shell = true` and a command of several elements"),
                r.raw("command").map(|v| v.span()),
            )
            .with_help("with `shell = true`, `command` is one script string run by `sh -c`"),
        );
    }
    for c in &command {
        if shell && c.value.contains("{{") {
            diags.push(
                Diagnostic::error(format!("templates are not allowed in a shell script (task `{id}`)"), Some(c.span.clone()))
                    .with_help("read the values from the environment instead, quoted: \"$NIGHTSHIFT_DS\"; this keeps values out of shell syntax"),
            );
        } else {
            check_template(&c.value, &c.span, diags);
        }
        if c.value.contains('\0') {
            diags.push(Diagnostic::error(
                "a command argument contains a NUL byte",
                Some(c.span.clone()),
            ));
        }
    }
    Some(TaskKind::Shell(ShellSpec {
        command: command.into_iter().map(|c| c.value).collect(),
        shell,
    }))
}
