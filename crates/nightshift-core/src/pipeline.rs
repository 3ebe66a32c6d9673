//! The pipeline model and its three-stage loading: TOML text → spanned tree → validated
//! [`Pipeline`], collecting every problem as a [`Diagnostic`] with its location.

use std::collections::HashMap;
use std::time::Duration;

use jiff::civil::{Date, Time};

use crate::diag::{Diagnostic, did_you_mean};
use crate::project::ProjectSettings;
use crate::template::{self, TemplateError};
use crate::time::{self, Schedule};
use crate::toml_reader::{Located, Span, TableReader, parse_document};

/// Which upstream outcomes let a task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerRule {
    /// Every upstream succeeded (the default).
    AllSuccess,
    /// Every upstream finished, whatever its state.
    AllDone,
    /// At least one upstream failed.
    OneFailed,
    /// No upstream failed (skipped ones are fine).
    NoneFailed,
}

impl TriggerRule {
    pub const NAMES: &'static [&'static str] =
        &["all_success", "all_done", "one_failed", "none_failed"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all_success" => TriggerRule::AllSuccess,
            "all_done" => TriggerRule::AllDone,
            "one_failed" => TriggerRule::OneFailed,
            "none_failed" => TriggerRule::NoneFailed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Constant,
    Exponential,
}

/// When and how often a task is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub retry_delay: Duration,
    pub backoff: Backoff,
    pub max_retry_delay: Duration,
}

impl RetryPolicy {
    /// Delay before try `next_try` (2 for the first retry). `jitter` in [0, 1) spreads retries
    /// of many tasks so they do not hit a recovering system at the same instant: the delay
    /// is drawn from [d/2, d] ("equal jitter") where d is the capped exponential delay.
    pub fn delay_before(&self, next_try: u32, jitter: f64) -> Duration {
        let base = match self.backoff {
            Backoff::Constant => self.retry_delay,
            Backoff::Exponential => {
                let exp = next_try.saturating_sub(2).min(30);
                self.retry_delay.saturating_mul(1u32 << exp)
            }
        };
        let capped = base.min(self.max_retry_delay.max(self.retry_delay));
        match self.backoff {
            Backoff::Constant => capped,
            Backoff::Exponential => capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellSpec {
    /// argv; templated per element.
    pub command: Vec<String>,
    /// Run `command[0]` with `sh -c`; templates are then refused (use `$NIGHTSHIFT_DS`).
    pub shell: bool,
}

/// What an extract does when a table's row count is outside its bounds.
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
    pub ds: String,
    pub start: String,
    pub end: String,
    pub run_id: String,
    /// Row counts per table of the latest successful runs before this one, newest first.
    pub history: std::collections::BTreeMap<String, Vec<i64>>,
}

/// What a sensor waits for, for the run's interval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorCondition {
    /// True when the query's first column of its first row is neither NULL, 0 nor ''.
    /// Bound parameters as for extracts.
    Sql { connection: String, sql: String },
    /// True when the path (templated, relative to the project) exists.
    Path { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorSpec {
    pub condition: SensorCondition,
    /// Between pokes the task holds no slot.
    pub poke_interval: Duration,
}

/// What the engine hands a sensor poke (`nightshift __sensor REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SensorRequest {
    /// Connection paths and the condition path made absolute, templates rendered.
    pub condition: SensorCondition,
    pub connection: Option<crate::project::Connection>,
    pub ds: String,
    pub start: String,
    pub end: String,
    pub run_id: String,
}

/// Exit code of a sensor poke whose condition is not true yet (EX_TEMPFAIL).
pub const SENSOR_NOT_YET: i32 = 75;

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

/// Write-audit-publish: makes the tested ds partition of each output visible under
/// `<output>/<name>/dt=<ds>/` with a `_manifest.json`, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// dbt models to publish.
    pub outputs: Vec<String>,
    /// Folder of published partitions, relative to the project.
    pub output: String,
    /// The dbt project holding the audited models (for `dbt run-operation nightshift_export`).
    pub dbt: DbtSpec,
}

/// What the engine hands a publish child (`nightshift __publish REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublishRequest {
    pub outputs: Vec<String>,
    pub root: String,
    /// `dbt run-operation nightshift_export` and its flags, without `--args`.
    pub dbt_argv: Vec<String>,
    pub dbt_env: Vec<(String, String)>,
    pub ds: String,
    pub run_id: String,
    /// dbt test results of this run: status → count.
    pub checks: std::collections::BTreeMap<String, u32>,
    pub dbt_invocation_id: Option<String>,
}

