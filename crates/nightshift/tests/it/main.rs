//! The one integration-test binary of the `nightshift` CLI.

mod cli;
mod crash;
mod extract;
mod scheduler;
mod support;
