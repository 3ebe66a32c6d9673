//! The `nightshift` binary: argument parsing, logging setup, exit codes.
//!
//! Exit codes: 0 success; 1 a run or command failed; 2 bad usage or configuration.

mod cli;
mod commands;
mod env;
mod output;
mod scaffold;
mod shop;

use clap::Parser;

fn main() {
    // Everything nightshift creates (the store, logs, artifacts, partitions) is for its own
    // user only: files 0600, folders 0700. Task processes inherit this; one that must share
    // its output sets its own umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = cli::Cli::parse();
    // The spawner helper needs neither logging nor the async runtime: its process stays
    // small and single-purpose (its threads move with it between cgroups).
    if let cli::Command::InternalSpawner { home } = &cli.command {
        let code = match nightshift_engine::spawner::serve(home) {
            Ok(()) => 0,
            Err(e) => {
                output::note(format!("error: the spawner stopped: {e}"));
                1
            }
        };
        std::process::exit(code);
    }
    let json = cli.log_format.as_deref().or(env::log_format().as_deref()) == Some("json");
    output::set_json(json);
    init_tracing(&cli.command, json);
    // Multi-threaded with one worker: the commands run on this thread inside `block_on`,
    // where a blocking store call steps out of the runtime for free (`block_in_place`);
    // on a current-thread runtime each such call needed a thread of its own.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::note(format!("error: cannot start the async runtime: {e}"));
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<commands::UsageError>().is_some();
            output::note(format!("error: {e:#}"));
            if usage { 2 } else { 1 }
        }
    };
    // Tries still draining after a shutdown were recorded; do not wait on background tasks.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

/// Logs go to stderr; `NIGHTSHIFT_LOG` takes tracing filter directives.
fn init_tracing(cmd: &cli::Command, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match cmd {
        cli::Command::Up { .. } | cli::Command::Worker { .. } => "info",
        _ => "warn",
    };
    let filter = env::log_filter()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        fmt.with_ansi(output::color()).try_init()
    };
}
