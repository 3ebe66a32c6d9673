//! The spawner: a small helper process (`nightshift __spawner`) that starts tries' programs
//! directly inside their cgroups, so a try costs one exec — its program's — and not two
//! (a `/bin/sh` step that enters the cgroup, then the program).
//!
//! The helper is single-purpose and single-threaded where it matters: for each request it
//! moves itself into the try's cgroup, spawns the program (which is therefore born inside,
//! with everything it ever starts), and moves back to a cgroup of its own. A second thread
//! reaps its children and reports each exit status. The engine talks to it over a
//! `SOCK_SEQPACKET` socket pair (one message per request or reply; the try's stdout and
//! stderr pipe ends travel with the request as `SCM_RIGHTS`).
//!
//! Faults: the helper exits when the engine's end of the socket closes (the engine exited or
//! was killed); the try processes it started then live on exactly as if the engine had
//! started them, and recovery handles them. When the helper dies while the engine lives, its
//! running children are re-parented to the engine (a child subreaper), which waits for each
//! of them itself so no outcome is lost; the next try starts a new helper, and a helper that
//! cannot start makes the engine fall back to the `/bin/sh` step.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The largest request: argv and environment changes of one task. Larger ones take the
/// `/bin/sh` path.
const MAX_REQUEST: usize = 256 * 1024;
const REPLY_LEN: usize = 14;
const STARTED: u8 = 1;
const FAILED: u8 = 2;
const EXITED: u8 = 3;
/// How long a spawn may take before the helper counts as hung (it is then replaced).
const START_BOUND: Duration = Duration::from_secs(10);
/// A helper that died is started again at most this often; in between, tries take the
/// `/bin/sh` path.
const RESTART_EVERY: Duration = Duration::from_secs(5);

/// One try's program, as the helper starts it.
pub struct Request<'a> {
    pub cgroup: &'a Path,
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env_remove: &'a [String],
    pub env: Vec<(OsString, OsString)>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Why a spawn through the helper did not happen.
#[derive(Debug)]
pub enum SpawnError {
    /// The program could not start (what `Command::spawn` would have said).
    Os(std::io::Error),
    /// The helper is not there: the caller starts the try another way. `maybe_started`:
    /// the helper took the request and died before it answered, so the program may run.
    Unavailable { why: String, maybe_started: bool },
}

fn unavailable(why: impl Into<String>, maybe_started: bool) -> SpawnError {
    SpawnError::Unavailable {
        why: why.into(),
        maybe_started,
    }
}

/// A started program: its pid, and whether it was born inside its cgroup.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub pid: u32,
    pub entered: bool,
}

type OnExit = Box<dyn FnOnce(Option<ExitStatus>) + Send>;

enum Reply {
    Started(Started),
    Failed(i32),
}

impl Reply {
    fn into_result(self) -> Result<Started, SpawnError> {
        match self {
            Reply::Started(s) => Ok(s),
            Reply::Failed(errno) => Err(SpawnError::Os(std::io::Error::from_raw_os_error(errno))),
        }
    }
}

struct Entry {
    started: Option<mpsc::SyncSender<Reply>>,
    on_exit: Option<OnExit>,
    pid: Option<u32>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("home", &self.home).finish()
    }
}

/// The engine's side: starts the helper on first use and again after it died.
pub struct Spawner {
    exe: PathBuf,
    home: PathBuf,
    link: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    link: Option<Arc<Link>>,
    failed_at: Option<Instant>,
}

struct Link {
    sock: OwnedFd,
    pid: u32,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Entry>>,
    /// Set when the helper is gone: no new request may be registered.
    dead: Mutex<bool>,
}

impl Spawner {
    /// A spawner that runs `exe __spawner home` when first needed. `home` is the helper's
    /// own cgroup, beside the tries' cells, so moving in and out stays within nightshift's
    /// cgroup folder.
    pub fn new(exe: PathBuf, home: PathBuf) -> Spawner {
        Spawner {
            exe,
            home,
            link: Mutex::new(LinkState::default()),
        }
    }

