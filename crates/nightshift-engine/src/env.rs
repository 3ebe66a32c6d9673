//! The engine's one reader of its own environment: the values of the secret variables a
//! project names (masked in logs), and `PATH` to find a task's program. A task's own
//! environment is built from the project, never read from here.

use std::ffi::OsString;

/// A variable's value, when set and valid UTF-8.
#[allow(clippy::disallowed_methods)]
pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `PATH`, for finding a task's program when its environment sets none.
#[allow(clippy::disallowed_methods)]
pub(crate) fn path() -> Option<OsString> {
    std::env::var_os("PATH")
}

/// The folders of `PATH`, in order.
pub(crate) fn path_dirs() -> Vec<std::path::PathBuf> {
    path()
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}
