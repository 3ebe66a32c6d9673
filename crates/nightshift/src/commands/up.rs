use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_engine::{Clock, Mode, SimClock, SystemClock};
use nightshift_store::Location;

use crate::commands::fold::FoldedLines;
use crate::commands::{
    drive_until, load_project, new_engine, new_engine_with, open_store, parse_ts_flag,
    shutdown_signal, usage,
};
use crate::output;

pub async fn exec(
    dir: &Path,
    from: Option<&str>,
    until: Option<&str>,
    bind: Option<&str>,
    no_web: bool,
) -> Result<i32> {
    // Stop requests are taken from the start: a SIGTERM while starting up is a clean stop.
    let shutdown = shutdown_signal();
    let project = load_project(dir)?;
    let (clock, until): (Arc<dyn Clock>, _) = match (from, until) {
        (Some(f), Some(u)) => {
            let f = parse_ts_flag("--simulate-from", f)?;
            let u = parse_ts_flag("--simulate-until", u)?;
            if u <= f {
                return Err(usage("--simulate-until must be after --simulate-from"));
            }
            (Arc::new(SimClock::new(f)), Some(u))
        }
        _ => (Arc::new(SystemClock), None),
    };
    let bind: Option<SocketAddr> = bind
        .map(|b| {
            b.parse().map_err(|_| {
                usage(format!(
                    "invalid --bind `{b}`: write an address and port, e.g. 127.0.0.1:8080"
                ))
            })
        })
        .transpose()?;
    if project.pipelines.is_empty() && project.broken.is_empty() {
        output::note(format!(
            "warning: no pipelines in `{}`; waiting for files to appear",
            project.dir.join("pipelines").display()
        ));
    }
    let store = open_store(&project)?;
    output::note(format!(
        "containment: {}",
        crate::commands::containment().describe()
    ));
    let web_settings = project.settings.web.clone();
    let web_project = project.clone();
    let shared = matches!(store.location(), Location::Postgres(_));
    let mut engine = new_engine(project, store, clock, Mode::Scheduler { until })?;
    match engine.acquire_scheduler_lease() {
        Ok(()) => {}
        // On a shared store, another `up` holding the role is the normal case: this one
        // executes tries and takes the role if that one stops renewing it.
        Err(nightshift_engine::Error::SchedulerRunning { pid, host, .. }) if shared => {
            output::note(format!(
                "the scheduler role is held by pid {pid} on `{host}`; this process executes tries and stands by to take over"
            ));
        }
        Err(e) => return Err(usage(e.to_string())),
    }
    let metrics = Arc::new(nightshift_web::Metrics::new());
    // A simulation serves the UI only when asked (`--bind`); a real `up` serves it at the
    // configured address unless `--no-web`.
    let serve_at = match (bind, no_web, until.is_some()) {
        (_, true, _) => None,
        (Some(b), _, _) => Some((b, true)),
        (None, _, true) => None,
        (None, _, false) => web_settings.bind.parse().ok().map(|b| (b, false)),
    };
    if let Some((addr, explicit)) = serve_at {
        let principals = principals(&web_settings)?;
        let has_token = !principals.is_empty();
        match nightshift_web::serve(
            nightshift_web::Config {
                bind: addr,
                principals,
                clock: engine.clock(),
                settings: web_settings.clone(),
            },
            web_project,
            metrics.clone(),
            Some(engine.stats()),
        ) {
            Ok((bound, https)) => {
                output::note(format!(
                    "web UI and API at {}://{bound}/ (metrics at /metrics)",
                    if https { "https" } else { "http" }
                ));
                if !has_token {
                    output::note(format!(
                        "note: actions in the UI and API are disabled until a token is set in `{}`",
                        web_settings.token_env
                    ));
                }
            }
            Err(e) if explicit => return Err(usage(e)),
            Err(e) => output::note(format!(
                "warning: the web UI is not served ({e}); choose another address with --bind"
            )),
        }
    }
    let (print, flush) = print_events();
    drive_until(engine, Some(metrics), print, shutdown).await?;
    flush();
    Ok(0)
}

