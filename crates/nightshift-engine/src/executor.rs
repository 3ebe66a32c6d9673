//! Runs one try as a child process: its own process group, stdout and stderr to a
//! timestamped log file, a timeout that kills the whole group, and figures reported through
//! the file named by `NIGHTSHIFT_METRICS`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::procs;

/// Why the executor stopped a process before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Timeout,
    /// The scheduler is shutting down.
    Shutdown,
    /// Another engine owns this try now (our lease expired).
    LostClaim,
}

pub struct ChildSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log_path: PathBuf,
    pub metrics_path: PathBuf,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    /// Sent to the group first when the try must stop (dbt cancels queries on SIGINT).
    pub stop_signal: Signal,
    /// stdout is dbt's JSON log: keep its messages, readable, in the try's log.
    pub dbt_json_log: bool,
    /// Secret values, written as `***` wherever they appear in the log.
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Killed(KillReason),
    SpawnFailed(String),
}

#[derive(Debug, Clone)]
pub struct ChildOutcome {
    pub exit: Exit,
    /// Summed numeric figures from the metrics file.
    pub metrics: BTreeMap<String, f64>,
    pub metrics_warnings: Vec<String>,
    /// The last `error: …` line the child wrote to stderr (nightshift's own kinds report
    /// their failure that way), without the prefix.
    pub last_error: Option<String>,
}

/// A started child; `wait` drives it to its end.
pub struct Running {
    child: tokio::process::Child,
    pub pid: u32,
    log: Arc<Mutex<LazyLog>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    spec: ChildSpec,
}

/// Longest log line kept whole; longer lines are split so one line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

/// A try's log file, created on its first line: a task that prints nothing costs no file
/// (creating inodes is a visible share of a short task's cost).
pub struct LazyLog {
    path: PathBuf,
    file: Option<File>,
    mask: Vec<String>,
    last_error: Option<String>,
}

impl LazyLog {
    pub fn new(path: PathBuf) -> Self {
        LazyLog {
            path,
            file: None,
            mask: vec![],
            last_error: None,
        }
    }

    pub fn masking(mut self, mask: Vec<String>) -> Self {
        self.mask = mask;
        self
    }

    fn file(&mut self) -> Option<&mut File> {
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        self.file.as_mut()
    }
}

fn write_log_line(log: &Mutex<LazyLog>, clock: &dyn Clock, stream: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let ts = clock.now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
    for secret in &log.mask {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    if stream == "err"
        && let Some(e) = text.strip_prefix("error: ")
    {
        log.last_error = Some(e.chars().take(2000).collect());
    }
    if let Some(f) = log.file() {
        let _ = writeln!(f, "{ts} [{stream}] {text}");
    }
}

/// Writes a line into a try's log as the orchestrator (not the task).
pub fn log_note(path: &Path, clock: &dyn Clock, text: &str) {
    write_log_line(
        &Mutex::new(LazyLog::new(path.to_owned())),
        clock,
        "nightshift",
        text.as_bytes(),
    );
}

fn spawn_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    log: Arc<Mutex<LazyLog>>,
    clock: Arc<dyn Clock>,
    stream: &'static str,
    dbt_json: bool,
) -> tokio::task::JoinHandle<()> {
    let emit = move |log: &Mutex<LazyLog>, clock: &dyn Clock, line: &[u8]| {
        if dbt_json && let Some(text) = crate::dbt::log_line(&String::from_utf8_lossy(line)) {
            write_log_line(log, clock, stream, text.as_bytes());
            return;
        }
        write_log_line(log, clock, stream, line);
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        let mut line: Vec<u8> = Vec::new();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    emit(&log, clock.as_ref(), &line);
                    line.clear();
                } else {
                    line.push(b);
                    if line.len() >= MAX_LINE {
                        emit(&log, clock.as_ref(), &line);
                        line.clear();
                    }
                }
            }
        }
        if !line.is_empty() {
            emit(&log, clock.as_ref(), &line);
        }
    })
}

