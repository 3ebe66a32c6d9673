//! The one integration-test binary of the `nightshift` CLI.

mod alerts;
mod browser;
mod chaos;
mod cli;
mod crash;
mod dbt;
mod dbt_project;
mod extract;
mod faults;
mod ha;
mod notify;
mod recover;
mod runbook;
mod scheduler;
mod security;
mod security_web;
mod soak;
mod sql;
mod supervision;
mod support;
mod web;
