//! nightshift's pure logic: no I/O, no system clock.
//!
//! # Layout
//! - [`deadline`]: deadline instants and the finish-time forecast.
//! - [`diag`]: diagnostics with file positions, rendered like cargo's.
//! - [`event`]: what the engine reports (events) and its loop's figures (stats).
//! - [`project`]: `nightshift.toml` settings.
//! - [`pipeline`]: the pipeline model and the validation of pipeline files.
//! - [`template`]: `{{ ds }}` templates for task arguments.
//! - [`time`]: schedules, DST rules, data intervals, `ds` and `run_id`.
//! - [`state`]: run and task states, trigger rules, run outcomes.

pub mod deadline;
pub mod diag;
pub mod event;
pub mod pipeline;
pub mod project;
pub mod state;
pub mod template;
pub mod time;
mod toml_reader;

pub use pipeline::{Pipeline, Task, TaskKind, TriggerRule};
pub use project::ProjectSettings;
pub use state::{RunState, TaskState, Trigger};
pub use time::{DataInterval, Schedule};
