//! Command-line arguments (clap derive). Commands live in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nightshift",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("NS_GIT_COMMIT"), ")"),
    about = "Schedules, runs and watches nightly analytics pipelines"
)]
pub struct Cli {
    /// The project folder (holds nightshift.toml and pipelines/).
    #[arg(long, global = true, default_value = ".", value_name = "DIR")]
    pub project: PathBuf,

    /// `json`: every line on stdout and stderr is one JSON object (also
    /// NIGHTSHIFT_LOG_FORMAT=json), for log collectors.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scaffold a small working project: the four-task nightly pipeline and its scripts.
    Init {
        /// Folder to create (default: the --project folder).
        dir: Option<PathBuf>,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Scaffold the example project, rehearse three nights on a simulated clock, backfill an
    /// earlier date, and summarise.
    Demo {
        /// Folder for the demo project.
        #[arg(default_value = "nightshift-demo")]
        dir: PathBuf,
        /// Run it on PostgreSQL: the shop source and the warehouse in this database, dbt
        /// through dbt-postgres (the password from PGPASSWORD).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Check nightshift.toml and every pipeline file; report every problem with its location.
    Validate {
        /// Every problem as JSON: file, line, column, severity, message, help.
        #[arg(long)]
        json: bool,
    },
    /// Run one pipeline for one ds in the foreground.
    #[command(
        after_help = "Examples:\n  nightshift run nightly --date 2024-06-01             run one day in the foreground\n  nightshift run nightly --date 2024-06-01 --rerun     run a finished day again"
    )]
    Run {
        /// The pipeline's name (its file in pipelines/, or its `name` key).
        pipeline: String,
        /// The ds (data interval start date) to run, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
        /// Run again even if this interval's run already finished.
        #[arg(long)]
        rerun: bool,
    },
    /// The long-running scheduler.
    #[command(
        after_help = "Examples:\n  nightshift up                                  schedule, run and serve the UI at 127.0.0.1:8080\n  NIGHTSHIFT_TOKEN=$(openssl rand -hex 32) nightshift up   with actions enabled in the UI and API\n  nightshift up --no-web --log-format json       headless, JSON lines for a log collector\n  nightshift up --simulate-from 2024-06-01T00:00:00Z --simulate-until 2024-06-08T00:00:00Z"
    )]
    Up {
        /// Run on a simulated clock starting here (RFC 3339), skipping idle time.
        #[arg(long, value_name = "TS", requires = "simulate_until")]
        simulate_from: Option<String>,
        /// Stop the simulation at this time (RFC 3339).
        #[arg(long, value_name = "TS", requires = "simulate_from")]
        simulate_until: Option<String>,
        /// Serve the web UI, API and metrics here (default `[web] bind`, 127.0.0.1:8080;
        /// port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
        /// Do not serve the web UI.
        #[arg(long, conflicts_with = "bind")]
        no_web: bool,
    },
    /// Execute tries only (no scheduling, no web UI), for hosts that share a PostgreSQL store
    /// and hold the same project folder. Runs until told to stop.
    Worker {
        /// Serve only these pools (repeat for several); tasks without a pool are in
        /// `default`. Without it, every pool.
        #[arg(long = "pool", value_name = "POOL")]
        pools: Vec<String>,
        /// Tries this worker runs at once (default: the project's `parallelism`).
        #[arg(long, value_name = "N")]
        max_tasks: Option<u32>,
    },
    /// One run per interval whose ds is in [--from, --to].
    #[command(
        after_help = "Examples:\n  nightshift backfill nightly --from 2024-06-01 --to 2024-06-30\n  nightshift backfill nightly --from 2024-06-01 --to 2024-06-30 --dry-run   show the plan\n  nightshift backfill nightly --from 2024-06-01 --to 2024-06-30 --detach    leave them to `up`"
    )]
    Backfill {
        /// The pipeline's name (its file in pipelines/, or its `name` key).
        pipeline: String,
        /// The first ds (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        from: String,
        /// The last ds (YYYY-MM-DD), included.
        #[arg(long, value_name = "YYYY-MM-DD")]
        to: String,
        /// Run again intervals whose run already succeeded.
        #[arg(long)]
        rerun: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Create the runs and return at once, leaving them to `nightshift up`.
        #[arg(long)]
        detach: bool,
    },
    /// A pipeline's runs.
    Runs {
        /// The pipeline's name (its file in pipelines/, or its `name` key).
        pipeline: String,
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
        /// Show at most this many of the newest runs.
        /// Show at most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put finished tasks of a run back to run again (new try numbers; history kept).
    #[command(
        after_help = "Examples:\n  nightshift clear 20240602_0000 --task dbt_test --downstream   the task and what follows it\n  nightshift clear 20240602_0000 --failed                        every failed task of the run"
    )]
    Clear {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// The task to clear.
        #[arg(long)]
        task: Option<String>,
        /// Also every task downstream of it.
        #[arg(long)]
        downstream: bool,
        /// Only tasks that failed (FAILED or UPSTREAM_FAILED); without --task, all of them.
        #[arg(long)]
        failed: bool,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Stop unfinished runs on purpose: queued work and running tries become CANCELLED.
    /// The schedule goes on (use `pause` to stop it).
    Cancel {
        /// The pipeline's name (its file in pipelines/, or its `name` key).
        pipeline: String,
        /// Runs to cancel, by run id.
        run_ids: Vec<String>,
        /// Every unfinished backfill run of the pipeline.
        #[arg(long)]
        backfill: bool,
    },
    /// Run a whole finished run again in place, on the current pipeline file.
    Rerun {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Set a task's state by hand after fixing things outside nightshift (recorded).
    Mark {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// The task's id.
        #[arg(long)]
        task: String,
        /// success or failed.
        #[arg(long)]
        state: String,
        /// What was done, for the run's history.
        #[arg(long)]
        reason: String,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Why a run (or one of its tasks) is where it is, in words.
    Explain {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// Only this task (its id).
        task: Option<String>,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
    },
    /// The metadata store itself.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// The processes that execute tries on this project's store (schedulers, standbys,
    /// workers): host, pid, role, pools, last heartbeat and running tries.
    Status {
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
    },
    /// Alerts sent or failed, newest first, with where they went and why a delivery failed.
    Alerts {
        /// Only this pipeline's alerts.
        pipeline: Option<String>,
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
        /// Show at most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Who did what through the web UI and API (every action, allowed or refused), newest
    /// first.
    Audit {
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
        /// Show at most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The tasks and tries of one run.
    Tasks {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
        /// As JSON, with stable field names (see the README).
        #[arg(long)]
        json: bool,
    },
    /// The dbt models and tests of one run, with status, time, failures and rows.
    DbtResults {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only the nodes that failed (error, fail, runtime error), with their whole messages.
        #[arg(long)]
        failed: bool,
        /// As JSON, with stable field names and full node ids (see the README).
        #[arg(long)]
        json: bool,
    },
    /// The log of one try of a task.
    Logs {
        /// The run's id, e.g. 20240602_0000 (`nightshift runs PIPELINE` lists them).
        run_id: String,
        /// The task's id.
        task: String,
        /// Try number (default: the latest).
        #[arg(long = "try", value_name = "N")]
        try_number: Option<u32>,
        /// The pipeline, when several have a run with this id.
        #[arg(long)]
        pipeline: Option<String>,
        /// Keep printing what the try writes until it ends (from any host of a shared store).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the log's bytes as they are, terminal escape sequences included (by
        /// default control characters are shown inertly, as `^[`).
        #[arg(long)]
        raw: bool,
    },
    /// Generate days of the demo shop source database (the reference pipeline's source).
    Shop {
        /// The SQLite file to fill (a relative path is under the project folder).
        #[arg(
            long,
            required_unless_present = "postgres",
            conflicts_with = "postgres"
        )]
        db: Option<PathBuf>,
        /// Fill a PostgreSQL database instead (same rows; the password from PGPASSWORD).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// The first ds (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        from: String,
        /// The last ds (YYYY-MM-DD), included.
        #[arg(long, value_name = "YYYY-MM-DD")]
        to: String,
        /// Average orders per day.
        #[arg(long, default_value_t = 10_000)]
        orders: u32,
        /// Leave the days incomplete (no `source_batches` row), as if the batch were late.
        #[arg(long)]
        hold_batch: bool,
        /// Add one bad row per day (a negative payment).
        #[arg(long)]
        bad_row: bool,
        /// Only mark the days complete (the late batch arrives).
        #[arg(long)]
        release: bool,
    },
    /// Runs an extract try (started by the engine, not by people).
    #[command(name = "__extract", hide = true)]
    InternalExtract {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Runs one sensor poke (started by the engine, not by people).
    #[command(name = "__sensor", hide = true)]
    InternalSensor {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Runs a publish try (started by the engine, not by people).
    #[command(name = "__publish", hide = true)]
    InternalPublish {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Runs a notify try (started by the engine, not by people).
    #[command(name = "__notify", hide = true)]
    InternalNotify {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Runs a load try (started by the engine, not by people).
    #[command(name = "__load", hide = true)]
    InternalLoad {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Runs a warm dbt try through the project's dbt worker (started by the engine, not by
    /// people).
    #[command(name = "__dbt_warm", hide = true)]
    InternalDbtWarm {
        /// The request (`@FILE`), written by the engine.
        request: String,
        /// More dbt arguments (a publish try's `--args`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Starts tries' programs inside their cgroups for the engine that started it (not for
    /// people): requests come on stdin, a socket.
    #[command(name = "__spawner", hide = true)]
    InternalSpawner {
        /// The helper's own cgroup folder.
        home: std::path::PathBuf,
    },
    /// Runs a sql try (started by the engine, not by people).
    #[command(name = "__sql", hide = true)]
    InternalSql {
        /// The request (`@FILE`), written by the engine.
        request: String,
    },
    /// Stop the scheduler from creating and starting runs of a pipeline (running tasks finish).
    Pause {
        /// The pipeline's name.
        pipeline: String,
    },
    /// Let the scheduler create and start runs of a pipeline again (catchup applies).
    Unpause {
        /// The pipeline's name.
        pipeline: String,
    },
    /// The project's pipelines: schedule, next run, latest and latest finished run, paused.
    Pipelines {
        /// The same as JSON, with the API's field names.
        #[arg(long)]
        json: bool,
    },
    /// A completion script for a shell, e.g. `nightshift completions bash >
    /// ~/.local/share/bash-completion/completions/nightshift`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The next fire times of a pipeline and the data intervals they close.
    Next {
        /// The pipeline's name (its file in pipelines/, or its `name` key).
        pipeline: String,
        /// How many fire times.
        #[arg(short = 'n', default_value_t = 5)]
        n: u32,
        /// As JSON: fire time (UTC and local), run_id, ds, data interval, DST note.
        #[arg(long)]
        json: bool,
        /// Start from this instant (RFC 3339) instead of now.
        #[arg(long, value_name = "TS")]
        after: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Copy this project's history (its SQLite store) into an empty PostgreSQL database,
    /// ids kept, all or nothing. Stop `nightshift up` first; then set `[store] url`.
    Copy {
        /// The PostgreSQL database, e.g. postgresql://nightshift@db:5432/nightshift.
        #[arg(long, value_name = "URL")]
        to: String,
        /// The environment variable holding its password (default PGPASSWORD).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every command says what it is, and the everyday commands show
    /// examples in their help.
    #[test]
    fn every_argument_has_a_description_and_examples_are_shown() {
        let root = super::Cli::command();
        let mut missing = vec![];
        for cmd in root.get_subcommands() {
            let mut all = vec![cmd];
            all.extend(cmd.get_subcommands());
            for c in all {
                for a in c.get_arguments() {
                    let id = a.get_id().as_str();
                    if id != "help" && id != "version" && a.get_help().is_none() {
                        missing.push(format!("{} {id}", c.get_name()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "arguments without a description: {missing:?}"
        );
        for name in ["run", "backfill", "clear", "up"] {
            let help = root
                .clone()
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("Examples:\n  nightshift "), "{name}: {help}");
        }
    }
}
