//! The `dbt` kind: a dbt command on an existing, unmodified dbt project, with the run's
//! keys as `--vars`; a retry runs only the nodes that did not succeed.

use super::{Def, TaskKind};
use crate::diag::{Diagnostic, did_you_mean};
use crate::pipeline::{TriggerRule, check_template};
use crate::toml_reader::TableReader;

/// A dbt command on an existing, unmodified dbt project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbtSpec {
    /// `run`, `test`, `build`, `seed`, `snapshot` or `source freshness`.
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
    /// Extra `--vars` (templated), beside ds, data_interval_start/end and run_id.
    pub vars: Vec<(String, String)>,
    /// Further flags, passed as they are (templated).
    pub args: Vec<String>,
}

pub const DBT_COMMANDS: &[&str] = &[
    "run",
    "test",
    "build",
    "seed",
    "snapshot",
    "source freshness",
];

fn read_spec(r: &TableReader<'_, '_>, id: &str, diags: &mut Vec<Diagnostic>) -> Option<DbtSpec> {
    let command = match r.string("command", diags) {
        Some(c) => {
            if !DBT_COMMANDS.contains(&c.value.as_str()) {
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
                diags.push(Diagnostic::error(format!("dbt task `{id}` has no `command`"), Some(r.span())).with_help("add `command = \"run\"` (or test, build, seed, snapshot, source freshness)"));
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
    let vars = r.string_map("vars", diags);
    for (k, v) in &vars {
        if ["ds", "data_interval_start", "data_interval_end", "run_id"].contains(&k.value.as_str())
        {
            diags.push(Diagnostic::error(format!("`vars.{}` is set by nightshift", k.value), Some(k.span.clone())).with_help("nightshift passes ds, data_interval_start, data_interval_end and run_id itself"));
        }
        check_template(&v.value, &v.span, diags);
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
        vars: vars.into_iter().map(|(k, v)| (k.value, v.value)).collect(),
        args,
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
    ],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, _settings, diags| read_spec(r, id, diags).map(TaskKind::Dbt),
};