    /// Starts the program in its cgroup; `on_exit` gets its exit status (None when the
    /// status was lost with a helper that died). `on_exit` is not called when this returns an
    /// error.
    pub fn spawn(&self, req: Request<'_>, on_exit: OnExit) -> Result<Started, SpawnError> {
        let link = self.link()?;
        let token = link.next.fetch_add(1, Ordering::Relaxed);
        let msg = encode(token, &req);
        if msg.len() > MAX_REQUEST {
            return Err(unavailable("the request is too large", false));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let dead = lock(&link.dead);
            if *dead {
                return Err(unavailable("the spawner is gone", false));
            }
            lock(&link.waiting).insert(
                token,
                Entry {
                    started: Some(tx),
                    on_exit: Some(on_exit),
                    pid: None,
                },
            );
        }
        let fds = [req.stdout.as_fd(), req.stderr.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = rustix::net::sendmsg(
            &link.sock,
            &[IoSlice::new(&msg)],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        // The helper holds its own copies now; ours must close so the reader sees EOF
        // when the program exits.
        drop(req);
        if let Err(e) = sent {
            lock(&link.waiting).remove(&token);
            self.lost(&link);
            return Err(unavailable(format!("cannot reach the spawner: {e}"), false));
        }
        match rx.recv_timeout(START_BOUND) {
            Ok(r) => r.into_result(),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A hung helper (stopped, say): replace it. If the program did start, its
                // exit is still reported through the entry (or by the loss handling).
                tracing::warn!(pid = link.pid, "the spawner did not answer; replacing it");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(link.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(r) => r.into_result(),
                    Err(_) => Err(unavailable("the spawner did not answer", true)),
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(unavailable("the spawner is gone", true))
            }
        }
    }

    /// Starts the helper now rather than at the first try, on a thread of its own: the
    /// first try of a run then pays no exec of this binary, and a helper that cannot start
    /// is said in the log at start-up.
    pub fn warm(self: &Arc<Self>) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("spawner-warm".into())
            .spawn(move || {
                let _ = me.link();
            });
    }

    /// Ends the helper: it exits when its socket closes (the caller waits for it to leave
    /// its cgroup).
    pub fn shutdown(&self) {
        let link = lock(&self.link).link.take();
        if let Some(link) = link {
            let _ = rustix::net::shutdown(&link.sock, rustix::net::Shutdown::Write);
        }
    }

    fn link(&self) -> Result<Arc<Link>, SpawnError> {
        let mut state = lock(&self.link);
        if let Some(l) = &state.link
            && !*lock(&l.dead)
        {
            return Ok(l.clone());
        }
        if state.failed_at.is_some_and(|t| t.elapsed() < RESTART_EVERY) {
            return Err(unavailable("the spawner failed recently", false));
        }
        match start(&self.exe, &self.home) {
            Ok(link) => {
                state.link = Some(link.clone());
                state.failed_at = None;
                Ok(link)
            }
            Err(e) => {
                state.failed_at = Some(Instant::now());
                tracing::warn!(error = %e, "cannot start the spawner; tries enter their cgroups through /bin/sh");
                Err(unavailable(e.to_string(), false))
            }
        }
    }

    fn lost(&self, link: &Arc<Link>) {
        let mut state = lock(&self.link);
        if state.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            state.link = None;
            state.failed_at = Some(Instant::now());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(exe: &Path, home: &Path) -> std::io::Result<Arc<Link>> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let child = Command::new(exe)
        .arg("__spawner")
        .arg(home)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C meant for `up` must not end it before `up` is done.
        .process_group(0)
        .spawn()?;
    // The helper says it is ready (in its cgroup) with one message; a helper that never
    // says so is killed rather than waited for.
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(&ours, Timeout::Recv, Some(START_BOUND))?;
    let mut ready = [0u8; 1];
    let got = rustix::net::recv(&ours, &mut ready, RecvFlags::empty()).map(|(n, _)| n);
    if got.ok() != Some(1) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let mut child = child;
        let _ = child.wait();
        return Err(std::io::Error::other(match got {
            Err(e) => format!("the spawner did not get ready: {e}"),
            Ok(_) => "the spawner exited before it was ready".to_owned(),
        }));
    }
    set_socket_timeout(&ours, Timeout::Recv, None)?;
    let link = Arc::new(Link {
        sock: ours,
        pid: child.id(),
        next: AtomicU64::new(1),
        waiting: Mutex::new(HashMap::new()),
        dead: Mutex::new(false),
    });
    let router = link.clone();
    std::thread::Builder::new()
        .name("spawner-replies".into())
        .spawn(move || route(router, child))?;
    Ok(link)
}

/// Hands each reply to the try it belongs to; when the helper is gone, waits for its
/// orphaned children itself.
fn route(link: Arc<Link>, mut child: Child) {
    let mut buf = [0u8; REPLY_LEN];
    loop {
        match rustix::net::recv(&link.sock, &mut buf, RecvFlags::empty()) {
            Ok((n, _)) if n == REPLY_LEN => {}
            Err(rustix::io::Errno::INTR) => continue,
            _ => break,
        }
        let token = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default());
        let value = i32::from_le_bytes(buf[9..13].try_into().unwrap_or_default());
        let mut waiting = lock(&link.waiting);
        match buf[0] {
            STARTED => {
                if let Some(e) = waiting.get_mut(&token) {
                    e.pid = Some(value as u32);
                    if let Some(tx) = e.started.take() {
                        let _ = tx.send(Reply::Started(Started {
                            pid: value as u32,
                            entered: buf[13] == 1,
                        }));
                    }
                }
            }
            FAILED => {
                if let Some(mut e) = waiting.remove(&token)
                    && let Some(tx) = e.started.take()
                {
                    let _ = tx.send(Reply::Failed(value));
                }
            }
            EXITED => {
                if let Some(mut e) = waiting.remove(&token) {
                    drop(waiting);
                    if let Some(f) = e.on_exit.take() {
                        f(Some(ExitStatus::from_raw(value)));
                    }
                }
            }
            _ => {}
        }
    }
    // The helper is gone. No new request registers from here on.
    *lock(&link.dead) = true;
    let status = child.wait();
    let orphans: Vec<Entry> = lock(&link.waiting).drain().map(|(_, e)| e).collect();
    if !orphans.is_empty() {
        tracing::warn!(
            running = orphans.len(),
            status = ?status,
            "the spawner ended; waiting for its running tries directly"
        );
    }
    for mut e in orphans {
        // Not started: the sender drops, and the caller takes another way.
        e.started = None;
        let (Some(pid), Some(on_exit)) = (e.pid, e.on_exit.take()) else {
            continue;
        };
        let _ = std::thread::Builder::new()
            .name("try-orphan-wait".into())
            .spawn(move || on_exit(wait_adopted(pid)));
    }
}

