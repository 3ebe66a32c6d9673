//! The binary's one reader of its environment: the variables nightshift itself takes
//! (`NIGHTSHIFT_LOG`, `NIGHTSHIFT_CRASH_AT`, `NIGHTSHIFT_METRICS`) and the variables a
//! project points at (its web token).

use std::path::PathBuf;

/// A variable's value, when set and valid UTF-8.
#[allow(clippy::disallowed_methods)]
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The log filter (`NIGHTSHIFT_LOG`, tracing's `EnvFilter` syntax).
pub fn log_filter() -> Option<String> {
    var("NIGHTSHIFT_LOG")
}

/// `NIGHTSHIFT_LOG_FORMAT` (`text` or `json`), when `--log-format` is not given.
pub fn log_format() -> Option<String> {
    var("NIGHTSHIFT_LOG_FORMAT")
}

/// `NIGHTSHIFT_SPAWNER=off`: tries enter their cgroups through the `/bin/sh` step instead of
/// the spawner helper (an escape hatch, and the A/B of the benchmark).
pub fn spawner_off() -> bool {
    var("NIGHTSHIFT_SPAWNER").is_some_and(|v| v.trim() == "off")
}

/// The crash point a recovery test asks for (`NIGHTSHIFT_CRASH_AT`).
pub fn crash_at() -> Option<String> {
    var("NIGHTSHIFT_CRASH_AT")
}

/// A timing knob of the loop and its leases (`NIGHTSHIFT_HEARTBEAT`, `NIGHTSHIFT_LEASE_TTL`,
/// `NIGHTSHIFT_ROLE_TTL`, `NIGHTSHIFT_POLL`), as a duration text (`2s`, `500ms`).
pub fn timing(name: &str) -> Option<String> {
    var(name).filter(|v| !v.trim().is_empty())
}

/// The metrics file the engine gave a built-in kind's child (`NIGHTSHIFT_METRICS`).
#[allow(clippy::disallowed_methods)]
pub fn metrics_file() -> Option<PathBuf> {
    std::env::var_os("NIGHTSHIFT_METRICS").map(PathBuf::from)
}

/// The whole environment: a warm dbt try hands its own to the dbt worker, which runs the
/// call with it (the try's environment is what the engine built for it).
#[allow(clippy::disallowed_methods)]
pub fn all() -> std::collections::BTreeMap<String, String> {
    std::env::vars().collect()
}
