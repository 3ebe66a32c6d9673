//! Reading one `[[task]]` table: the keys every task has (id, kind, dependencies, trigger
//! rule, retries, timeout, pool, env), inherited from `[defaults]` and the project where the
//! task says nothing; the kind's own keys are read by its module in [`crate::kinds`].

use std::time::Duration;

use super::model::{Backoff, RetryPolicy, Task, TriggerRule, valid_identifier};
use super::reading::check_template;
use crate::diag::{Diagnostic, did_you_mean};
use crate::kinds;
use crate::project::ProjectSettings;
use crate::time;
use crate::toml_reader::{Located, TableReader};

pub(super) const COMMON_TASK_KEYS: &[&str] = &[
    "id",
    "description",
    "kind",
    "depends_on",
    "trigger_rule",
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "timeout",
    "pool",
    "env",
    "pass_env",
    "cwd",
];

/// Task-level settings that `[defaults]` may provide.
#[derive(Default)]
pub(super) struct Inheritable {
    retries: Option<Located<u64>>,
    retry_delay: Option<Located<Duration>>,
    retry_backoff: Option<Located<Backoff>>,
    max_retry_delay: Option<Located<Duration>>,
    timeout: Option<Located<Option<Duration>>>,
    pool: Option<Located<String>>,
    env: Vec<(Located<String>, Located<String>)>,
    pass_env: Option<Vec<String>>,
}

pub(super) fn read_inheritable(
    r: &TableReader<'_, '_>,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Inheritable {
    let duration = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<Located<Duration>> {
        let s = r.string(key, diags)?;
        match time::parse_duration(&s.value) {
            Ok(d) => Some(Located::new(d, s.span)),
            Err(_) => {
                diags.push(
                    Diagnostic::error(
                        format!("invalid duration `{}` for `{key}` in {}", s.value, r.label),
                        Some(s.span),
                    )
                    .with_help("write a number with a unit: `500ms`, `10s`, `5m`, `2h`, `1h30m`, `10 minutes`"),
                );
                None
            }
        }
    };
    let mut inh = Inheritable {
        retries: r.uint("retries", 100, diags),
        retry_delay: duration("retry_delay", diags),
        max_retry_delay: duration("max_retry_delay", diags),
        ..Default::default()
    };
    if let Some(s) = r.string("timeout", diags) {
        if s.value == "none" {
            inh.timeout = Some(Located::new(None, s.span));
        } else if let Some(d) = duration("timeout", diags) {
            if d.value.is_zero() {
                diags.push(
                    Diagnostic::error("`timeout` must be longer than zero", Some(d.span.clone()))
                        .with_help("write `timeout = \"none\"` for no timeout"),
                );
            }
            inh.timeout = Some(Located::new(Some(d.value), d.span));
        }
    }
    if let Some(s) = r.string("retry_backoff", diags) {
        match s.value.as_str() {
            "exponential" => inh.retry_backoff = Some(Located::new(Backoff::Exponential, s.span)),
            "constant" => inh.retry_backoff = Some(Located::new(Backoff::Constant, s.span)),
            other => diags.push(
                Diagnostic::error(
                    format!("unknown retry_backoff `{other}` in {}", r.label),
                    Some(s.span),
                )
                .with_help("use `exponential` or `constant`"),
            ),
        }
    }
    if let Some(p) = r.string("pool", diags) {
        if !settings.pools.contains_key(&p.value) {
            let mut d = Diagnostic::error(
                format!("unknown pool `{}` in {}", p.value, r.label),
                Some(p.span.clone()),
            );
            d = match did_you_mean(&p.value, settings.pools.keys().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!(
                    "declare it in nightshift.toml: `[pools]\n{} = {{ slots = 1 }}`",
                    p.value
                )),
            };
            diags.push(d);
        }
        inh.pool = Some(p);
    }
    if r.has("env") {
        inh.env = r.string_map("env", diags);
        for (k, v) in &inh.env {
            if k.value.is_empty() || k.value.contains('=') || k.value.contains('\0') {
                diags.push(Diagnostic::error(
                    format!("invalid environment variable name `{}`", k.value),
                    Some(k.span.clone()),
                ));
            }
            check_template(&v.value, &v.span, diags);
        }
    }
    if r.has("pass_env") {
        let names = r.string_list("pass_env", false, diags).unwrap_or_default();
        for n in &names {
            if n.value.is_empty() || n.value.contains('=') || n.value.contains('\0') {
                diags.push(Diagnostic::error(
                    format!("invalid environment variable name `{}`", n.value),
                    Some(n.span.clone()),
                ));
            }
        }
        inh.pass_env = Some(names.into_iter().map(|n| n.value).collect());
    }
    inh
}

