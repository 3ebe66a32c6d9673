//! How each task kind runs, one module each: `prepare` (its argv and environment, from the
//! run, the store and the project) and `conclude` (what it left behind: metrics, a reason
//! for its failure, dbt's node results, a sensor's next poke). nightshift's own kinds
//! re-execute this binary as `nightshift __<kind> REQUEST` with a JSON request. What a kind
//! *is* (its spec, keys and reader) lives in `nightshift_core::kinds`.

mod dbt;
mod extract;
mod load;
mod notify;
mod publish;
mod sensor;
mod shell;
mod sql;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use nightshift_core::TaskKind;
use nightshift_core::pipeline::Task;
use nightshift_core::template::Context;
use nightshift_store::DbtNode;

use crate::attempt::TryCtx;
use crate::executor::ChildOutcome;

/// The one place that knows which runner a kind has.
pub(crate) fn runner(kind: &TaskKind) -> &dyn Runner {
    match kind {
        TaskKind::Shell(s) => s,
        TaskKind::Extract(s) => s,
        TaskKind::Load(s) => s,
        TaskKind::Sensor(s) => s,
        TaskKind::Dbt(s) => s,
        TaskKind::Publish(s) => s,
        TaskKind::Notify(s) => s,
        TaskKind::Sql(s) => s,
    }
}

/// What a try of a kind needs to be prepared and concluded.
pub(crate) struct TryPaths<'a> {
    pub ctx: &'a Context,
    /// The try's own folder for artifacts (dbt's target path).
    pub work_dir: &'a Path,
    pub log_path: &'a Path,
}

/// A try's command line and the environment it adds.
#[derive(Default)]
pub(crate) struct Prepared {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What the kind left behind, read after its process ended.
#[derive(Default)]
pub(crate) struct Findings {
    pub metrics: BTreeMap<String, f64>,
    /// Why the try failed, better than its exit code.
    pub reason: Option<String>,
    pub dbt_nodes: Option<Vec<DbtNode>>,
    pub wait: Option<Wait>,
}

/// A sensor's verdict on a poke whose condition did not hold.
pub(crate) enum Wait {
    /// Poke again at this instant, holding no slot until then.
    Again(Timestamp),
    /// The wait is over: the task fails with this error and is not retried.
    GaveUp(String),
}

pub(crate) trait Runner {
    /// argv and environment; an error fails the try without a process.
    fn prepare(&self, c: &TryCtx, task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String>;

    /// How long one process of the try may run.
    fn timeout(&self, task: &Task) -> Option<Duration> {
        task.timeout
    }

    /// The signal that asks the try to stop before it is killed.
    fn stop_signal(&self) -> nix::sys::signal::Signal {
        nix::sys::signal::Signal::SIGTERM
    }

    /// Whether its output is dbt's JSON log, shown as text.
    fn json_log(&self) -> bool {
        false
    }

    /// Whether a failure is explained by its last `error:` line (nightshift's own kinds).
    fn says_why(&self) -> bool {
        true
    }

    /// Reads what the try left behind.
    fn conclude(
        &self,
        _c: &TryCtx,
        _task: &Task,
        _started: Timestamp,
        _p: &TryPaths<'_>,
        _outcome: &ChildOutcome,
    ) -> Findings {
        Findings::default()
    }
}

/// argv of a built-in kind: this binary, re-executed as `nightshift __<kind> REQUEST`.
fn internal_argv(kind: &str, request: &impl serde::Serialize) -> Result<Prepared, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the nightshift binary: {e}"))?;
    let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
    Ok(Prepared {
        argv: vec![exe.to_string_lossy().into_owned(), kind.to_owned(), json],
        env: vec![],
    })
}

/// A named connection as a child process needs it: paths made absolute.
fn resolve_connection(
    c: &TryCtx,
    name: &str,
) -> Result<nightshift_core::project::Connection, String> {
    use nightshift_core::project::Connection;
    match c.connections.get(name) {
        Some(Connection::Sqlite { path }) => Ok(Connection::Sqlite {
            path: c.project_dir.join(path).to_string_lossy().into_owned(),
        }),
        // Its URL and password stay in the environment, named, until the child connects.
        Some(pg @ Connection::Postgres { .. }) => Ok(pg.clone()),
        None => Err(format!("unknown connection `{name}`")),
    }
}

/// The values of the project's secret environment variables (short values are left alone:
/// masking `1` would garble every log).
pub(crate) fn secret_values(settings: &nightshift_core::ProjectSettings) -> Vec<String> {
    let mut names: Vec<&str> = settings.secrets.iter().map(String::as_str).collect();
    use nightshift_core::project::Channel;
    for ch in settings.channels.values() {
        match ch {
            Channel::Webhook {
                url_env: Some(v), ..
            } => names.push(v),
            Channel::Smtp {
                username_env,
                password_env,
                ..
            } => names.extend(username_env.iter().chain(password_env).map(String::as_str)),
            _ => {}
        }
    }
    // A database connection's password, and a URL read from the environment (it may carry
    // one), are secrets too.
    for c in settings.connections.values() {
        if let nightshift_core::project::Connection::Postgres {
            url_env,
            password_env,
            ..
        } = c
        {
            names.extend(url_env.iter().chain(password_env).map(String::as_str));
        }
    }
    names.push(&settings.web.token_env);
    names
        .into_iter()
        .filter_map(crate::env::var)
        // A token written in nightshift.toml is a secret too.
        .chain(settings.web.token.clone())
        .filter(|v| v.len() >= 4)
        .collect()
}
