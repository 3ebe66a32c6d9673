//! Process facts from /proc: identity (pid + start time, so a reused pid is not mistaken
//! for ours), liveness, and killing a whole process group.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), and
/// whether it is a zombie.
fn stat(pid: u32) -> Option<(u64, char, i64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let pgrp: i64 = fields.get(2)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((start, state, pgrp))
}

/// The parent of a process, from /proc.
pub fn parent(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.0)
}

/// A handle on a process that cannot come to mean another one: taken right after a spawn,
/// it lets the start time be read later, only if it is still needed (see
/// [`Identity::start_time`]).
pub struct Identity {
    pid: u32,
    /// `None` where the kernel has no pidfd (before 5.3): the start time was read at once
    /// into `eager`.
    pidfd: Option<std::os::fd::OwnedFd>,
    eager: Option<u64>,
}

impl Identity {
    pub fn of(pid: u32) -> Identity {
        let pidfd = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
        let eager = if pidfd.is_none() {
            start_time(pid)
        } else {
            None
        };
        Identity { pid, pidfd, eager }
    }

    /// The process's start time if it still runs, or `Exited`: a pid read after its
    /// process was reaped could belong to another process by then. Reading it here, when a
    /// try has run long enough for its pid to be recorded, spares every short try a /proc
    /// read.
    pub fn look(&self) -> Seen {
        let Some(fd) = &self.pidfd else {
            return Seen::Running { start: self.eager };
        };
        let Some(start) = start_time(self.pid) else {
            return Seen::Exited;
        };
        // Read first, then checked: while the process still runs its pid is its own, so the
        // start time read before belongs to it. (A pidfd is readable once it has exited.)
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(0) => Seen::Running { start: Some(start) },
            _ => Seen::Exited,
        }
    }
}

/// What [`Identity::look`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Still running, with its start time (`None`: unknown, where it was read at the spawn
    /// and the read failed).
    Running {
        start: Option<u64>,
    },
    Exited,
}

/// Whether the process `pid` that started at `start` (if known) is alive and not a zombie.
pub fn alive(pid: u32, start: Option<u64>) -> bool {
    match stat(pid) {
        Some((s, state, _)) => state != 'Z' && state != 'X' && start.is_none_or(|want| want == s),
        None => false,
    }
}

/// Whether any live (non-zombie) process is in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    if !group_exists(pgid) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .any(|(_, state, pgrp)| pgrp == i64::from(pgid) && state != 'Z' && state != 'X')
}

/// Cheap check (no /proc scan): whether the kernel knows any process in the group.
/// Zombies count, so a `true` here is confirmed by [`group_alive`].
pub fn group_exists(pgid: u32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

pub fn signal_group(pgid: u32, sig: Signal) {
    // 0 and 1 would signal our own group or every process: never a task's group.
    if pgid <= 1 {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid as i32), sig);
}

/// SIGTERM to the group, then SIGKILL after `grace`; returns once no member is alive (or
/// after a bounded wait if the kernel is slow to reap).
pub fn kill_group_blocking(pgid: u32, grace: Duration) {
    if pgid <= 1 || !group_exists(pgid) {
        return;
    }
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(pgid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process (with its group) whose environment holds `name=value`, then waits
/// until they are gone. Returns the processes that matched.
pub fn kill_by_env(name: &str, value: &str, grace: Duration) -> Vec<u32> {
    let needle = format!("{name}={value}");
    let find = || -> Vec<(u32, i64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id())
            .filter_map(|pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let hit = env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes());
                let (_, state, pgrp) = stat(pid)?;
                (hit && state != 'Z' && state != 'X').then_some((pid, pgrp))
            })
            .collect()
    };
    let found = find();
    for (pid, pgrp) in &found {
        if *pgrp > 1 {
            signal_group(*pgrp as u32, Signal::SIGTERM);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while !find().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, pgrp) in find() {
        if pgrp > 1 {
            signal_group(pgrp as u32, Signal::SIGKILL);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !find().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    found.into_iter().map(|(pid, _)| pid).collect()
}

/// This machine's name, for the `host` of tries and leases.
/// This host's name, as claims and leases record it: `NIGHTSHIFT_HOSTNAME` when set (hosts
/// whose kernel names collide, containers, tests that play several hosts on one machine),
/// else the kernel's host name.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        crate::env::var("NIGHTSHIFT_HOSTNAME")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_owned())
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

/// An engine's identity: `host:pid:start`, unique across restarts and machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            host: hostname(),
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    pub fn parse(s: &str) -> Option<Owner> {
        let mut parts = s.rsplitn(3, ':');
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_owned();
        Some(Owner { host, pid, start })
    }

    /// Known dead: on this host and its process is gone. Other hosts are judged by lease.
    pub fn is_dead_here(&self) -> bool {
        self.host == hostname() && !alive(self.pid, Some(self.start))
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.host, self.pid, self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_gives_the_start_time_only_while_its_process_runs() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = Identity::of(child.id());
        let start = start_time(child.id());
        assert!(start.is_some());
        assert_eq!(id.look(), Seen::Running { start });
        child.kill().unwrap();
        // Exited, not reaped yet: /proc still answers for the pid, but once it is reaped the
        // pid may be another process's, so the identity answers no more.
        while stat(child.id()).is_some_and(|s| s.1 != 'Z') {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(start_time(child.id()).is_some());
        assert_eq!(id.look(), Seen::Exited);
        child.wait().unwrap();
        assert_eq!(id.look(), Seen::Exited);
    }

    #[test]
    fn owner_round_trip_and_liveness() {
        let me = Owner::me();
        assert_eq!(Owner::parse(&me.to_string()), Some(me.clone()));
        assert!(!me.is_dead_here());
        let ghost = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(
            ghost.is_dead_here(),
            "a reused pid with another start time is not ours"
        );
    }
}