/// Waits for a process that was the helper's child and is being re-parented to this
/// process (a child subreaper). None when its status went with the helper.
fn wait_adopted(pid: u32) -> Option<ExitStatus> {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::sys::wait::waitpid(p, None) {
            Ok(ws) => {
                if let Some((_, raw)) = ended(ws) {
                    return Some(ExitStatus::from_raw(raw));
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // Not ours (yet): still being re-parented, or already reaped by the helper.
                if !crate::procs::alive(pid, None) || Instant::now() > give_up {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// An ended process's pid and wait status as the kernel encodes it (what
/// `ExitStatus::from_raw` takes); None for a stop or a continue.
fn ended(ws: nix::sys::wait::WaitStatus) -> Option<(u32, i32)> {
    use nix::sys::wait::WaitStatus;
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw() as u32, (code & 0xff) << 8)),
        WaitStatus::Signaled(pid, sig, core) => Some((
            pid.as_raw() as u32,
            sig as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode(token: u64, r: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(&token.to_le_bytes());
    put(&mut out, r.cgroup.as_os_str().as_bytes());
    put(&mut out, r.program.as_os_str().as_bytes());
    put(&mut out, r.cwd.as_os_str().as_bytes());
    out.extend_from_slice(&(r.args.len() as u32).to_le_bytes());
    for a in r.args {
        put(&mut out, a.as_bytes());
    }
    out.extend_from_slice(&(r.env_remove.len() as u32).to_le_bytes());
    for n in r.env_remove {
        put(&mut out, n.as_bytes());
    }
    out.extend_from_slice(&(r.env.len() as u32).to_le_bytes());
    for (k, v) in &r.env {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    out
}

/// A request as the helper reads it.
#[derive(Debug, PartialEq)]
struct Decoded {
    token: u64,
    cgroup: PathBuf,
    program: PathBuf,
    cwd: PathBuf,
    args: Vec<OsString>,
    env_remove: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_le_bytes(head.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<OsString> {
        let n = self.u32()? as usize;
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(OsString::from_vec(head.to_vec()))
    }

    fn list(&mut self) -> Option<Vec<OsString>> {
        let n = self.u32()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

fn decode(msg: &[u8]) -> Option<Decoded> {
    let (token, rest) = msg.split_at_checked(8)?;
    let mut c = Cursor(rest);
    let cgroup = c.bytes()?.into();
    let program = c.bytes()?.into();
    let cwd = c.bytes()?.into();
    let args = c.list()?;
    let env_remove = c.list()?;
    let n = c.u32()?;
    let env = (0..n)
        .map(|_| Some((c.bytes()?, c.bytes()?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Decoded {
        token: u64::from_le_bytes(token.try_into().ok()?),
        cgroup,
        program,
        cwd,
        args,
        env_remove,
        env,
    })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` this is.
fn move_into(procs: &std::fs::File) -> std::io::Result<()> {
    use std::io::Write;
    (&*procs).write_all(b"0")
}

/// The open `cgroup.procs` of each cell the helper entered. Cells are pooled by the engine,
/// so there are about as many as tries that ran at once; a cell removed since (an engine's
/// cleanup) answers ENODEV and is opened again by its path.
#[derive(Default)]
struct CellFiles(HashMap<PathBuf, std::fs::File>);

/// More cells than this are not kept open (only a very wide engine gets near).
const MAX_CELL_FILES: usize = 4096;

impl CellFiles {
    /// Moves the helper into the cell at `dir`; false when it cannot.
    fn enter(&mut self, dir: &Path) -> bool {
        if let Some(f) = self.0.get(dir) {
            if move_into(f).is_ok() {
                return true;
            }
            self.0.remove(dir);
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        else {
            return false;
        };
        if move_into(&f).is_err() {
            return false;
        }
        if self.0.len() >= MAX_CELL_FILES {
            self.0.clear();
        }
        self.0.insert(dir.to_owned(), f);
        true
    }
}

fn reply(sock: &impl AsFd, kind: u8, token: u64, value: i32, entered: bool) -> bool {
    let mut msg = [0u8; REPLY_LEN];
    msg[0] = kind;
    msg[1..9].copy_from_slice(&token.to_le_bytes());
    msg[9..13].copy_from_slice(&value.to_le_bytes());
    msg[13] = u8::from(entered);
    rustix::net::send(sock, &msg, SendFlags::NOSIGNAL).is_ok()
}

/// The helper's side (`nightshift __spawner HOME`): serves requests on its stdin socket
/// until the engine's end closes.
pub fn serve(home: &Path) -> std::io::Result<()> {
    let sock: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let sock = Arc::new(sock);
    std::fs::create_dir_all(home)?;
    // The helper moves in and out of cgroups twice per try: the `cgroup.procs` files stay
    // open (its own, and each cell's) instead of being looked up again each time.
    let procs_home = std::fs::OpenOptions::new()
        .write(true)
        .open(home.join("cgroup.procs"))?;
    move_into(&procs_home)?;
    let mut cells = CellFiles::default();
    // Children by pid → the request's token; the reaper waits while there are none.
    let children: Arc<(Mutex<HashMap<u32, u64>>, Condvar)> = Arc::default();
    {
        let sock = sock.clone();
        let children = children.clone();
        std::thread::Builder::new()
            .name("reap".into())
            .spawn(move || reap(&sock, &children))?;
    }
    if !reply(&sock, 0, 0, 0, false) {
        return Ok(());
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &*sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let n = match got {
            Ok(m) if m.bytes == 0 => return Ok(()),
            Ok(m) => m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds: Vec<OwnedFd> = vec![];
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        let Some(req) = decode(&buf[..n]) else {
            continue;
        };
        if fds.len() != 2 {
            reply(&*sock, FAILED, req.token, libc_einval(), false);
            continue;
        }
        let stderr = fds.pop().map(Stdio::from);
        let stdout = fds.pop().map(Stdio::from);
        // The reaper reports an exit only once it holds this lock, that is after the helper
        // has left the try's cgroup (the exit leads the engine to kill that cgroup) and
        // after the STARTED reply went out (the engine reads replies in order).
        let (map, wake) = &*children;
        let mut map = lock(map);
        let entered = cells.enter(&req.cgroup);
        let mut cmd = Command::new(&req.program);
        for name in &req.env_remove {
            cmd.env_remove(name);
        }
        cmd.args(&req.args)
            .current_dir(&req.cwd)
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout.unwrap_or_else(Stdio::null))
            .stderr(stderr.unwrap_or_else(Stdio::null))
            .process_group(0);
        let spawned = cmd.spawn();
        if let Ok(c) = &spawned {
            map.insert(c.id(), req.token);
            wake.notify_one();
        }
        // Back home before anything else, so the next request starts from there (a failed
        // move leaves the helper inside the try's cgroup, which its end would kill).
        if entered && move_into(&procs_home).is_err() {
            return Err(std::io::Error::other("cannot leave the try's cgroup"));
        }
        drop(cmd);
        let ok = match spawned {
            Ok(c) => reply(&*sock, STARTED, req.token, c.id() as i32, entered),
            Err(e) => reply(
                &*sock,
                FAILED,
                req.token,
                e.raw_os_error().unwrap_or_else(libc_einval),
                false,
            ),
        };
        drop(map);
        if !ok {
            return Ok(());
        }
    }
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

fn reap(sock: &OwnedFd, children: &(Mutex<HashMap<u32, u64>>, Condvar)) {
    let (map, wake) = children;
    loop {
        {
            let mut m = lock(map);
            while m.is_empty() {
                m = wake.wait(m).unwrap_or_else(|p| p.into_inner());
            }
        }
        let (pid, raw) = match nix::sys::wait::waitpid(None, None) {
            Ok(ws) => match ended(ws) {
                Some(e) => e,
                None => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let token = lock(map).remove(&pid);
        if let Some(token) = token
            && !reply(sock, EXITED, token, raw, false)
        {
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let (a, b) = std::io::pipe().unwrap();
        let (c, d) = std::io::pipe().unwrap();
        drop((a, c));
        let req = Request {
            cgroup: Path::new("/sys/fs/cgroup/x/try-1-1"),
            program: Path::new("/usr/bin/env"),
            args: &["a b".into(), String::new(), "ü;$(x)".into()],
            cwd: Path::new("/tmp"),
            env_remove: &["SECRET".into()],
            env: vec![
                ("K".into(), "v=1".into()),
                ("EMPTY".into(), OsString::new()),
            ],
            stdout: b.into(),
            stderr: d.into(),
        };
        let msg = encode(42, &req);
        let got = decode(&msg).unwrap();
        assert_eq!(got.token, 42);
        assert_eq!(got.cgroup, req.cgroup);
        assert_eq!(got.program, req.program);
        assert_eq!(got.cwd, req.cwd);
        assert_eq!(got.args, vec!["a b", "", "ü;$(x)"]);
        assert_eq!(got.env_remove, vec!["SECRET"]);
        assert_eq!(
            got.env,
            vec![
                ("K".into(), "v=1".into()),
                ("EMPTY".into(), OsString::new())
            ]
        );
        // A cut message is refused, never misread.
        for n in 0..msg.len() {
            assert!(decode(&msg[..n]).is_none(), "prefix of {n} bytes decoded");
        }
    }
}
