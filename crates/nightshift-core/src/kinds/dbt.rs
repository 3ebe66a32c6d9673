//! The `dbt` kind: a dbt command on an existing, unmodified dbt project, with the run's
//! keys as `--vars`; a retry runs only the nodes that did not succeed.

use super::{Def, TaskKind};
use crate::diag::{Diagnostic, did_you_mean};
use crate::pipeline::{TriggerRule, check_template};
use crate::toml_reader::TableReader;

/// A dbt command on an existing, unmodified dbt project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbtSpec {
    /// `run`, `test`, `build`, `seed`, `snapshot`, `source freshness`, `compile`, `deps`,
    /// `docs generate` or `run-operation MACRO`.
    pub command: Vec<String>,
    /// Relative to the nightshift project.
    pub project_dir: String,
    pub profiles_dir: String,
    pub target: Option<String>,
    pub select: Vec<String>,
    pub exclude: Vec<String>,
    pub selector: Option<String>,
    pub threads: Option<u32>,
    /// The dbt to run; default `.venv/bin/dbt` in the project when it exists, else `dbt`.
    pub executable: Option<String>,
    /// The user's own `--vars`, of any TOML type (their strings templated), merged with
    /// nightshift's ds, data_interval_start, data_interval_end and run_id.
    pub vars: Vec<(String, serde_json::Value)>,
    /// Further flags, passed as they are (templated).
    pub args: Vec<String>,
    /// `run-operation`'s macro arguments (`--args`), of any TOML type.
    pub operation_args: Vec<(String, serde_json::Value)>,
    /// `cli` or `warm`; `None`: the project's `[dbt] runner` (default `cli`).
    pub runner: Option<DbtRunner>,
}

/// How a dbt task runs dbt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbtRunner {
    /// A fresh `dbt` process per call, as a user at a shell would run it.
    #[default]
    Cli,
    /// One long-lived Python process per project, profile, target and vars, running calls
    /// one at a time with dbt's programmatic runner and keeping the parsed project.
    Warm,
}

/// `runner = "cli" | "warm"`, in a dbt task or in `[dbt]`.
pub(crate) fn read_dbt_runner(
    r: &TableReader<'_, '_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<DbtRunner> {
    let v = r.string("runner", diags)?;
    match v.value.as_str() {
        "cli" => Some(DbtRunner::Cli),
        "warm" => Some(DbtRunner::Warm),
        other => {
            diags.push(
                Diagnostic::error(
                    format!("unknown dbt runner `{other}` in {}", r.label),
                    Some(v.span),
                )
                .with_help(
                    "use `cli` (a dbt process per call) or `warm` (one long-lived dbt per project)",
                ),
            );
            None
        }
    }
}

/// What the engine hands a warm dbt try's process (`nightshift __dbt_warm REQUEST`): where
/// the project's warm worker listens, and the invocation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbtWarmRequest {
    /// The folder holding the worker's socket, and the socket's name in it (connected to
    /// from inside the folder: a socket path is limited to about 100 bytes).
    pub socket_dir: String,
    pub socket: String,
    /// dbt's arguments, without the program.
    pub argv: Vec<String>,
    /// `parse` with the same flags, when the command needs the parsed project.
    pub parse_argv: Option<Vec<String>>,
    /// What the parsed project depends on besides its files and profile: the task's own
    /// vars (nightshift's ds, interval and run_id are rendered at compile time).
    pub manifest_key: String,
    /// Where to leave a note when the worker gives no answer (the try's target folder).
    pub target_dir: String,
}

/// The vars nightshift passes to every dbt call; a task's own `vars` may not use them.
pub const RESERVED_VARS: &[&str] = &["ds", "data_interval_start", "data_interval_end", "run_id"];

pub const DBT_COMMANDS: &[&str] = &[
    "run",
    "test",
    "build",
    "seed",
    "snapshot",
    "source freshness",
    "compile",
    "deps",
    "docs generate",
    "run-operation",
];

/// Commands that take no node selection (`--select`, `--exclude`, `--selector`).
const SELECTS_NOTHING: &[&str] = &["deps", "run-operation"];