/// Starts the process. Relative program paths (`./scripts/x.sh`) resolve against `cwd`.
pub fn spawn(spec: ChildSpec, clock: Arc<dyn Clock>) -> Result<Running, String> {
    if let Some(dir) = spec.log_path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        let msg = format!("cannot create log folder `{}`: {e}", dir.display());
        return Err(msg);
    }
    let log = Arc::new(Mutex::new(
        LazyLog::new(spec.log_path.clone()).masking(spec.mask.clone()),
    ));
    // The metrics path names a new try number, so no earlier file can be there.
    let program = {
        let p = Path::new(&spec.argv[0]);
        if p.is_relative() && spec.argv[0].contains('/') {
            spec.cwd.join(p)
        } else {
            p.to_path_buf()
        }
    };
    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("NIGHTSHIFT_METRICS", &spec.metrics_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout can kill the task with every process it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start `{}`: {e}", spec.argv[0]);
            write_log_line(&log, clock.as_ref(), "nightshift", msg.as_bytes());
            return Err(msg);
        }
    };
    let pid = child.id().unwrap_or(0);
    let mut readers = vec![];
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(
            out,
            log.clone(),
            clock.clone(),
            "out",
            spec.dbt_json_log,
        ));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, log.clone(), clock.clone(), "err", false));
    }
    Ok(Running {
        child,
        pid,
        log,
        readers,
        spec,
    })
}

impl Running {
    /// Waits for the process to end, killing its group on timeout or when `cancel` says so.
    /// When this returns, no process of the group is alive.
    pub async fn wait(
        mut self,
        mut cancel: watch::Receiver<Option<KillReason>>,
        clock: Arc<dyn Clock>,
    ) -> ChildOutcome {
        let timeout_after = self.spec.timeout;
        let timeout = async move {
            match timeout_after {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            loop {
                if let Some(r) = *cancel.borrow_and_update() {
                    return r;
                }
                if cancel.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        let pid = self.pid;
        let killed = tokio::select! {
            _ = self.child.wait() => None,
            _ = timeout => Some(KillReason::Timeout),
            r = cancelled => Some(r),
        };
        if let Some(r) = killed {
            let note = match r {
                KillReason::Timeout => format!(
                    "timed out after {}; killing the process group",
                    nightshift_core::time::format_duration(timeout_after.unwrap_or_default())
                ),
                KillReason::Shutdown => {
                    "the scheduler is shutting down; killing the process group".to_owned()
                }
                KillReason::LostClaim => {
                    "this try lost its claim to another scheduler; killing the process group"
                        .to_owned()
                }
            };
            write_log_line(&self.log, clock.as_ref(), "nightshift", note.as_bytes());
            procs::signal_group(pid, self.spec.stop_signal);
            let _ = tokio::time::timeout(self.spec.kill_grace, self.child.wait()).await;
        }
        // Leftovers (a backgrounded grandchild, a member that ignored SIGTERM) must not outlive
        // the try: SIGKILL the group and wait until the kernel has them gone, so the store
        // never says "finished" while a process of the try lives.
        procs::signal_group(pid, Signal::SIGKILL);
        let status = self.child.wait().await.ok();
        let grace = self.spec.kill_grace;
        if procs::group_exists(pid) {
            let _ = tokio::task::spawn_blocking(move || {
                procs::kill_group_blocking(pid, grace.min(Duration::from_millis(100)))
            })
            .await;
        }
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        let exit = match (killed, status) {
            (Some(k), _) => Exit::Killed(k),
            (None, Some(s)) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Code(-1),
            },
            (None, None) => Exit::Code(-1),
        };
        let (metrics, metrics_warnings) = read_metrics(&self.spec.metrics_path);
        for w in &metrics_warnings {
            write_log_line(&self.log, clock.as_ref(), "nightshift", w.as_bytes());
        }
        let last_error = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error
            .take();
        ChildOutcome {
            exit,
            metrics,
            metrics_warnings,
            last_error,
        }
    }
}

/// Reads the JSON-lines metrics file: each line an object of figures; numbers with the same
/// name are summed, anything else is reported and skipped.
pub fn read_metrics(path: &Path) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut sums = BTreeMap::new();
    let mut warnings = vec![];
    let Ok(text) = std::fs::read_to_string(path) else {
        return (sums, warnings);
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    match v.as_f64() {
                        Some(n) if n.is_finite() => *sums.entry(k).or_insert(0.0) += n,
                        _ => warnings.push(format!("metrics line {}: `{k}` is not a number; ignored", i + 1)),
                    }
                }
            }
            _ => warnings.push(format!(
                "metrics line {}: expected a JSON object such as {{\"rows_loaded\": 12417}}; ignored",
                i + 1
            )),
        }
    }
    (sums, warnings)
}
