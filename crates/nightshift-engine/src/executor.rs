//! Runs one try as a child process and supervises it to its end, on threads of its own:
//! the store, the scheduler loop and the async runtime are never in its way (the engine
//! only hands the try to its thread; even the start happens there). It drains
//! stdout and stderr into a buffered, size-capped log, enforces the timeout, kills on
//! request, and when the main process exits ends every process the try started
//! ([`crate::contain`]). Figures come from the file named by `NIGHTSHIFT_METRICS`.
//!
//! Threads per try: the try's own starts the process and supervises it — one poll over
//! both pipes and an eventfd rung with each message (exit, stop), so output is drained
//! while the supervisor waits — and, unless the spawner helper started the process and
//! reports its exit, one waits for the main process. A log write that blocks (a slow
//! disk) delays the try's timeout by as long; a full disk fails the write at once, and
//! the log says so (see [`crate::trylog`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{PipeReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sys::signal::Signal;

use crate::contain::Cell;
use crate::procs;
use crate::spawner::{self, SpawnError};
pub use crate::trylog::log_note;
use crate::trylog::{LOG_BUFFER, LogSink};
use nightshift_core::clock::Clock;

/// Why the executor stopped a process before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Timeout,
    /// The scheduler is shutting down.
    Shutdown,
    /// Another engine owns this try now (our lease expired).
    LostClaim,
    /// An operator cancelled the try's run (already recorded in the store).
    Cancelled,
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
    pub mask: crate::mask::Masker,
    /// Variables of nightshift's environment the task must not inherit.
    pub env_remove: Vec<String>,
    /// The log keeps its head and its tail within about this many bytes.
    pub log_max_bytes: u64,
    /// Where the try's processes live, so all of them can be ended.
    pub cell: Cell,
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
    /// When the main process ended (not when its pipes closed).
    pub end: Timestamp,
    /// Summed numeric figures from the metrics file.
    pub metrics: BTreeMap<String, f64>,
    pub metrics_warnings: Vec<String>,
    /// The last `error: …` line the child wrote to stderr (nightshift's own kinds report
    /// their failure that way), without the prefix.
    pub last_error: Option<String>,
    /// The log could not be written, or was cut at its cap: said on the try, never
    /// changing its outcome.
    pub log_warning: Option<String>,
}

impl ChildOutcome {
    /// The outcome of a try whose process could not be started.
    pub fn not_started(msg: String, end: Timestamp) -> ChildOutcome {
        ChildOutcome {
            exit: Exit::SpawnFailed(msg),
            end,
            metrics: BTreeMap::new(),
            metrics_warnings: vec![],
            last_error: None,
            log_warning: None,
        }
    }
}

/// Longest log line kept whole; longer lines are split so one line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

/// One of the try's output streams, as the reader drains it.
struct Stream {
    pipe: PipeReader,
    name: &'static str,
    dbt_json: bool,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
    open: bool,
}

impl Stream {
    fn emit(&self, sink: &mut LogSink, line: &[u8]) {
        if self.dbt_json
            && let Some(text) = crate::dbt::log_line(&String::from_utf8_lossy(line))
        {
            sink.line_stamped(self.name, text.as_bytes());
        } else {
            sink.line_stamped(self.name, line);
        }
    }

    /// Puts what was read into the log, line by line; keeps an unfinished line.
    fn take(&mut self, sink: &mut LogSink, mut rest: &[u8]) {
        while let Some(i) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() {
                self.emit(sink, &rest[..i]);
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.partial);
                self.emit(sink, &line);
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE {
            let tail = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, tail);
            self.emit(sink, &line);
        }
    }
}

/// The supervisor's view of a running try: its output pipes, drained into the log as they
/// fill, and its mailbox. One thread does both, so a try costs one thread: a wide fan-out
/// starts hundreds of tries a second, and a thread's start and end cost about what a small
/// task's exec does.
struct Watch {
    streams: [Stream; 2],
    log: Arc<Mutex<LogSink>>,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Msg>,
    bell: Arc<OwnedFd>,
}

