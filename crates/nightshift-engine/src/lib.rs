//! nightshift's engine: everything that touches processes and time.
//!
//! # Layout
//! - `clock`: re-exported from `nightshift_core::clock` for the binary.
//! - [`project`]: loading a project folder and noticing edits.
//! - [`engine`]: the scheduler loop, run creation, orphan recovery.
//! - [`dbt`]: the dbt kind's command line, retries of failed nodes, run_results.json.
//! - [`explain`]: why a run or task is where it is, in words.
//! - [`executor`]: one try as a child process, supervised on its own threads.
//! - [`trylog`]: a try's buffered, capped log.
//! - [`attempt`]: a try's life, prepare → spawn → conclude.
//! - `kinds`: one module per task kind: its try's argv and environment, and what it left.
//! - `env`: the engine's one reader of its environment (secrets to mask, `PATH`).
//! - [`contain`]: ending every process of a try (cgroup v2, or subreaper + key sweep).
//! - [`spawner`]: the helper process that starts tries' programs inside their cgroups.
//! - [`outcome`]: the outcome writer and its journal.
//! - [`crash`]: named crash points for recovery tests.
//! - [`procs`]: process identity and liveness from /proc, killing process groups.
//! - [`warm`]: the warm dbt runner's long-lived workers, one per dbt project and target.
//! - [`view`]: the JSON shape of runs, tries, pipelines, alerts…, shared by the CLI and the API.

pub mod attempt;
pub mod contain;
pub mod crash;
mod crew;
pub mod dbt;
pub mod engine;
mod env;
pub mod executor;
pub mod explain;
mod kinds;
pub mod logship;
pub mod mask;
pub mod outcome;
pub mod procs;
pub mod project;
pub mod spawner;
pub mod trylog;
pub mod view;
pub mod warm;

pub use engine::{CrashPoint, DEFAULT_POOL, Engine, Error, Event, Mode, Options, Stats};
pub use nightshift_core::clock::{self, Clock, SimClock, SystemClock};
