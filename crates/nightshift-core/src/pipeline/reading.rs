//! Reading a pipeline file: TOML text → spanned tree → validated [`Pipeline`], collecting
//! every problem as a [`Diagnostic`] with its location. The keys common to every task are
//! read here; each kind's own keys are read by its module in [`crate::kinds`].

use std::collections::HashMap;

use jiff::civil::Date;

use super::graph;
use super::model::{DEFAULT_CATCHUP_LIMIT, Pipeline, valid_identifier};
use super::task::{COMMON_TASK_KEYS, Inheritable, read_inheritable, read_task};
use crate::diag::{Diagnostic, did_you_mean};
use crate::kinds;
use crate::project::ProjectSettings;
use crate::sql::{SQL_PARAMS, sql_params};
use crate::template::{self, TemplateError};
use crate::time::{self, Schedule};
use crate::toml_reader::{Located, Span, TableReader, parse_document};

const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
    "catchup_limit",
    "max_active_runs",
    "max_active_tasks",
    "deadline",
    "defaults",
    "task",
];
const DEFAULT_KEYS: &[&str] = &[
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "timeout",
    "pool",
    "env",
    "pass_env",
];

/// Points a template problem at the right characters inside a string literal.
pub(crate) fn check_template(s: &str, span: &Span, diags: &mut Vec<Diagnostic>) {
    // The literal's content starts one byte after its opening quote; escapes would shift
    // positions, in which case the whole string is marked instead.
    let inner = |r: std::ops::Range<usize>| -> Span {
        if span.end - span.start == s.len() + 2 {
            span.start + 1 + r.start..span.start + 1 + r.end
        } else {
            span.clone()
        }
    };
    match template::check(s) {
        Ok(_) => {}
        Err(TemplateError::Unclosed(r)) => diags.push(
            Diagnostic::error("unclosed `{{` in template", Some(inner(r)))
                .with_help("close it with `}}`, e.g. `{{ ds }}`"),
        ),
        Err(TemplateError::Unknown { name, at }) => {
            let mut d = Diagnostic::error(
                format!("unknown template variable `{name}`"),
                Some(inner(at)),
            );
            d = match did_you_mean(&name, template::VARIABLES.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("available: {}", template::VARIABLES.join(", "))),
            };
            diags.push(d);
        }
    }
}

/// Loads a pipeline from its file text. Returns the pipeline only when there is no error;
/// diagnostics (errors and warnings) are always returned.
pub fn parse_pipeline(
    source: &str,
    file_stem: &str,
    settings: &ProjectSettings,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut diags = vec![];
    let doc = match parse_document(source) {
        Ok(doc) => doc,
        Err(d) => return (None, vec![d]),
    };
    let root = TableReader::new(
        doc.get_ref(),
        doc.span(),
        "the pipeline file",
        &[PIPELINE_KEYS],
    );
    let p = read_pipeline(&root, file_stem, settings, &mut diags);
    root.finish(&mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        (None, diags)
    } else {
        (p, diags)
    }
}