thread_local! {
    /// The buffer pipes are read into, one per thread: tries run on reused threads
    /// (`crate::crew`), and allocating and zeroing it for every try of a wide fan-out cost
    /// more than reading their few bytes.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What the supervisor waited for.
enum Next {
    Msg(Msg),
    /// The deadline passed first.
    Timeout,
    /// No sender is left: nothing will come.
    Closed,
}

impl Watch {
    fn new(
        out: PipeReader,
        err: PipeReader,
        mailbox: (mpsc::Receiver<Msg>, Arc<OwnedFd>),
        log: Arc<Mutex<LogSink>>,
        clock: Arc<dyn Clock>,
        dbt_json: bool,
    ) -> Watch {
        let stream = |pipe, name, dbt_json| Stream {
            pipe,
            name,
            dbt_json,
            partial: Vec::new(),
            open: true,
        };
        Watch {
            streams: [stream(out, "out", dbt_json), stream(err, "err", false)],
            log,
            clock,
            rx: mailbox.0,
            bell: mailbox.1,
        }
    }

    /// Drains the try's output into its log until a message comes or `deadline` passes.
    fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Next::Msg(m),
                Err(mpsc::TryRecvError::Disconnected) => return Next::Closed,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let left = match deadline {
                Some(d) => match d.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return Next::Timeout,
                    left => Some(left),
                },
                None => None,
            };
            self.wait(left);
        }
    }

    /// Drains the output until both pipes are closed or `deadline` passes; messages are
    /// not read (the try has ended), and a mailbox whose senders are gone does not end it.
    fn drain(&mut self, deadline: Instant) {
        while self.streams.iter().any(|s| s.open) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.wait(Some(left));
        }
    }

    /// One poll over the open pipes and the mailbox's bell; what is ready is read.
    fn wait(&mut self, timeout: Option<Duration>) {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let open: Vec<usize> = (0..self.streams.len())
            .filter(|i| self.streams[*i].open)
            .collect();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|i| PollFd::new(&self.streams[*i].pipe, PollFlags::IN))
            .collect();
        fds.push(PollFd::new(&*self.bell, PollFlags::IN));
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return,
            Err(_) => {
                // Cannot happen with valid descriptors; a short sleep keeps a broken poll from
                // spinning while the mailbox still works.
                drop(fds);
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
        let rang = fds.last().is_some_and(|f| !f.revents().is_empty());
        let ready: Vec<usize> = open
            .into_iter()
            .zip(&fds)
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        if rang {
            // Reset the bell before the mailbox is read again: a message sent after that
            // read rings it anew.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&*self.bell, &mut count);
        }
        if ready.is_empty() {
            return;
        }
        READ_BUFFER.with_borrow_mut(|buf| {
            if buf.is_empty() {
                buf.resize(LOG_BUFFER, 0);
            }
            for i in ready {
                let s = &mut self.streams[i];
                let n = match s.pipe.read(buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                if n == 0 {
                    s.open = false;
                    continue;
                }
                let mut sink = self.log.lock().unwrap_or_else(|p| p.into_inner());
                sink.stamp_now(self.clock.as_ref());
                s.take(&mut sink, &buf[..n]);
                // The pipe is drained: put what we have in the file for live tailing.
                if n < buf.len() {
                    sink.flush();
                }
            }
        });
    }

    /// Unfinished last lines, if any, are lines too.
    fn finish_lines(&mut self) {
        if self.streams.iter().any(|s| !s.partial.is_empty()) {
            let mut sink = self.log.lock().unwrap_or_else(|p| p.into_inner());
            sink.stamp_now(self.clock.as_ref());
            for s in &mut self.streams {
                let line = std::mem::take(&mut s.partial);
                if !line.is_empty() {
                    s.emit(&mut sink, &line);
                }
            }
        }
    }
}

enum Msg {
    Exited(Option<ExitStatus>),
    /// Stop signal, then SIGKILL after the kill grace.
    Stop(KillReason),
    /// SIGKILL to every process of the try now (a second stop signal to `up`).
    Kill(KillReason),
}

/// Where a try's messages go: its supervisor's channel, and the bell that wakes the
/// supervisor's poll over the try's pipes (none when it could not be made: the try then
/// does not start).
#[derive(Clone)]
struct Mailbox {
    tx: mpsc::Sender<Msg>,
    bell: Option<Arc<OwnedFd>>,
}

