//! The pipeline: its model ([`model`]), how a pipeline file becomes one with every problem
//! reported at its location ([`reading`]: TOML text → spanned tree → validated
//! [`Pipeline`]), and the task graph's algorithms ([`graph`]). What a task of each kind
//! holds and how it is read lives in [`crate::kinds`].

mod graph;
mod model;
mod reading;
mod task;

pub use model::{
    Backoff, IntervalsError, Pipeline, RetryPolicy, Task, TriggerRule, valid_identifier,
};
pub use reading::parse_pipeline;
pub(crate) use reading::{check_connection, check_sql_params, check_template};
