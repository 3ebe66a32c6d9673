//! The one integration-test binary of the `nightshift` CLI.

mod cli;
mod crash;
mod scheduler;
mod support;