fn read_pipeline(
    root: &TableReader<'_, '_>,
    file_stem: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<Pipeline> {
    let name = match root.string("name", diags) {
        Some(n) => {
            if !valid_identifier(&n.value) {
                diags.push(
                    Diagnostic::error(format!("invalid pipeline name `{}`", n.value), Some(n.span))
                        .with_help("use letters, digits, `_`, `-` and `.`, at most 100 characters"),
                );
            }
            n.value
        }
        None if valid_identifier(file_stem) => file_stem.to_owned(),
        None => {
            diags.push(
                Diagnostic::error(format!("the file name `{file_stem}` is not a valid pipeline name and `name` is not set"), None)
                    .with_help("add `name = \"nightly\"` at the top"),
            );
            String::new()
        }
    };
    let description = root.string("description", diags).map(|d| d.value);

    let tz_name = root.string("timezone", diags);
    let tz_text = tz_name
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_else(|| settings.timezone.clone());
    let zone_ok = match time::parse_zone(&tz_text) {
        Ok(_) => true,
        Err(_) => {
            let zones = jiff::tz::db().available();
            let names: Vec<String> = zones.map(|n| n.as_str().to_owned()).collect();
            let help = match did_you_mean(&tz_text, names.iter().map(String::as_str)) {
                Some(z) => format!("did you mean `{z}`?"),
                None => {
                    "use an IANA zone name such as `UTC`, `Europe/Berlin` or `America/New_York`"
                        .to_owned()
                }
            };
            diags.push(
                Diagnostic::error(
                    format!("unknown time zone `{tz_text}`"),
                    tz_name.as_ref().map(|t| t.span.clone()),
                )
                .with_help(help),
            );
            false
        }
    };
    let schedule = match root.string("schedule", diags) {
        Some(s) => match Schedule::parse(&s.value, if zone_ok { &tz_text } else { "UTC" }) {
            Ok(sch) => Some(sch),
            Err(e) => {
                diags.push(
                    Diagnostic::error(e.to_string(), Some(s.span))
                        .with_help("write 5 fields `minute hour day-of-month month day-of-week`, e.g. `0 0 * * *`, or @daily/@hourly"),
                );
                None
            }
        },
        None => {
            if !root.has("schedule") {
                diags.push(
                    Diagnostic::error("missing `schedule`", Some(0..0))
                        .with_help("add `schedule = \"0 0 * * *\"` (daily at midnight)"),
                );
            }
            None
        }
    };
    let date = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<Located<Date>> {
        let v = root.raw(key)?;
        let (text, span) = match v.get_ref() {
            toml::de::DeValue::String(s) => (s.to_string(), v.span()),
            toml::de::DeValue::Datetime(d) => (d.to_string(), v.span()),
            other => {
                diags.push(Diagnostic::error(
                    format!("`{key}` must be a date, found {}", other.type_str()),
                    Some(v.span()),
                ));
                return None;
            }
        };
        match time::parse_date(&text) {
            Ok(d) => Some(Located::new(d, span)),
            Err(_) => {
                diags.push(
                    Diagnostic::error(format!("invalid date `{text}` for `{key}`"), Some(span))
                        .with_help("write `YYYY-MM-DD`, e.g. \"2024-06-01\""),
                );
                None
            }
        }
    };
    let start_date = match date("start_date", diags) {
        Some(d) => Some(d.value),
        None => {
            if !root.has("start_date") {
                diags.push(
                    Diagnostic::error("missing `start_date`", Some(0..0))
                        .with_help("add `start_date = \"2024-06-01\"`: the first ds to run"),
                );
            }
            None
        }
    };
    let end_date = date("end_date", diags);
    if let (Some(s), Some(e)) = (start_date, &end_date)
        && e.value < s
    {
        diags.push(Diagnostic::error(
            "`end_date` is before `start_date`",
            Some(e.span.clone()),
        ));
    }
    let catchup = root.bool("catchup", diags).map(|b| b.value).unwrap_or(true);
    let catchup_limit = root
        .uint("catchup_limit", 10_000_000, diags)
        .map(|v| v.value as u32)
        .unwrap_or(DEFAULT_CATCHUP_LIMIT);
    let max_active_runs = root
        .uint("max_active_runs", 1000, diags)
        .map(|v| v.value as u32)
        .unwrap_or(1);
    let max_active_tasks = root
        .uint("max_active_tasks", 10_000, diags)
        .map(|v| v.value as u32)
        .unwrap_or(16);
    for (key, v) in [
        ("max_active_runs", max_active_runs),
        ("max_active_tasks", max_active_tasks),
    ] {
        if v == 0 {
            diags.push(Diagnostic::error(
                format!("`{key}` must be at least 1"),
                root.raw(key).map(|r| r.span()),
            ));
        }
    }
    let deadline =
        root.string("deadline", diags)
            .and_then(|d| match time::parse_time_of_day(&d.value) {
                Ok(t) => Some(t),
                Err(_) => {
                    diags.push(
                        Diagnostic::error(format!("invalid deadline `{}`", d.value), Some(d.span))
                            .with_help(
                                "write a local time of day `HH:MM` or `HH:MM:SS`, e.g. \"06:00\"",
                            ),
                    );
                    None
                }
            });

    let defaults = match root.table("defaults", diags) {
        Some((t, span)) => {
            let r = TableReader::new(t, span, "`[defaults]`", &[DEFAULT_KEYS]);
            let inh = read_inheritable(&r, settings, diags);
            r.finish(diags);
            inh
        }
        None => Inheritable::default(),
    };

    let task_tables = root.tables("task", diags);
    if task_tables.is_empty() && !root.has("task") {
        diags.push(
            Diagnostic::error("the pipeline has no tasks", Some(0..0))
                .with_help("add a `[[task]]` table with `id`, `kind` and `command`"),
        );
    }
    let mut tasks = Vec::new();
    let mut id_spans: HashMap<String, Span> = HashMap::new();
    let mut dep_spans: Vec<(usize, Vec<Located<String>>)> = vec![];
    for (i, (table, span)) in task_tables.into_iter().enumerate() {
        let id_label = table
            .get("id")
            .and_then(|v| v.get_ref().as_str().map(str::to_owned));
        let label = match &id_label {
            Some(id) => format!("task `{id}`"),
            None => format!("task #{}", i + 1),
        };
        let kind = table.get("kind").and_then(|v| v.get_ref().as_str());
        let r = TableReader::new(
            table,
            span.clone(),
            label,
            &[
                COMMON_TASK_KEYS,
                kinds::find(kind.unwrap_or("shell")).map_or(&[], |k| k.keys),
            ],
        );
        if let Some((task, deps)) = read_task(&r, &defaults, settings, diags) {
            if id_spans.contains_key(&task.id) {
                diags.push(
                    Diagnostic::error(
                        format!("duplicate task id `{}`", task.id),
                        r.raw("id").map(|v| v.span()),
                    )
                    .with_help("task ids must be unique within a pipeline"),
                );
            } else {
                id_spans.insert(
                    task.id.clone(),
                    r.raw("id").map(|v| v.span()).unwrap_or(span),
                );
                dep_spans.push((tasks.len(), deps));
                tasks.push(task);
            }
        }
        r.finish(diags);
    }
    // Dependencies must name existing tasks; the graph must be acyclic.
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    for (idx, deps) in &dep_spans {
        for d in deps {
            if !ids.contains(&d.value) {
                let mut diag = Diagnostic::error(
                    format!(
                        "unknown task `{}` in `depends_on` of `{}`",
                        d.value, tasks[*idx].id
                    ),
                    Some(d.span.clone()),
                );
                if let Some(s) = did_you_mean(&d.value, ids.iter().map(String::as_str)) {
                    diag = diag.with_help(format!("did you mean `{s}`?"));
                }
                diags.push(diag);
            } else if d.value == tasks[*idx].id {
                diags.push(Diagnostic::error(
                    format!("task `{}` depends on itself", d.value),
                    Some(d.span.clone()),
                ));
            }
        }
    }
    if let Some(cycle) = graph::find_cycle(&tasks) {
        let first = &cycle[0];
        diags.push(
            Diagnostic::error(
                format!("dependency cycle: {}", cycle.join(" → ")),
                id_spans.get(first).cloned(),
            )
            .with_help("a pipeline is a DAG: remove one of these `depends_on` entries"),
        );
    }

    let (index, topo, rank) = graph::derive(&tasks);
    Some(Pipeline {
        name,
        description,
        schedule: schedule?,
        start_date: start_date?,
        end_date: end_date.map(|d| d.value),
        catchup,
        catchup_limit,
        max_active_runs,
        max_active_tasks,
        deadline,
        index,
        topo,
        rank,
        tasks,
    })
}

pub(crate) fn check_connection(
    c: &Located<String>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    if !settings.connections.contains_key(&c.value) {
        let mut d = Diagnostic::error(
            format!("unknown connection `{}` in task `{id}`", c.value),
            Some(c.span.clone()),
        );
        d = match did_you_mean(&c.value, settings.connections.keys().map(String::as_str)) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!("declare it in nightshift.toml:\n[connections.{}]\nkind = \"sqlite\"\npath = \"source/shop.db\"", c.value)),
        };
        diags.push(d);
    }
}