impl Mailbox {
    fn send(&self, m: Msg) -> bool {
        let sent = self.tx.send(m).is_ok();
        if sent && let Some(bell) = &self.bell {
            let _ = rustix::io::write(&**bell, &1u64.to_ne_bytes());
        }
        sent
    }
}

/// Stops a running try from outside (the engine: shutdown, a lost claim).
#[derive(Clone)]
pub struct Stopper(Mailbox);

impl Stopper {
    /// Asks the supervisor to stop the try; false when the try has already ended.
    pub fn stop(&self, reason: KillReason) -> bool {
        self.0.send(Msg::Stop(reason))
    }

    pub fn kill_now(&self, reason: KillReason) {
        self.0.send(Msg::Kill(reason));
    }
}

/// The supervisor's end of a try's control channel (see [`control`]).
pub struct Inbox {
    mail: Mailbox,
    rx: mpsc::Receiver<Msg>,
    bell: std::io::Result<Arc<OwnedFd>>,
}

/// A try's control channel: the stopper goes to the engine at once, before anything is
/// started, and the inbox to the thread that starts and supervises the try. A stop sent
/// before the process runs waits in the inbox and is acted on as soon as it does.
pub fn control() -> (Stopper, Inbox) {
    use rustix::event::{EventfdFlags, eventfd};
    let (tx, rx) = mpsc::channel();
    let bell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map(Arc::new)
        .map_err(std::io::Error::from);
    let mail = Mailbox {
        tx,
        bell: bell.as_ref().ok().cloned(),
    };
    (Stopper(mail.clone()), Inbox { mail, rx, bell })
}

/// Starts the process and supervises it on the calling thread (the try's own); `started`
/// gets the main pid and a stopper once it runs. Returns the outcome once no process of
/// the try is alive; a process that could not start is an outcome too. Relative program
/// paths (`./scripts/x.sh`) resolve against `cwd`.
pub fn run(
    spec: ChildSpec,
    clock: Arc<dyn Clock>,
    inbox: Inbox,
    started: impl FnOnce(u32, Stopper),
) -> ChildOutcome {
    let not_started = |msg: String, log: Option<&Mutex<LogSink>>| {
        if let Some(log) = log {
            let mut sink = log.lock().unwrap_or_else(|p| p.into_inner());
            sink.line(clock.as_ref(), "nightshift", msg.as_bytes());
            sink.finish();
        }
        ChildOutcome::not_started(msg, clock.now())
    };
    if let Some(dir) = spec.log_path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        let msg = format!("cannot create log folder `{}`: {e}", dir.display());
        return not_started(msg, None);
    }
    let log = Arc::new(Mutex::new(LogSink::new(
        spec.log_path.clone(),
        spec.mask.clone(),
        spec.log_max_bytes,
    )));
    let program = match locate(&spec.argv[0], &spec.cwd, &spec.env) {
        Ok(p) => p,
        Err(msg) => return not_started(msg, Some(&log)),
    };
    // Only the stopper handed out below and the waiter keep the channel open: a supervisor
    // whose waiter is gone hears so instead of waiting forever.
    let Inbox { mail, rx, bell } = inbox;
    let bell = match bell {
        Ok(b) => b,
        Err(e) => return not_started(format!("cannot supervise the try: {e}"), Some(&log)),
    };
    let launched = match launch(&spec, &program, &mail) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("cannot start `{}`: {e}", spec.argv[0]);
            return not_started(msg, Some(&log));
        }
    };
    let pid = launched.pid;
    if let Err(e) = launched.waiter {
        // Without a waiter the try cannot be supervised: end it now.
        procs::signal_group(pid, Signal::SIGKILL);
        spec.cell.kill_all(true);
        return not_started(format!("cannot supervise the try: {e}"), Some(&log));
    }
    let watch = Watch::new(
        launched.out,
        launched.err,
        (rx, bell),
        log.clone(),
        clock.clone(),
        spec.dbt_json_log,
    );
    started(pid, Stopper(mail));
    supervise(spec, pid, watch, log, clock)
}

