//! Containment: when a try ends, no process it started survives — a `setsid` child and a
//! double-forked daemon included.
//!
//! Two mechanisms, chosen once per process ([`Containment::detect`]) and named in `up`'s
//! first lines:
//! - **cgroup v2**: each try gets a cgroup of its own under a cgroup2 mount nightshift may
//!   write (one emptied by an earlier try, or a new one), and its program is born inside
//!   it, so every descendant is too, and `cgroup.kill` ends them all at once. The
//!   [`crate::spawner`] helper starts programs there directly; without it, a one-line
//!   `/bin/sh` step writes itself into `cgroup.procs`, then execs the program.
//! - **subreaper + key sweep** (anywhere else): nightshift is a child subreaper, so orphaned
//!   descendants are re-parented to it rather than to init, and every process whose
//!   environment carries the try's `NIGHTSHIFT_TRY_KEY` is killed.
//!
//! Both also sweep for the key when a try is stopped (timeout, cancel, shutdown).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::procs;
use crate::spawner::Spawner;

#[derive(Debug, Clone)]
pub enum Containment {
    /// Per-try cgroups under this folder (a cgroup of nightshift's own, removed at exit),
    /// and the helper that starts programs inside them, when there is one.
    Cgroup {
        root: PathBuf,
        spawner: Option<Arc<Spawner>>,
        cells: Arc<CellPool>,
    },
    /// `PR_SET_CHILD_SUBREAPER` and a sweep for the try's key.
    Subreaper,
}

impl Containment {
    /// The best mechanism this machine allows. Also makes this process a child subreaper,
    /// which both mechanisms use to reap what they kill.
    pub fn detect() -> Containment {
        let _ = nix::sys::prctl::set_child_subreaper(true);
        match cgroup_root() {
            Some(root) => Containment::Cgroup {
                root,
                spawner: None,
                cells: Arc::default(),
            },
            None => Containment::Subreaper,
        }
    }

    /// Starts tries through a spawner helper run as `exe __spawner` (cgroups only).
    pub fn with_spawner(self, exe: PathBuf) -> Containment {
        match self {
            Containment::Cgroup { root, cells, .. } => {
                let home = root.join(SPAWNER_HOME);
                Containment::Cgroup {
                    root,
                    spawner: Some(Arc::new(Spawner::new(exe, home))),
                    cells,
                }
            }
            other => other,
        }
    }

    /// Starts the spawner helper in the background, when there is one (see
    /// [`Spawner::warm`]).
    pub fn warm(&self) {
        if let Containment::Cgroup {
            spawner: Some(s), ..
        } = self
        {
            s.warm();
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup { root, .. } => format!(
                "cgroup v2 (a cgroup per try under {}, ended with cgroup.kill)",
                root.display()
            ),
            Containment::Subreaper => {
                "child subreaper + sweep by NIGHTSHIFT_TRY_KEY (no writable cgroup v2 here)"
                    .to_owned()
            }
        }
    }

    /// Prepares the try's cell; call [`Cell::adopt`] with the main pid right after spawn
    /// (unless the spawner started it inside).
    pub fn cell(&self, key: &str) -> Cell {
        let (dir, spawner, pool) = match self {
            Containment::Cgroup {
                root,
                spawner,
                cells,
            } => (cells.take(root), spawner.clone(), Some(cells.clone())),
            Containment::Subreaper => (None, None, None),
        };
        Cell {
            spawner: spawner.filter(|_| dir.is_some()),
            dir,
            key: key.to_owned(),
            pool,
            emptied: AtomicBool::new(false),
        }
    }

