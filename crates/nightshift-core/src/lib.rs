//! nightshift's pure logic: no I/O; the system clock is read only in [`clock`].
//!
//! # Layout
//! - [`clock`]: the `Clock` every crate takes data time from; the one reader of real time.
//! - [`deadline`]: deadline instants and the finish-time forecast.
//! - [`diag`]: diagnostics with file positions, rendered like cargo's.
//! - [`event`]: what the engine reports (events) and its loop's figures (stats).
//! - [`project`]: `nightshift.toml` settings.
//! - [`pipeline`]: the pipeline model, the reading of pipeline files, the task graph.
//! - [`kinds`]: one module per task kind: its spec, keys, reader and request.
//! - [`redact`]: how a URL is shown (scheme, host and port only).
//! - [`run`]: a run's keys (pipeline, run_id, ds, interval) as every request carries them.
//! - [`sql`]: the named parameters of extract and sensor queries.
//! - [`template`]: `{{ ds }}` templates for task arguments.
//! - [`time`]: schedules, DST rules, data intervals, `ds` and `run_id`.
//! - [`state`]: run and task states, trigger rules, run outcomes.

pub mod clock;
pub mod deadline;
pub mod diag;
pub mod event;
pub mod kinds;
pub mod pipeline;
pub mod project;
pub mod redact;
pub mod run;
pub mod sql;
pub mod state;
pub mod template;
pub mod time;
mod toml_reader;

pub use kinds::TaskKind;
pub use pipeline::{Pipeline, Task, TriggerRule};
pub use project::ProjectSettings;
pub use run::RunKeys;
pub use state::{RunState, TaskState, Trigger};
pub use time::{DataInterval, Schedule};