/// `worker`: executes tries of the pools it serves from a shared store; never schedules and
/// serves no web UI.
pub async fn worker(dir: &Path, pools: Vec<String>, max_tasks: Option<u32>) -> Result<i32> {
    let shutdown = shutdown_signal();
    let project = load_project(dir)?;
    if max_tasks == Some(0) {
        return Err(usage("--max-tasks must be at least 1"));
    }
    for pool in &pools {
        if pool != nightshift_engine::DEFAULT_POOL && !project.settings.pools.contains_key(pool) {
            let mut known: Vec<&str> = project.settings.pools.keys().map(String::as_str).collect();
            known.push(nightshift_engine::DEFAULT_POOL);
            return Err(usage(format!(
                "no pool `{pool}` in nightshift.toml\n  = help: its pools: {}",
                known.join(", ")
            )));
        }
    }
    let store = open_store(&project)?;
    if matches!(store.location(), Location::Sqlite(_)) {
        output::note(
            "note: this project's store is a SQLite file; a worker helps only on this machine (a PostgreSQL store lets workers run on other hosts)",
        );
    }
    let mut opts = crate::commands::engine_options()?;
    opts.pools = (!pools.is_empty()).then(|| pools.iter().cloned().collect());
    opts.max_tasks = max_tasks;
    let engine = new_engine_with(project, store, Arc::new(SystemClock), Mode::Worker, opts);
    output::note(format!(
        "worker on `{}`: pools {}; containment: {}",
        nightshift_engine::procs::hostname(),
        if pools.is_empty() {
            "all".to_owned()
        } else {
            pools.join(", ")
        },
        crate::commands::containment().describe()
    ));
    let (print, flush) = print_events();
    drive_until(engine, None, print, shutdown).await?;
    flush();
    Ok(0)
}

/// The run log on stdout: a line per task and per run of the latest intervals as they end,
/// and the history runs folded into summaries (`fold`). A thread prints the summaries that
/// fall due while no event comes; the second closure prints what is left at shutdown.
fn print_events() -> (impl FnMut(nightshift_engine::Event), impl FnOnce()) {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let lines = Arc::new(Mutex::new(FoldedLines::default()));
    let print = |out: Vec<String>| out.into_iter().for_each(output::line);
    let ticking = Arc::downgrade(&lines);
    std::thread::spawn(move || {
        while let Some(lines) = ticking.upgrade() {
            let due = lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .due(Instant::now(), false);
            drop(lines);
            print(due);
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    let on_event = {
        let lines = lines.clone();
        move |e| {
            let out = lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_event(&e, Instant::now());
            print(out);
        }
    };
    let flush = move || {
        let out = lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(Instant::now(), true);
        print(out);
    };
    (on_event, flush)
}

/// The tokens the web server accepts: the `admin` token (`[web] token` or `token_env`) and
/// each `[web.tokens.NAME]` whose variable is set. A token shorter than 16 characters is
/// refused, wherever it comes from.
fn principals(
    web: &nightshift_core::project::WebSettings,
) -> Result<Vec<nightshift_web::auth::Principal>> {
    use nightshift_core::project::Role;
    use nightshift_web::auth::{MIN_TOKEN_LEN, Principal};
    let short = |what: String| {
        usage(format!(
            "{what} is shorter than {MIN_TOKEN_LEN} characters; use a long random one (e.g. `openssl rand -hex 32`)"
        ))
    };
    let mut out = vec![];
    if let Some(t) = web.resolve_token(crate::env::var) {
        if t.len() < MIN_TOKEN_LEN {
            return Err(short(format!("the token in `{}`", web.token_env)));
        }
        out.push(Principal::new("admin", Role::Admin, None, &t));
    }
    for nt in &web.tokens {
        match crate::env::var(&nt.token_env).filter(|v| !v.is_empty()) {
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                return Err(short(format!(
                    "token `{}` (from `{}`)",
                    nt.name, nt.token_env
                )));
            }
            Some(t) => out.push(Principal::new(&nt.name, nt.role, nt.pipelines.clone(), &t)),
            None => output::note(format!(
                "warning: token `{}` is not usable: `{}` is not set",
                nt.name, nt.token_env
            )),
        }
    }
    Ok(out)
}