pub(crate) fn check_sql_params(sql: &Located<String>, diags: &mut Vec<Diagnostic>) {
    for (at, p) in sql_params(&sql.value) {
        if !SQL_PARAMS.contains(&p.as_str()) {
            let pos = if sql.span.end - sql.span.start == sql.value.len() + 2 {
                sql.span.start + 1 + at
            } else {
                sql.span.start
            };
            diags.push(
                Diagnostic::error(
                    format!("unknown query parameter `:{p}`"),
                    Some(pos..pos + p.len() + 1),
                )
                .with_help(
                    "available: :start and :end (the data interval, RFC 3339 UTC), :ds, :run_id",
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::render;
    use crate::pipeline::{Backoff, RetryPolicy, TriggerRule};
    use std::path::Path;
    use std::time::Duration;

    const NIGHTLY: &str = r#"
name = "nightly"
schedule = "0 0 * * *"
timezone = "UTC"
start_date = "2024-06-01"
catchup = true
max_active_runs = 1
deadline = "06:00"

[defaults]
retries = 2
retry_delay = "10s"
retry_backoff = "exponential"
max_retry_delay = "10m"
timeout = "30m"

[[task]]
id = "extract_data"
kind = "shell"
command = ["./scripts/extract.sh", "{{ ds }}"]

[[task]]
id = "dbt_run"
kind = "shell"
command = ["./scripts/dbt_run.sh", "{{ ds }}"]
depends_on = ["extract_data"]

[[task]]
id = "notify"
kind = "shell"
command = ["./scripts/notify.sh", "{{ run_id }}"]
depends_on = ["dbt_run"]
trigger_rule = "all_done"
"#;

    fn errors(src: &str) -> String {
        let (_, diags) = parse_pipeline(src, "nightly", &ProjectSettings::default());
        diags
            .iter()
            .map(|d| render(Path::new("pipelines/nightly.toml"), src, d))
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn parses_the_reference_pipeline() {
        let (p, diags) = parse_pipeline(NIGHTLY, "nightly", &ProjectSettings::default());
        assert!(diags.is_empty(), "{diags:?}");
        let p = p.unwrap();
        assert_eq!(p.tasks.len(), 3);
        let notify = p.task("notify").unwrap();
        assert_eq!(notify.trigger_rule, TriggerRule::AllDone);
        assert_eq!(notify.retry.retries, 2);
        assert_eq!(notify.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(
            p.topological_order()
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            ["extract_data", "dbt_run", "notify"]
        );
    }

    #[test]
    fn unknown_key_with_suggestion() {
        let src = NIGHTLY.replace("retries = 2", "retires = 2");
        let out = errors(&src);
        assert!(
            out.contains(
                "error: unknown key `retires` in `[defaults]`\n  --> pipelines/nightly.toml:11:1"
            ),
            "{out}"
        );
        assert!(out.contains("did you mean `retries`?"), "{out}");
    }

    #[test]
    fn unknown_dependency_and_cycle() {
        let src = NIGHTLY.replace(
            "depends_on = [\"extract_data\"]",
            "depends_on = [\"extract_dat\", \"notify\"]",
        );
        let out = errors(&src);
        assert!(
            out.contains("unknown task `extract_dat` in `depends_on` of `dbt_run`"),
            "{out}"
        );
        assert!(out.contains("did you mean `extract_data`?"), "{out}");
        assert!(out.contains("dependency cycle: "), "{out}");
        assert!(out.contains("nightly.toml:23:6"), "{out}");
    }

    #[test]
    fn bad_cron_zone_duration_duplicate() {
        let src = NIGHTLY
            .replace("0 0 * * *", "0 0 * * * *")
            .replace("\"UTC\"", "\"Europe/Berln\"")
            .replace("\"10s\"", "\"ten seconds\"")
            .replace("id = \"dbt_run\"", "id = \"extract_data\"");
        let out = errors(&src);
        assert!(
            out.contains("invalid cron expression `0 0 * * * *`: expected 5 fields"),
            "{out}"
        );
        assert!(out.contains(" --> pipelines/nightly.toml:3:12"), "{out}");
        assert!(
            out.contains("unknown time zone `Europe/Berln`\n --> pipelines/nightly.toml:4:12"),
            "{out}"
        );
        assert!(out.contains("invalid duration `ten seconds`"), "{out}");
        assert!(out.contains("duplicate task id `extract_data`"), "{out}");
    }

    #[test]
    fn syntax_error_has_location() {
        let out = errors("name = \"x\nschedule = 1\n");
        assert!(out.starts_with("error: invalid TOML"), "{out}");
        assert!(out.contains(" --> pipelines/nightly.toml:1:"), "{out}");
    }

    #[test]
    fn templates_checked_and_shell_refuses_them() {
        let src = NIGHTLY.replace("{{ run_id }}", "{{ runid }}");
        let out = errors(&src);
        assert!(out.contains("unknown template variable `runid`"), "{out}");
        assert!(out.contains("did you mean `run_id`?"), "{out}");
        let src = NIGHTLY.replace(
            "command = [\"./scripts/notify.sh\", \"{{ run_id }}\"]",
            "shell = true\ncommand = \"echo {{ ds }}\"",
        );
        let out = errors(&src);
        assert!(
            out.contains("templates are not allowed in a shell script"),
            "{out}"
        );
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = RetryPolicy {
            retries: 5,
            retry_delay: Duration::from_secs(10),
            backoff: Backoff::Exponential,
            max_retry_delay: Duration::from_secs(60),
        };
        assert_eq!(p.delay_before(2, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay_before(3, 1.0), Duration::from_secs(20));
        assert_eq!(p.delay_before(4, 1.0), Duration::from_secs(40));
        assert_eq!(p.delay_before(5, 1.0), Duration::from_secs(60));
        assert_eq!(p.delay_before(9, 0.0), Duration::from_secs(30));
        assert_eq!(p.delay_before(2, 0.0), Duration::from_secs(5));
    }
}