/// The try's main process, started.
struct Launched {
    pid: u32,
    out: PipeReader,
    err: PipeReader,
    /// Whatever reports the main process's exit to the supervisor (a thread of ours, or the
    /// spawner helper) is in place.
    waiter: std::io::Result<()>,
}

/// Starts the try's program: through the spawner helper, born in the try's cgroup, when
/// there is one; else as a child of ours (through the `/bin/sh` step under cgroups).
fn launch(spec: &ChildSpec, program: &Path, mail: &Mailbox) -> std::io::Result<Launched> {
    let metrics = (
        "NIGHTSHIFT_METRICS".into(),
        spec.metrics_path.clone().into_os_string(),
    );
    if let (Some(cg), Some(spawner)) = (spec.cell.cgroup(), spec.cell.spawner()) {
        let (out, out_w) = std::io::pipe()?;
        let (err, err_w) = std::io::pipe()?;
        let env: Vec<(OsString, OsString)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.into(), v.into()))
            .chain([metrics.clone()])
            .collect();
        let exited = mail.clone();
        let req = spawner::Request {
            cgroup: cg,
            program,
            args: &spec.argv[1..],
            cwd: &spec.cwd,
            env_remove: &spec.env_remove,
            env,
            stdout: out_w.into(),
            stderr: err_w.into(),
        };
        let on_exit = Box::new(move |status| {
            exited.send(Msg::Exited(status));
        });
        match spawner.spawn(req, on_exit) {
            Ok(started) => {
                if !started.entered {
                    spec.cell.adopt(started.pid);
                }
                return Ok(Launched {
                    pid: started.pid,
                    out,
                    err,
                    waiter: Ok(()),
                });
            }
            Err(SpawnError::Os(e)) => return Err(e),
            Err(SpawnError::Unavailable { why, maybe_started }) => {
                tracing::debug!(%why, "starting the try without the spawner");
                if maybe_started {
                    // The helper died as it answered: whatever it started must not run
                    // beside the try started now.
                    spec.cell.kill_all(true);
                }
            }
        }
    }
    let mut cmd = match spec.cell.cgroup() {
        // The process enters the try's cgroup before the task's program runs, so nothing
        // it starts can be born outside it. The script is constant; the folder and argv are
        // positional arguments, never shell syntax.
        Some(cg) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg("{ echo 0 > \"$0/cgroup.procs\"; } 2>/dev/null; exec \"$@\"")
                .arg(cg)
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    for name in &spec.env_remove {
        cmd.env_remove(name);
    }
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(&metrics.0, &metrics.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop signal reaches the task with every process it started.
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    spec.cell.adopt(pid);
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("the child has no pipes"));
    };
    let exited = mail.clone();
    let waiter = std::thread::Builder::new()
        .name("try-wait".into())
        .spawn(move || {
            let status = child.wait().ok();
            exited.send(Msg::Exited(status));
        })
        .map(|_| ());
    Ok(Launched {
        pid,
        out: OwnedFd::from(out).into(),
        err: OwnedFd::from(err).into(),
        waiter,
    })
}

/// Finds the program the way `execvp` would (relative paths against the try's folder), so
/// a missing one is reported as such rather than as a failing shell step.
fn locate(arg0: &str, cwd: &Path, env: &[(String, String)]) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.is_empty() {
        return Err("cannot start the task: its command is empty".to_owned());
    }
    if arg0.contains('/') {
        let p = cwd.join(arg0);
        return if runnable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!(
                "cannot start `{arg0}`: it is not an executable file (chmod +x?)"
            ))
        } else {
            Err(format!(
                "cannot start `{arg0}`: No such file or directory (os error 2)"
            ))
        };
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| std::ffi::OsString::from(v))
        .or_else(crate::env::path)
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let key = (arg0.to_owned(), path, cwd.to_owned());
    if let Some(found) = found_recently(&key) {
        return Ok(found);
    }
    let found = std::env::split_paths(&key.1)
        .map(|d| cwd.join(d).join(arg0))
        .find(|p| runnable(p))
        .ok_or_else(|| format!("cannot start `{arg0}`: No such file or directory (os error 2)"))?;
    let mut seen = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    seen.retain(|_, (_, at)| at.elapsed() < FOUND_FOR);
    seen.insert(key, (found.clone(), Instant::now()));
    Ok(found)
}