/// Sends a run summary to channels of nightshift.toml (default: all of them).
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
    pub pipeline: String,
    pub run_id: String,
    pub ds: String,
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

pub const DBT_COMMANDS: &[&str] = &[
    "run",
    "test",
    "build",
    "seed",
    "snapshot",
    "source freshness",
];

/// The closed set of task kinds. Every kind ends up as a child process.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    Shell(ShellSpec),
    Extract(ExtractSpec),
    Sensor(SensorSpec),
    Dbt(DbtSpec),
    Publish(PublishSpec),
    Notify(NotifySpec),
}

impl TaskKind {
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Shell(_) => "shell",
            TaskKind::Extract(_) => "extract",
            TaskKind::Sensor(_) => "sensor",
            TaskKind::Dbt(_) => "dbt",
            TaskKind::Publish(_) => "publish",
            TaskKind::Notify(_) => "notify",
        }
    }
}

/// The parameters an extract query may use.
pub const SQL_PARAMS: &[&str] = &["start", "end", "ds", "run_id"];

/// Named parameters (`:name`) in a SQL text, outside string literals and comments, with
/// their byte offsets.
pub fn sql_params(sql: &str) -> Vec<(usize, String)> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && (i == 0 || b[i - 1] != b':') =>
            {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, sql[start + 1..i].to_owned()));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub description: Option<String>,
    pub kind: TaskKind,
    pub depends_on: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub pool: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