    /// Removes this process's cgroup folder if it is empty (at exit).
    pub fn cleanup(&self) {
        if let Containment::Cgroup { root, spawner, .. } = self {
            if let Some(s) = spawner {
                s.shutdown();
                // The helper leaves its cgroup as it exits, a moment after its socket closes.
                let home = root.join(SPAWNER_HOME);
                let until = Instant::now() + Duration::from_secs(1);
                while home.exists() && std::fs::remove_dir(&home).is_err() && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Ok(entries) = std::fs::read_dir(root) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// The spawner helper's own cgroup, beside the tries' cells.
const SPAWNER_HOME: &str = "spawner";

/// The empty cgroups of ended tries, kept for the next ones: making and removing a cgroup
/// costs the kernel far more than reusing one, and a wide fan-out starts hundreds a second.
/// A cell is returned only when it is known to be empty, so a try never shares its cgroup
/// with a process of an earlier one; there are never more than the tries that ran at once.
#[derive(Debug, Default)]
pub struct CellPool {
    free: std::sync::Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

impl CellPool {
    fn take(&self, root: &Path) -> Option<PathBuf> {
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A kept cell is gone when an engine that ended earlier in this process cleaned up.
        if let Some(dir) = kept.filter(|d| d.is_dir()) {
            return Some(dir);
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        // `create_dir_all`: an engine that ended earlier in this process (the demo runs
        // `up`, then a backfill) removed the root; a later one makes it again.
        let dir = root.join(format!("try-{n}"));
        std::fs::create_dir_all(&dir).ok().map(|_| dir)
    }

    fn give_back(&self, dir: PathBuf) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir);
    }
}

/// Where one try's processes live.
pub struct Cell {
    dir: Option<PathBuf>,
    key: String,
    spawner: Option<Arc<Spawner>>,
    pool: Option<Arc<CellPool>>,
    /// [`Cell::kill_all`] saw the cgroup empty: it can serve the next try.
    emptied: AtomicBool,
}

impl Cell {
    /// The try's cgroup folder, when cgroups are in force.
    pub fn cgroup(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The helper that starts the try's program inside its cgroup, when there is one.
    pub fn spawner(&self) -> Option<&Spawner> {
        self.spawner.as_deref()
    }

    /// Moves the try's main process into its cgroup (its children are then born inside).
    pub fn adopt(&self, pid: u32) {
        if let Some(dir) = &self.dir
            && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_err()
        {
            tracing::debug!(
                pid,
                "cannot move the try into its cgroup; the key sweep covers it"
            );
        }
    }

    /// Ends every process of the try and waits until they are gone. `sweep` also searches
    /// all processes for the try's key (a stopped try, or no cgroup).
    pub fn kill_all(&self, sweep: bool) {
        let mut sweep = sweep || self.dir.is_none();
        let mut empty = false;
        if let Some(dir) = &self.dir {
            let procs_file = dir.join("cgroup.procs");
            let members = read_pids(&procs_file);
            if !members.is_empty() {
                if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
                    for pid in &members {
                        let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                    }
                    sweep = true;
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let left = read_pids(&procs_file);
                    reap(&members);
                    if left.is_empty() {
                        empty = true;
                        break;
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else {
                empty = true;
            }
        }
        self.emptied.store(empty, Ordering::Relaxed);
        if sweep {
            let killed = procs::kill_by_env("NIGHTSHIFT_TRY_KEY", &self.key, Duration::ZERO);
            reap(&killed);
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // Emptied by `kill_all`, or found empty now (a try that never started).
        // A folder gone meanwhile (cleaned up at exit) reads empty; `take` skips it.
        let empty =
            self.emptied.load(Ordering::Relaxed) || read_pids(&dir.join("cgroup.procs")).is_empty();
        match &self.pool {
            Some(pool) if empty => pool.give_back(dir),
            // A cgroup that still holds processes cannot be removed, and is never reused.
            _ => {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Collects the exit status of killed processes that were re-parented to this subreaper,
/// so they do not linger as zombies. Pids that are not our children are left alone.
fn reap(pids: &[u32]) {
    let me = std::process::id();
    for pid in pids {
        if procs::parent(*pid) == Some(me) {
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(*pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// A cgroup2 folder this process may create per-try cgroups in: `nightshift-<pid>` next to
/// the cgroup it runs in, on the first writable cgroup2 mount.
fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    let parent = mount.join(rel);
    remove_stale(&parent);
    let root = parent.join(format!("nightshift-{}", std::process::id()));
    if std::fs::create_dir(&root).is_err() && !root.is_dir() {
        return None;
    }
    // A probe cell proves the folder is usable (kill support included) before trusting it.
    let probe = root.join("probe");
    let ok = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    if !ok {
        let _ = std::fs::remove_dir(&root);
        return None;
    }
    Some(root)
}

/// Removes the empty cgroup folders of nightshift processes that are gone (a SIGKILLed
/// scheduler cannot clean up after itself). Folders that still hold processes stay: orphan
/// recovery kills those by their key.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("nightshift-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if procs::alive(pid, None) {
            continue;
        }
        if let Ok(cells) = std::fs::read_dir(e.path()) {
            for c in cells.flatten() {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}
