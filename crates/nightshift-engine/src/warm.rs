//! The warm dbt runner's workers: one long-lived Python process per dbt (its virtual
//! environment), project, profiles folder and target, started by this engine outside any
//! try, since a try's containment ends every process of the try and a worker serves many.
//! A warm try's own process (`nightshift __dbt_warm`) hands its invocation to the worker over
//! a Unix socket in `.nightshift/dbt-warm/` (a folder only this user can enter) and streams
//! dbt's events into the try's log; its exit code is dbt's. The worker keeps the parsed
//! project between calls (see `warm_worker.py`). A worker whose client was stopped (a
//! timeout, a cancel) removes its socket and ends; the next call starts a fresh one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The worker program, written next to its sockets.
const SCRIPT: &str = include_str!("warm_worker.py");

struct Workers {
    live: HashMap<String, Child>,
    /// Workers that were replaced while still ending: reaped when they have.
    ending: Vec<Child>,
}

fn workers() -> &'static Mutex<Workers> {
    static W: OnceLock<Mutex<Workers>> = OnceLock::new();
    W.get_or_init(|| {
        Mutex::new(Workers {
            live: HashMap::new(),
            ending: vec![],
        })
    })
}

/// The folder and name of the socket of the worker for `key`, starting one when none is
/// alive and listening.
pub fn ensure(project: &Path, python: &Path, key: &str) -> Result<(PathBuf, String), String> {
    // Not under `.nightshift/dbt/`, whose folders are pipelines' (a pipeline may be called
    // `warm`, and target folders are pruned there).
    let dir = project.join(".nightshift/dbt-warm");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    }
    let script = dir.join("worker.py");
    if std::fs::read_to_string(&script).ok().as_deref() != Some(SCRIPT) {
        let aside = dir.join(format!("worker.py.{}", std::process::id()));
        std::fs::write(&aside, SCRIPT)
            .and_then(|()| std::fs::rename(&aside, &script))
            .map_err(|e| format!("cannot write `{}`: {e}", script.display()))?;
    }
    let pid = std::process::id();
    let name = format!("w-{pid}-{key}.sock");
    let mut w = workers().lock().unwrap_or_else(|p| p.into_inner());
    w.ending.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    if let Some(mut child) = w.live.remove(key) {
        let alive = matches!(child.try_wait(), Ok(None));
        // A worker that lost its client removes its socket first: it is ending.
        if alive && dir.join(&name).exists() {
            w.live.insert(key.to_owned(), child);
            return Ok((dir, name));
        }
        if alive {
            w.ending.push(child);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("w-{pid}-{key}.log")))
        .map_err(|e| format!("cannot open the warm worker's log: {e}"))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot open the warm worker's log: {e}"))?;
    let mut cmd = Command::new(python);
    cmd.arg("worker.py")
        .arg(&name)
        .arg(pid.to_string())
        .current_dir(&dir)
        // Each call brings its try's environment; the worker starts with only what finding
        // and importing Python needs.
        .env_clear()
        .env("PYTHONUNBUFFERED", "1")
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(path) = crate::env::path() {
        cmd.env("PATH", path);
    }
    if let Some(home) = crate::env::var("HOME") {
        cmd.env("HOME", home);
    }
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a signal to the engine's group (Ctrl-C) reaches the tries
        // through the engine's shutdown, not the worker in the middle of a call.
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start the warm dbt worker `{}`: {e}",
            python.display()
        )
    })?;
    w.live.insert(key.to_owned(), child);
    Ok((dir, name))
}
