//! Crash points: named places where a test may have the engine kill itself with SIGKILL
//! (`NIGHTSHIFT_CRASH_AT=point[:task]`), to prove recovery from a crash at that point.

use std::time::Duration;

use tracing::error;

/// A named point where a test may have the engine kill itself with SIGKILL
/// (`NIGHTSHIFT_CRASH_AT=point[:task]`), to prove recovery from a crash at that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub point: String,
    pub task: Option<String>,
}

impl CrashPoint {
    pub const POINTS: &'static [&'static str] = &[
        "after_run_created",
        "after_claim",
        "after_spawn",
        "before_outcome_commit",
    ];

    pub fn parse(s: &str) -> Option<CrashPoint> {
        let (point, task) = match s.split_once(':') {
            Some((p, t)) => (p, Some(t.to_owned())),
            None => (s, None),
        };
        Self::POINTS.contains(&point).then(|| CrashPoint {
            point: point.to_owned(),
            task,
        })
    }
}

pub(crate) fn crash_if(crash: &Option<CrashPoint>, point: &str, task: Option<&str>) {
    if let Some(c) = crash
        && c.point == point
        && (c.task.is_none() || c.task.as_deref() == task)
    {
        error!(
            point,
            "crash point reached; killing this process with SIGKILL"
        );
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_secs(60));
    }
}