pub(super) fn read_task(
    r: &TableReader<'_, '_>,
    defaults: &Inheritable,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Task, Vec<Located<String>>)> {
    let id = match r.string("id", diags) {
        Some(id) => {
            if !valid_identifier(&id.value) {
                diags.push(
                    Diagnostic::error(
                        format!("invalid task id `{}`", id.value),
                        Some(id.span.clone()),
                    )
                    .with_help("use letters, digits, `_`, `-` and `.`, at most 100 characters"),
                );
            }
            id.value
        }
        None => {
            if !r.has("id") {
                diags.push(
                    Diagnostic::error(format!("{} has no `id`", r.label), Some(r.span()))
                        .with_help("add `id = \"extract_data\"`"),
                );
            }
            return None;
        }
    };
    let kind_name = r
        .string("kind", diags)
        .unwrap_or_else(|| Located::new("shell".into(), r.span()));
    let Some(def) = kinds::find(&kind_name.value) else {
        let mut d = Diagnostic::error(
            format!("unknown task kind `{}`", kind_name.value),
            Some(kind_name.span.clone()),
        );
        d = match did_you_mean(&kind_name.value, kinds::names()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!(
                "known kinds: {}",
                kinds::names().collect::<Vec<_>>().join(", ")
            )),
        };
        diags.push(d);
        return None;
    };
    let kind = (def.read)(r, &id, settings, diags)?;
    let deps = r.string_list("depends_on", true, diags).unwrap_or_default();
    let trigger_rule = match r.string("trigger_rule", diags) {
        Some(t) => match TriggerRule::parse(&t.value) {
            Some(rule) => rule,
            None => {
                let mut d =
                    Diagnostic::error(format!("unknown trigger_rule `{}`", t.value), Some(t.span));
                d = match did_you_mean(&t.value, TriggerRule::NAMES.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("use one of {}", TriggerRule::NAMES.join(", "))),
                };
                diags.push(d);
                TriggerRule::AllSuccess
            }
        },
        // A notification is most needed when something failed.
        None => def.trigger_rule,
    };
    let own = read_inheritable(r, settings, diags);
    // A task's own setting, else the pipeline's `[defaults]`, else the project's default.
    fn pick<T: Clone>(own: &Option<Located<T>>, defaults: &Option<Located<T>>, fallback: T) -> T {
        own.as_ref()
            .or(defaults.as_ref())
            .map(|v| v.value.clone())
            .unwrap_or(fallback)
    }
    let retries = pick(
        &own.retries,
        &defaults.retries,
        u64::from(settings.default_retries),
    ) as u32;
    let retry_delay = pick(
        &own.retry_delay,
        &defaults.retry_delay,
        Duration::from_secs(30),
    );
    let backoff = pick(
        &own.retry_backoff,
        &defaults.retry_backoff,
        Backoff::Exponential,
    );
    let max_retry_delay = pick(
        &own.max_retry_delay,
        &defaults.max_retry_delay,
        Duration::from_secs(600),
    );
    let timeout = pick(
        &own.timeout,
        &defaults.timeout,
        Some(settings.default_timeout),
    );
    let pool = own.pool.or_else(|| defaults.pool.clone()).map(|p| p.value);
    let mut env: Vec<(String, String)> = defaults
        .env
        .iter()
        .map(|(k, v)| (k.value.clone(), v.value.clone()))
        .collect();
    for (k, v) in own.env {
        env.retain(|(ek, _)| *ek != k.value);
        env.push((k.value, v.value));
    }
    let task = Task {
        id,
        description: r.string("description", diags).map(|d| d.value),
        kind,
        depends_on: deps.iter().map(|d| d.value.clone()).collect(),
        trigger_rule,
        retry: RetryPolicy {
            retries,
            retry_delay,
            backoff,
            max_retry_delay,
        },
        timeout,
        pool,
        env,
        pass_env: own
            .pass_env
            .or_else(|| defaults.pass_env.clone())
            .unwrap_or_default(),
        cwd: r.string("cwd", diags).map(|c| c.value),
    };
    Some((task, deps))
}
