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
use std::path::{Path, PathBuf};
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

    /// Which of nightshift's own secret variables its process needs: a built-in kind
    /// reads its connection's password, `notify` its channels' credentials.
    fn keeps_env(&self, c: &TryCtx) -> Vec<String> {
        c.connection_env.clone()
    }

    /// Where its process runs when the task sets no `cwd`: the nightshift project, or for
    /// dbt the dbt project, as dbt users run it (a profile's relative path resolves there).
    fn default_cwd(&self, c: &TryCtx) -> PathBuf {
        c.project_dir.clone()
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

/// argv of a built-in kind: this binary, re-executed as `nightshift __<kind> @FILE`. The
/// request (which may name a channel's inline webhook URL) travels in a file only this user
/// can read, in the try's own folder, never in argv where every local user sees it; the
/// child removes the file once read.
fn internal_argv(
    kind: &str,
    request: &impl serde::Serialize,
    p: &TryPaths<'_>,
) -> Result<Prepared, String> {
    internal_argv_in(kind, request, p, "request.json")
}

/// As [`internal_argv`], with the request in the file `name` of the try's folder (a publish
/// try writes its own and its dbt call's).
fn internal_argv_in(
    kind: &str,
    request: &impl serde::Serialize,
    p: &TryPaths<'_>,
    name: &str,
) -> Result<Prepared, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the nightshift binary: {e}"))?;
    let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let file = p.work_dir.join(name);
    write_private(&file, json.as_bytes())
        .map_err(|e| format!("cannot write the try's request `{}`: {e}", file.display()))?;
    Ok(Prepared {
        argv: vec![
            exe.to_string_lossy().into_owned(),
            kind.to_owned(),
            format!("@{}", file.display()),
        ],
        env: vec![],
    })
}

/// Writes a file readable by this user only (0600), in a folder of its own (0700).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
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

/// The environment variables that hold nightshift's own secrets: the web tokens, SMTP and
/// webhook credentials, the store's URL and password. A task's process never gets them
/// (unless its task lists one in `pass_env`); nightshift's own kinds get the variables of
/// the connections they use.
pub(crate) fn own_secret_names(settings: &nightshift_core::ProjectSettings) -> Vec<String> {
    let mut names: Vec<String> = vec![settings.web.token_env.clone(), "NIGHTSHIFT_TOKEN".into()];
    for ch in settings.channels.values() {
        names.extend(channel_env(ch));
    }
    if settings.store_url.is_some() {
        names.push(
            settings
                .store_password_env
                .clone()
                .unwrap_or_else(|| "PGPASSWORD".into()),
        );
    }
    names.sort();
    names.dedup();
    names
}

/// The variables a channel's credentials are read from.
pub(crate) fn channel_env(ch: &nightshift_core::project::Channel) -> Vec<String> {
    use nightshift_core::project::Channel;
    match ch {
        Channel::Webhook {
            url_env: Some(v), ..
        } => vec![v.clone()],
        Channel::Smtp {
            username_env,
            password_env,
            ..
        } => username_env.iter().chain(password_env).cloned().collect(),
        _ => vec![],
    }
}

/// The variables a connection is read from (its URL and password), which the built-in kinds
/// that use it need.
pub(crate) fn connection_env(settings: &nightshift_core::ProjectSettings) -> Vec<String> {
    use nightshift_core::project::Connection;
    let mut names = vec![];
    for c in settings.connections.values() {
        if let Connection::Postgres {
            url_env,
            password_env,
            ..
        } = c
        {
            names.extend(url_env.iter().cloned());
            names.push(password_env.clone().unwrap_or_else(|| "PGPASSWORD".into()));
        }
    }
    names
}

/// Masks the values of every secret a project knows of: the variables it lists in
/// `secrets`, nightshift's own, the connections', and tokens written in nightshift.toml.
/// Built once per set of values (a matcher over every encoded form is worth keeping).
pub(crate) fn masker(settings: &nightshift_core::ProjectSettings) -> crate::mask::Masker {
    static CACHE: std::sync::Mutex<Option<(Vec<String>, crate::mask::Masker)>> =
        std::sync::Mutex::new(None);
    let mut values: Vec<String> = settings
        .secrets
        .iter()
        .cloned()
        .chain(own_secret_names(settings))
        .chain(connection_env(settings))
        .filter_map(|n| crate::env::var(&n))
        .chain(settings.web.token.clone())
        .collect();
    values.sort();
    values.dedup();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    match cache.as_ref() {
        Some((v, m)) if *v == values => m.clone(),
        _ => {
            let m = crate::mask::Masker::new(&values);
            *cache = Some((values, m.clone()));
            m
        }
    }
}