/// A program found on PATH is trusted for this long. A wide fan-out starts the same program
/// hundreds of times a second, and each search is a `stat` per PATH entry; a program
/// installed (or removed) meanwhile is seen a second later at most, unlike a shell's
/// `hash`, which keeps a find until it is told to forget.
const FOUND_FOR: Duration = Duration::from_secs(1);

type FoundKey = (String, OsString, PathBuf);

static FOUND: Mutex<BTreeMap<FoundKey, (PathBuf, Instant)>> = Mutex::new(BTreeMap::new());

fn found_recently(key: &FoundKey) -> Option<PathBuf> {
    let seen = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    seen.get(key)
        .filter(|(_, at)| at.elapsed() < FOUND_FOR)
        .map(|(p, _)| p.clone())
}

fn supervise(
    spec: ChildSpec,
    pid: u32,
    mut watch: Watch,
    log: Arc<Mutex<LogSink>>,
    clock: Arc<dyn Clock>,
) -> ChildOutcome {
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut killed: Option<KillReason> = None;
    let mut status: Option<ExitStatus> = None;
    let first = match watch.next(deadline) {
        Next::Msg(m) => Some(m),
        Next::Timeout => Some(Msg::Stop(KillReason::Timeout)),
        Next::Closed => None,
    };
    match first {
        None => {}
        Some(Msg::Exited(s)) => status = s,
        Some(msg @ (Msg::Stop(_) | Msg::Kill(_))) => {
            let (r, now) = match msg {
                Msg::Kill(r) => (r, true),
                Msg::Stop(r) => (r, false),
                Msg::Exited(_) => unreachable!("matched above"),
            };
            killed = Some(r);
            let note = match r {
                KillReason::Timeout => format!(
                    "timed out after {}; killing the try's processes",
                    nightshift_core::time::format_duration(spec.timeout.unwrap_or_default())
                ),
                KillReason::Shutdown => {
                    "the scheduler is shutting down; killing the try's processes".to_owned()
                }
                KillReason::LostClaim => {
                    "this try lost its claim to another scheduler; killing the try's processes"
                        .to_owned()
                }
                KillReason::Cancelled => {
                    "the run was cancelled; killing the try's processes".to_owned()
                }
            };
            log.lock().unwrap_or_else(|p| p.into_inner()).line(
                clock.as_ref(),
                "nightshift",
                note.as_bytes(),
            );
            procs::signal_group(pid, spec.stop_signal);
            let grace_end = Instant::now() + if now { Duration::ZERO } else { spec.kill_grace };
            loop {
                match watch.next(Some(grace_end)) {
                    Next::Msg(Msg::Exited(s)) => {
                        status = s;
                        break;
                    }
                    Next::Msg(Msg::Stop(_)) => continue,
                    Next::Msg(Msg::Kill(_)) | Next::Timeout | Next::Closed => {
                        // The main process leads the group: this ends it; its descendants
                        // elsewhere are ended below, once it has exited.
                        procs::signal_group(pid, Signal::SIGKILL);
                        while let Next::Msg(m) = watch.next(None) {
                            if let Msg::Exited(s) = m {
                                status = s;
                                break;
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    // The try ended when its main process did, whatever still holds its pipes.
    let end = clock.now();
    // Leftovers (a backgrounded grandchild, a setsid daemon, a member that ignored the stop
    // signal) must not outlive the try: the store never says "finished" while a process of
    // the try lives.
    procs::signal_group(pid, Signal::SIGKILL);
    spec.cell.kill_all(killed.is_some());
    if procs::group_exists(pid) {
        procs::kill_group_blocking(pid, Duration::from_millis(100));
    }
    // Every writer of the pipes is gone now: what they wrote is read to the end. A pipe
    // still open belongs to a process that escaped every mechanism, and is left behind
    // rather than delaying the outcome.
    watch.drain(Instant::now() + Duration::from_secs(2));
    watch.finish_lines();
    drop(watch);
    let exit = match (killed, status) {
        (Some(k), _) => Exit::Killed(k),
        (None, Some(s)) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Code(-1),
        },
        (None, None) => Exit::Code(-1),
    };
    let (metrics, metrics_warnings) = read_metrics(&spec.metrics_path);
    let mut sink = log.lock().unwrap_or_else(|p| p.into_inner());
    for w in &metrics_warnings {
        sink.line(clock.as_ref(), "nightshift", w.as_bytes());
    }
    let log_warning = sink.finish();
    ChildOutcome {
        exit,
        end,
        metrics,
        metrics_warnings,
        last_error: sink.take_last_error(),
        log_warning,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn watch_of(dir: &Path, inbox: Inbox) -> (Watch, std::io::PipeWriter, Arc<Mutex<LogSink>>) {
        let (out, out_w) = std::io::pipe().unwrap();
        let (err, _) = std::io::pipe().unwrap();
        let log = Arc::new(Mutex::new(LogSink::new(
            dir.join("try.log"),
            crate::mask::Masker::new(&[]),
            1 << 20,
        )));
        let Inbox { rx, bell, .. } = inbox;
        let clock: Arc<dyn Clock> = Arc::new(nightshift_core::clock::SystemClock);
        let watch = Watch::new(out, err, (rx, bell.unwrap()), log.clone(), clock, false);
        (watch, out_w, log)
    }

    /// A stop wakes the supervisor while it waits on the try's pipes, and output that came
    /// before is in the log by then.
    #[test]
    fn a_message_wakes_the_supervisor_waiting_on_the_pipes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (stopper, inbox) = control();
        let (mut watch, mut out, log) = watch_of(dir.path(), inbox);
        out.write_all(b"before the stop\n").unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert!(stopper.stop(KillReason::Shutdown));
            stopper
        });
        let got = watch.next(Some(Instant::now() + Duration::from_secs(30)));
        assert!(matches!(got, Next::Msg(Msg::Stop(KillReason::Shutdown))));
        let _stopper = t.join().unwrap();
        let mut sink = log.lock().unwrap();
        sink.finish();
        drop(sink);
        let text = std::fs::read_to_string(dir.path().join("try.log")).unwrap();
        assert!(text.contains("before the stop"), "{text}");
        // With nothing coming, the deadline ends the wait.
        assert!(matches!(
            watch.next(Some(Instant::now() + Duration::from_millis(20))),
            Next::Timeout
        ));
    }

    /// After the try, what its pipes still hold is read to the end, an unfinished last line
    /// too, even once nobody can send the supervisor anything.
    #[test]
    fn output_left_in_the_pipes_is_read_after_the_mailbox_closes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (stopper, inbox) = control();
        let mail = inbox.mail.clone();
        let (mut watch, mut out, log) = watch_of(dir.path(), inbox);
        out.write_all(b"first\nlast without a newline").unwrap();
        drop((out, stopper, mail));
        assert!(matches!(watch.next(None), Next::Closed));
        watch.drain(Instant::now() + Duration::from_secs(30));
        watch.finish_lines();
        drop(watch);
        log.lock().unwrap().finish();
        let text = std::fs::read_to_string(dir.path().join("try.log")).unwrap();
        assert!(
            text.contains("first") && text.contains("last without a newline"),
            "{text}"
        );
    }

    /// A find on PATH is reused for a moment only: a program installed later in an earlier
    /// PATH folder is what the next search finds.
    #[test]
    fn a_program_on_path_is_searched_again_after_a_moment() {
        let dir = tempfile::tempdir().unwrap();
        let (early, late) = (dir.path().join("early"), dir.path().join("late"));
        let install = |folder: &Path| {
            std::fs::create_dir_all(folder).unwrap();
            let p = folder.join("tool");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let in_late = install(&late);
        std::fs::create_dir_all(&early).unwrap();
        let env = vec![(
            "PATH".to_owned(),
            format!("{}:{}", early.display(), late.display()),
        )];
        assert_eq!(locate("tool", dir.path(), &env).unwrap(), in_late);
        let in_early = install(&early);
        std::thread::sleep(FOUND_FOR + Duration::from_millis(100));
        assert_eq!(locate("tool", dir.path(), &env).unwrap(), in_early);
        assert!(
            locate("no-such-tool", dir.path(), &env)
                .unwrap_err()
                .contains("No such file")
        );
    }
}