impl Task {
    pub fn max_tries(&self) -> u32 {
        self.retry.retries + 1
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub start_date: Date,
    pub end_date: Option<Date>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub deadline: Option<Time>,
    /// In file order.
    pub tasks: Vec<Task>,
    /// Derived once at load, so that scheduling passes never recompute the graph.
    index: HashMap<String, usize>,
    topo: Vec<usize>,
    rank: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntervalsError {
    #[error(transparent)]
    Time(#[from] time::Error),
    #[error("the range holds more than {0} intervals; take it in parts")]
    TooMany(usize),
}

/// Kahn-style layering in file order; tasks left out form a cycle (reported at validation).
fn topo_indices(tasks: &[Task], index: &HashMap<String, usize>) -> Vec<usize> {
    let mut placed = vec![false; tasks.len()];
    let mut out = Vec::with_capacity(tasks.len());
    loop {
        let before = out.len();
        for (i, t) in tasks.iter().enumerate() {
            if !placed[i]
                && t.depends_on
                    .iter()
                    .all(|d| index.get(d).is_some_and(|&j| placed[j]))
            {
                placed[i] = true;
                out.push(i);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

impl Pipeline {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    /// Tasks ordered so that every task follows its upstreams (validated acyclic).
    pub fn topological_order(&self) -> Vec<&Task> {
        self.topo.iter().map(|&i| &self.tasks[i]).collect()
    }

    /// A task's position in [`Pipeline::topological_order`].
    pub fn topo_rank(&self, id: &str) -> usize {
        self.index
            .get(id)
            .map(|&i| self.rank[i])
            .unwrap_or(usize::MAX)
    }

    /// Direct downstream tasks of `id`.
    pub fn downstream(&self, id: &str) -> Vec<&Task> {
        self.tasks
            .iter()
            .filter(|t| t.depends_on.iter().any(|d| d == id))
            .collect()
    }

    /// `roots` and every task downstream of them, transitively, roots first.
    pub fn with_downstream(&self, roots: Vec<String>) -> Vec<String> {
        let mut ids = roots;
        let mut i = 0;
        while i < ids.len() {
            for d in self.downstream(&ids[i]) {
                if !ids.contains(&d.id) {
                    ids.push(d.id.clone());
                }
            }
            i += 1;
        }
        ids
    }

    /// The first instant a run's interval may start at.
    pub fn start_instant(&self) -> jiff::Timestamp {
        time::resolve(
            self.schedule.tz(),
            self.start_date.to_datetime(Time::midnight()),
        )
    }

    /// Every ended interval (by `now`) whose ds is in [from, to], oldest first, at most
    /// `limit`. The flag says whether intervals of the range had not ended yet.
    pub fn intervals_between(
        &self,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
        now: jiff::Timestamp,
        limit: usize,
    ) -> Result<(Vec<time::DataInterval>, bool), IntervalsError> {
        let mut out = vec![];
        let mut start = self.schedule.next_fire_inclusive(time::resolve(
            self.schedule.tz(),
            from.to_datetime(Time::midnight()),
        ))?;
        loop {
            let iv = time::DataInterval {
                start,
                end: self.schedule.next_fire(start)?,
            };
            if self.schedule.ds(&iv) > to {
                return Ok((out, false));
            }
            if iv.end > now {
                return Ok((out, true));
            }
            if iv.start >= self.start_instant() || self.schedule.ds(&iv) >= from {
                out.push(iv);
            }
            start = iv.end;
            if out.len() > limit {
                return Err(IntervalsError::TooMany(limit));
            }
        }
    }

    /// Whether an interval falls in [start_date, end_date].
    pub fn in_range(&self, iv: &time::DataInterval) -> bool {
        if iv.start < self.start_instant() {
            return false;
        }
        match self.end_date {
            Some(end) => self.schedule.ds(iv) <= end,
            None => true,
        }
    }
}

const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
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
];
const COMMON_TASK_KEYS: &[&str] = &[
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
    "cwd",
];
const SHELL_KEYS: &[&str] = &["command", "shell"];
const EXTRACT_KEYS: &[&str] = &[
    "connection",
    "table",
    "output",
    "min_ratio",
    "on_incomplete",
];
const SENSOR_KEYS: &[&str] = &["connection", "sql", "path", "poke_interval"];
const DBT_KEYS: &[&str] = &[
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
];
const PUBLISH_KEYS: &[&str] = &[
    "outputs",
    "output",
    "project_dir",
    "profiles_dir",
    "target",
    "executable",
];
const NOTIFY_KEYS: &[&str] = &["channels"];
const TABLE_KEYS: &[&str] = &["name", "sql"];
const KINDS: &[&str] = &["shell", "extract", "sensor", "dbt", "publish", "notify"];

/// The keys a task of this kind may have, beside the common ones.
fn kind_keys(kind: Option<&str>) -> &'static [&'static str] {
    match kind.unwrap_or("shell") {
        "shell" => SHELL_KEYS,
        "extract" => EXTRACT_KEYS,
        "sensor" => SENSOR_KEYS,
        "dbt" => DBT_KEYS,
        "publish" => PUBLISH_KEYS,
        "notify" => NOTIFY_KEYS,
        _ => &[],
    }
}

/// Whether a name is safe as an identifier and as one path component.
pub fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !s.starts_with('.')
}

/// Task-level settings that `[defaults]` may provide.
#[derive(Default)]
struct Inheritable {
    retries: Option<Located<u64>>,
    retry_delay: Option<Located<Duration>>,
    retry_backoff: Option<Located<Backoff>>,
    max_retry_delay: Option<Located<Duration>>,
    timeout: Option<Located<Option<Duration>>>,
    pool: Option<Located<String>>,
    env: Vec<(Located<String>, Located<String>)>,
}

fn read_inheritable(
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
                    .with_help("write a number with a unit: `500ms`, `10s`, `5m`, `2h`, `1h30m`"),
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
    inh
}

/// Points a template problem at the right characters inside a string literal.
fn check_template(s: &str, span: &Span, diags: &mut Vec<Diagnostic>) {
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
            diags.push(
                Diagnostic::error(
                    format!("unknown time zone `{tz_text}`"),
                    tz_name.as_ref().map(|t| t.span.clone()),
                )
                .with_help(
                    "use an IANA zone name such as `UTC`, `Europe/Berlin` or `America/New_York`",
                ),
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
            &[COMMON_TASK_KEYS, kind_keys(kind)],
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
    if let Some(cycle) = find_cycle(&tasks) {
        let first = &cycle[0];
        diags.push(
            Diagnostic::error(
                format!("dependency cycle: {}", cycle.join(" → ")),
                id_spans.get(first).cloned(),
            )
            .with_help("a pipeline is a DAG: remove one of these `depends_on` entries"),
        );
    }

    let index: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    let topo = topo_indices(&tasks, &index);
    let mut rank = vec![usize::MAX; tasks.len()];
    for (r, &i) in topo.iter().enumerate() {
        rank[i] = r;
    }
    Some(Pipeline {
        name,
        description,
        schedule: schedule?,
        start_date: start_date?,
        end_date: end_date.map(|d| d.value),
        catchup,
        max_active_runs,
        max_active_tasks,
        deadline,
        index,
        topo,
        rank,
        tasks,
    })
}

fn read_task(
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
    let kind = match kind_name.value.as_str() {
        "shell" => {
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
                    .with_help(
                        "with `shell = true`, `command` is one script string run by `sh -c`",
                    ),
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
            TaskKind::Shell(ShellSpec {
                command: command.into_iter().map(|c| c.value).collect(),
                shell,
            })
        }
        "extract" => TaskKind::Extract(read_extract(r, &id, settings, diags)?),
        "sensor" => TaskKind::Sensor(read_sensor(r, &id, settings, diags)?),
        "dbt" => TaskKind::Dbt(read_dbt(r, &id, diags)?),
        "publish" => TaskKind::Publish(read_publish(r, &id, diags)?),
        "notify" => {
            let channels: Vec<String> = match r.string_list("channels", true, diags) {
                Some(list) => {
                    for c in &list {
                        if !settings.channels.contains_key(&c.value) {
                            let mut d = Diagnostic::error(
                                format!("unknown channel `{}` in task `{id}`", c.value),
                                Some(c.span.clone()),
                            );
                            d = match did_you_mean(
                                &c.value,
                                settings.channels.keys().map(String::as_str),
                            ) {
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
                diags.push(Diagnostic::error(format!("notify task `{id}` has no channel"), Some(r.span())).with_help("declare one in nightshift.toml: `[channels.ops]` with `kind = \"log\"`"));
            }
            TaskKind::Notify(NotifySpec { channels })
        }
        other => {
            let mut d = Diagnostic::error(
                format!("unknown task kind `{other}`"),
                Some(kind_name.span.clone()),
            );
            d = match did_you_mean(other, KINDS.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("known kinds: {}", KINDS.join(", "))),
            };
            diags.push(d);
            return None;
        }
    };
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
        None if matches!(kind, TaskKind::Notify(_)) => TriggerRule::AllDone,
        None => TriggerRule::AllSuccess,
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
        cwd: r.string("cwd", diags).map(|c| c.value),
    };
    Some((task, deps))
}

fn check_connection(
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

fn check_sql_params(sql: &Located<String>, diags: &mut Vec<Diagnostic>) {
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

fn read_publish(
    r: &TableReader<'_, '_>,
    id: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<PublishSpec> {
    let outputs = r.string_list("outputs", true, diags).unwrap_or_default();
    if outputs.is_empty() {
        diags.push(
            Diagnostic::error(
                format!("publish task `{id}` has no `outputs`"),
                Some(r.span()),
            )
            .with_help("add `outputs = [\"fct_daily_revenue\"]`: the dbt models to publish"),
        );
        return None;
    }
    for o in &outputs {
        if !valid_identifier(&o.value) {
            diags.push(Diagnostic::error(
                format!("invalid output name `{}`", o.value),
                Some(o.span.clone()),
            ));
        }
    }
    let output = r
        .string("output", diags)
        .map(|o| o.value)
        .unwrap_or_else(|| "published".to_owned());
    if output.split('/').any(|c| c == "..") || output.starts_with('/') {
        diags.push(Diagnostic::error(
            format!("`output` of task `{id}` must stay inside the project"),
            r.raw("output").map(|v| v.span()),
        ));
    }
    let project_dir = r
        .string("project_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| "dbt".to_owned());
    let profiles_dir = r
        .string("profiles_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| project_dir.clone());
    Some(PublishSpec {
        outputs: outputs.into_iter().map(|o| o.value).collect(),
        output,
        dbt: DbtSpec {
            command: vec!["run-operation".into(), "nightshift_export".into()],
            project_dir,
            profiles_dir,
            target: r.string("target", diags).map(|t| t.value),
            select: vec![],
            exclude: vec![],
            selector: None,
            threads: None,
            executable: r.string("executable", diags).map(|t| t.value),
            vars: vec![],
            args: vec![],
        },
    })
}

fn read_dbt(r: &TableReader<'_, '_>, id: &str, diags: &mut Vec<Diagnostic>) -> Option<DbtSpec> {
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
    let project_dir = r
        .string("project_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| "dbt".to_owned());
    let profiles_dir = r
        .string("profiles_dir", diags)
        .map(|p| p.value)
        .unwrap_or_else(|| project_dir.clone());
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

fn read_sensor(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<SensorSpec> {
    let connection = r.string("connection", diags);
    let sql = r.string("sql", diags);
    let path = r.string("path", diags);
    let condition = match (connection, sql, path) {
        (Some(c), Some(q), None) => {
            check_connection(&c, id, settings, diags);
            check_sql_params(&q, diags);
            SensorCondition::Sql {
                connection: c.value,
                sql: q.value,
            }
        }
        (None, None, Some(p)) => {
            check_template(&p.value, &p.span, diags);
            SensorCondition::Path { path: p.value }
        }
        _ => {
            diags.push(
                Diagnostic::error(format!("sensor `{id}` needs either `connection` and `sql`, or `path`"), Some(r.span()))
                    .with_help("e.g. `connection = \"shop\"` and `sql = \"SELECT COUNT(*) FROM source_batches WHERE business_date = :ds\"`"),
            );
            return None;
        }
    };
    let poke_interval = match r.string("poke_interval", diags) {
        Some(v) => match time::parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                diags.push(
                    Diagnostic::error(
                        format!("invalid duration `{}` for `poke_interval`", v.value),
                        Some(v.span),
                    )
                    .with_help("e.g. `30s` or `5m`"),
                );
                Duration::from_secs(60)
            }
        },
        None => Duration::from_secs(60),
    };
    Some(SensorSpec {
        condition,
        poke_interval,
    })
}

fn read_extract(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<ExtractSpec> {
    let connection = match r.string("connection", diags) {
        Some(c) => {
            check_connection(&c, id, settings, diags);
            c.value
        }
        None => {
            if !r.has("connection") {
                diags.push(
                    Diagnostic::error(
                        format!("extract task `{id}` has no `connection`"),
                        Some(r.span()),
                    )
                    .with_help("add `connection = \"shop\"`, a connection of nightshift.toml"),
                );
            }
            return None;
        }
    };
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
    let output = r
        .string("output", diags)
        .map(|o| o.value)
        .unwrap_or_else(|| "data/raw".to_owned());
    if output.split('/').any(|c| c == "..") || output.starts_with('/') {
        diags.push(
            Diagnostic::error(
                format!("`output` of task `{id}` must stay inside the project"),
                r.raw("output").map(|v| v.span()),
            )
            .with_help("write a relative path such as `data/raw`"),
        );
    }
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

/// A cycle as a list of task ids (first repeated at the end), if the graph has one.
fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut mark = vec![0u8; tasks.len()];
    let mut stack: Vec<usize> = vec![];
    fn visit(
        i: usize,
        tasks: &[Task],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        mark[i] = 1;
        stack.push(i);
        for d in &tasks[i].depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            if mark[j] == 1 {
                let pos = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[pos..].iter().map(|&s| tasks[s].id.clone()).collect();
                cycle.push(tasks[j].id.clone());
                return Some(cycle);
            }
            if mark[j] == 0
                && let Some(c) = visit(j, tasks, index, mark, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    for i in 0..tasks.len() {
        if mark[i] == 0
            && let Some(c) = visit(i, tasks, &index, &mut mark, &mut stack)
        {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::render;
    use std::path::Path;

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
                "error: unknown key `retires` in `[defaults]`\n --> pipelines/nightly.toml:11:1"
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
            .replace("\"10s\"", "\"10 seconds\"")
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
        assert!(out.contains("invalid duration `10 seconds`"), "{out}");
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
