//! The one integration-test binary of the `nightshift` CLI.

mod cli;
mod crash;
mod dbt;
mod extract;
mod notify;
mod scheduler;
mod support;