fn read_spec(r: &TableReader<'_, '_>, id: &str, diags: &mut Vec<Diagnostic>) -> Option<DbtSpec> {
    let command: Vec<String> = match r.string("command", diags) {
        Some(c) => {
            let words: Vec<&str> = c.value.split_whitespace().collect();
            if words.first() == Some(&"run-operation") {
                let ok = words.len() == 2
                    && words[1]
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                if !ok {
                    diags.push(
                        Diagnostic::error(
                            format!("dbt task `{id}`: `run-operation` needs one macro name"),
                            Some(c.span.clone()),
                        )
                        .with_help("write `command = \"run-operation grant_select\"`, and the macro's arguments as `operation_args = { role = \"analyst\" }`"),
                    );
                }
            } else if !DBT_COMMANDS.contains(&c.value.as_str()) {
                let mut d = Diagnostic::error(
                    format!("unsupported dbt command `{}` in task `{id}`", c.value),
                    Some(c.span.clone()),
                );
                d = match did_you_mean(&c.value, DBT_COMMANDS.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("use one of: {}", DBT_COMMANDS.join(", "))),
                };
                diags.push(d);
            }
            c.value.split_whitespace().map(str::to_owned).collect()
        }
        None => {
            if !r.has("command") {
                diags.push(Diagnostic::error(format!("dbt task `{id}` has no `command`"), Some(r.span())).with_help("add `command = \"run\"` (or test, build, seed, snapshot, source freshness, compile, deps, docs generate, run-operation MACRO)"));
            }
            return None;
        }
    };
    let (project_dir, profiles_dir) = read_dirs(r, diags);
    let list = |key: &str, diags: &mut Vec<Diagnostic>| -> Vec<String> {
        let v = r.string_list(key, true, diags).unwrap_or_default();
        for item in &v {
            check_template(&item.value, &item.span, diags);
        }
        v.into_iter().map(|x| x.value).collect()
    };
    let select = list("select", diags);
    let exclude = list("exclude", diags);
    let args = list("args", diags);
    if let Some(items) = r.string_list("args", true, &mut vec![]) {
        for a in items
            .iter()
            .filter(|a| a.value == "--vars" || a.value.starts_with("--vars="))
        {
            diags.push(
                Diagnostic::error(
                    format!("`--vars` in the `args` of dbt task `{id}` would replace nightshift's own vars"),
                    Some(a.span.clone()),
                )
                .with_help("write them as `vars = { load_source_data = true }`: nightshift merges them with ds, data_interval_start, data_interval_end and run_id"),
            );
        }
    }
    let word = command.first().map(String::as_str).unwrap_or("");
    if SELECTS_NOTHING.contains(&word) {
        for key in ["select", "exclude", "selector"] {
            if let Some(v) = r.raw(key) {
                diags.push(Diagnostic::error(
                    format!("dbt `{word}` selects no nodes: `{key}` does not apply to task `{id}`"),
                    Some(v.span()),
                ));
            }
        }
    }
    let (operation_args, op_strings) = r.value_map("operation_args", diags);
    if !operation_args.is_empty() && word != "run-operation" {
        diags.push(Diagnostic::error(
            format!("`operation_args` in dbt task `{id}` is for `run-operation` only"),
            r.raw("operation_args").map(|v| v.span()),
        ));
    }
    for s in &op_strings {
        check_template(&s.value, &s.span, diags);
    }
    let (vars, strings) = r.value_map("vars", diags);
    for (k, _) in &vars {
        if RESERVED_VARS.contains(&k.value.as_str()) {
            diags.push(Diagnostic::error(format!("`vars.{}` is reserved: nightshift sets it", k.value), Some(k.span.clone())).with_help("nightshift passes ds, data_interval_start, data_interval_end and run_id itself; name your var differently"));
        }
    }
    for s in &strings {
        check_template(&s.value, &s.span, diags);
    }
    Some(DbtSpec {
        command,
        project_dir,
        profiles_dir,
        target: r.string("target", diags).map(|t| t.value),
        select,
        exclude,
        selector: r.string("selector", diags).map(|t| t.value),
        threads: r.uint("threads", 256, diags).map(|t| t.value as u32),
        executable: r.string("executable", diags).map(|t| t.value),
        vars: vars.into_iter().map(|(k, v)| (k.value, v)).collect(),
        args,
        operation_args: operation_args
            .into_iter()
            .map(|(k, v)| (k.value, v))
            .collect(),
        runner: read_dbt_runner(r, diags),
    })
}

/// `project_dir` (default `dbt`) and `profiles_dir` (default: the project's), relative to
/// the nightshift project; read by the dbt and publish kinds.
pub(crate) fn read_dirs(r: &TableReader<'_, '_>, diags: &mut Vec<Diagnostic>) -> (String, String) {
    let project_dir = r
        .string("project_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| "dbt".to_owned());
    let profiles_dir = r
        .string("profiles_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| project_dir.clone());
    (project_dir, profiles_dir)
}

pub(crate) const DEF: Def = Def {
    name: "dbt",
    keys: &[
        "command",
        "project_dir",
        "profiles_dir",
        "target",
        "select",
        "exclude",
        "selector",
        "threads",
        "executable",
        "vars",
        "args",
        "operation_args",
        "runner",
    ],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, _settings, diags| read_spec(r, id, diags).map(TaskKind::Dbt),
};
