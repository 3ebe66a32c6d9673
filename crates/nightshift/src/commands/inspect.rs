//! Read-only views: `runs`, `tasks`, `logs`. They read the store only, so they work while
//! a scheduler runs.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_engine::project::Project;
use nightshift_engine::{dbt, view};
use nightshift_store::{RunRow, Store, TryRow};

use crate::commands::{load_project, open_store, require_pipeline, usage};
use crate::output::{self, duration_ms, ts};

fn pretty<T: serde::Serialize>(v: &T) -> Result<()> {
    output::line(serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn runs(dir: &Path, name: &str, as_json: bool, limit: u32) -> Result<i32> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    let runs = store.runs(name, limit)?;
    if runs.is_empty() && !project.pipelines.contains_key(name) {
        require_pipeline(&project, name)?;
    }
    if as_json {
        let deadlines = store.deadlines_of(&runs.iter().map(|r| r.pk).collect::<Vec<_>>())?;
        let shown: Vec<view::Run> = runs
            .iter()
            .map(|r| view::Run::from_row(r, deadlines.get(&r.pk)))
            .collect();
        pretty(&shown)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.ds.to_string(),
                r.status.to_string(),
                r.trigger.as_str().to_owned(),
                ts(r.start_time),
                ts(r.end_time),
                duration_ms(r.start_time.zip(r.end_time).map(|(s, e)| (e - s) / 1000)),
                r.rows_loaded.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "RUN_ID",
            "DS",
            "STATUS",
            "TRIGGER",
            "START",
            "END",
            "DURATION",
            "ROWS_LOADED",
        ],
        &rows,
    );
    Ok(0)
}

/// The project, its store and one run of it: what every command about a run starts from.
pub fn open_run(
    dir: &Path,
    run_id: &str,
    pipeline: Option<&str>,
) -> Result<(Project, Arc<Store>, RunRow)> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    let run = find_run(&store, run_id, pipeline)?;
    Ok((project, store, run))
}

pub fn find_run(store: &Store, run_id: &str, pipeline: Option<&str>) -> Result<RunRow> {
    let mut runs = store.runs_with_id(run_id)?;
    if let Some(p) = pipeline {
        runs.retain(|r| r.pipeline == p);
    }
    match runs.len() {
        0 => Err(usage(format!(
            "no run `{run_id}`{}\n  = help: `nightshift runs PIPELINE` lists run ids",
            pipeline.map(|p| format!(" in `{p}`")).unwrap_or_default()
        ))),
        1 => Ok(runs.remove(0)),
        _ => Err(usage(format!(
            "several pipelines have a run `{run_id}`: {}\n  = help: add --pipeline NAME",
            runs.iter()
                .map(|r| r.pipeline.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub fn tasks(dir: &Path, run_id: &str, pipeline: Option<&str>, as_json: bool) -> Result<i32> {
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let tis = store.task_instances(run.pk)?;
    let tries = store.tries(run.pk)?;
    if as_json {
        // The tasks as the run's own pipeline version has them (the current file when
        // that version is gone).
        let version =
            nightshift_engine::project::stored_pipeline(&store, &run.version, &project.settings)?
                .and_then(|(_, p)| p.ok())
                .or_else(|| {
                    project
                        .pipelines
                        .get(&run.pipeline)
                        .map(|l| (*l.pipeline).clone())
                });
        let events = store.events(run.pk)?;
        let tasks = match &version {
            Some(p) => view::TaskInstance::all_of(p, &tis, &tries, &events),
            None => tis
                .iter()
                .map(|ti| {
                    view::TaskInstance::build(
                        &ti.task_id,
                        "removed",
                        &[],
                        Some(ti),
                        &tries,
                        &events,
                    )
                })
                .collect(),
        };
        let deadline = store.deadline(run.pk)?;
        pretty(&view::RunTasks {
            run: view::Run::from_row(&run, Some(&deadline)),
            tasks,
        })?;
        return Ok(0);
    }
    output::line(format!(
        "{} {} (ds {}): {}  rows_loaded={}",
        run.pipeline, run.run_id, run.ds, run.status, run.rows_loaded
    ));
    let mut rows = vec![];
    for ti in &tis {
        let mine: Vec<&TryRow> = tries.iter().filter(|t| t.ti_pk == ti.pk).collect();
        if mine.is_empty() {
            rows.push(vec![
                ti.task_id.clone(),
                "-".into(),
                ti.state.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                String::new(),
            ]);
        }
        for t in mine {
            let exit = match (t.exit_code, t.signal) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("sig {s}"),
                _ => "-".into(),
            };
            // One line per row: a whole message is for `explain` and `dbt-results --failed`.
            let error = t.error.clone().unwrap_or_default();
            let mut detail = match error.split_once('\n') {
                Some((first, _)) => format!("{first} …"),
                None => error,
            };
            if let Some(m) = &t.metrics {
                detail = if detail.is_empty() {
                    m.clone()
                } else {
                    format!("{detail}; {m}")
                };
            }
            rows.push(vec![
                ti.task_id.clone(),
                format!("{}/{}", t.try_number, ti.max_tries),
                t.state.to_string(),
                ts(Some(t.start_time)),
                ts(t.end_time),
                duration_ms(t.duration_ms),
                exit,
                t.rows_loaded
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                detail,
            ]);
        }
    }
    output::table(
        &[
            "TASK",
            "TRY",
            "STATE",
            "START",
            "END",
            "DURATION",
            "EXIT",
            "ROWS",
            "ERROR / METRICS",
        ],
        &rows,
    );
    Ok(0)
}

pub fn logs(
    dir: &Path,
    run_id: &str,
    task: &str,
    try_number: Option<u32>,
    pipeline: Option<&str>,
    follow: bool,
    raw: bool,
) -> Result<i32> {
    let (project, store, run) = open_run(dir, run_id, pipeline)?;
    let print = |bytes: &[u8]| {
        if raw {
            output::raw(bytes);
        } else {
            output::raw(output::inert(&String::from_utf8_lossy(bytes)).as_bytes());
        }
    };
    let tries: Vec<TryRow> = store
        .tries(run.pk)?
        .into_iter()
        .filter(|t| t.task_id == task)
        .collect();
    if tries.is_empty() {
        let known = store
            .task_instances(run.pk)?
            .into_iter()
            .map(|t| t.task_id)
            .collect::<Vec<_>>();
        if !known.iter().any(|k| k == task) {
            return Err(usage(format!(
                "run {run_id} has no task `{task}`; its tasks: {}",
                known.join(", ")
            )));
        }
        return Err(usage(format!(
            "task `{task}` of run {run_id} has not run yet"
        )));
    }
    let t = match try_number {
        Some(n) => tries.iter().find(|t| t.try_number == n).ok_or_else(|| {
            usage(format!(
                "task `{task}` of run {run_id} has no try {n}; it has tries 1 to {}",
                tries.iter().map(|t| t.try_number).max().unwrap_or(0)
            ))
        })?,
        None => tries
            .iter()
            .max_by_key(|t| t.try_number)
            .expect("non-empty"),
    };
    if t.log_path.is_none() && t.end_time.is_some() {
        return Err(usage(format!(
            "try {} of `{task}` has no log (it never started: {})",
            t.try_number,
            t.error.as_deref().unwrap_or("unknown")
        )));
    }
    // A running try's path is recorded a moment after it starts.
    let path = t.log_path.clone().unwrap_or_default();
    let on_disk = nightshift_engine::project::resolve_stored(&project.dir, &path);
    // Only files under the project's log folder are ever read; a log written on another
    // host is read from the store, where that host ships it.
    let logs = project
        .logs_dir()
        .canonicalize()
        .unwrap_or_else(|_| project.logs_dir());
    let here = Some(on_disk.as_path())
        .filter(|_| !path.is_empty())
        .and_then(Path::parent)
        .and_then(|p| p.canonicalize().ok())
        .filter(|p| p.starts_with(&logs))
        .map(|p| p.join(on_disk.file_name().unwrap_or_default()));
    let from_store = matches!(store.location(), nightshift_store::Location::Postgres(_));
    if here.is_none() && !from_store {
        return Err(usage(format!(
            "refusing to read `{path}`: it is outside the project's log folder (or its folder is gone)"
        )));
    }
    let read_from = |offset: u64| -> Result<Vec<u8>> {
        match &here {
            Some(file) if file.exists() => {
                use std::io::{Read, Seek, SeekFrom};
                use std::os::unix::fs::OpenOptionsExt;
                // The folder was checked; the file itself must not be a link out of it.
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(file)
                    .map_err(|e| {
                        anyhow::Error::from(e).context(format!(
                            "reading log `{path}` (a symbolic link is never followed)"
                        ))
                    })?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = vec![];
                f.read_to_end(&mut buf)?;
                Ok(buf)
            }
            _ if from_store => {
                let mut out = vec![];
                loop {
                    let at = offset as i64 + out.len() as i64;
                    let got = store.read_log(t.ti_pk, t.try_number, at, 1 << 20)?;
                    if got.is_empty() {
                        return Ok(out);
                    }
                    out.extend_from_slice(&got);
                }
            }
            _ => Ok(vec![]),
        }
    };
    if !follow {
        let text = read_from(0)?;
        if text.is_empty() {
            output::note(format!(
                "(try {} of `{task}` wrote no output{})",
                t.try_number,
                if t.end_time.is_none() { " yet" } else { "" }
            ));
            return Ok(0);
        }
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        print(&text[..end]);
        output::raw(b"\n");
        return Ok(0);
    }
    // Follow: print what is new until the try has ended and nothing more arrives.
    let mut offset = 0u64;
    loop {
        let ended = store
            .tries(run.pk)?
            .iter()
            .any(|x| x.ti_pk == t.ti_pk && x.try_number == t.try_number && x.end_time.is_some());
        let got = read_from(offset)?;
        if !got.is_empty() {
            offset += got.len() as u64;
            print(&got);
        } else if ended {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

pub fn dbt_results(
    dir: &Path,
    run_id: &str,
    task: Option<&str>,
    pipeline: Option<&str>,
    only_failed: bool,
    as_json: bool,
) -> Result<i32> {
    let (_, store, run) = open_run(dir, run_id, pipeline)?;
    let mut nodes: Vec<_> = store
        .dbt_nodes(run.pk)?
        .into_iter()
        .filter(|(t, _, _)| task.is_none_or(|x| x == t))
        .filter(|(_, _, d)| !only_failed || dbt::failed(&d.status))
        .collect();
    // What needs attention first: failures, then warnings, then the rest (stable within).
    nodes.sort_by_key(|(_, _, d)| dbt::attention(&d.status));
    if as_json {
        let v: Vec<view::DbtResult> = nodes
            .iter()
            .map(|(t, n, d)| view::DbtResult::from_row(t.clone(), *n, d.clone()))
            .collect();
        pretty(&v)?;
        return Ok(0);
    }
    if nodes.is_empty() {
        output::note(if only_failed {
            format!("no dbt node of run {run_id} failed")
        } else {
            format!("run {run_id} has no dbt results (yet)")
        });
        return Ok(0);
    }
    if only_failed {
        // Each failure whole: its message may span many lines (a contract's column table).
        for (t, n, d) in &nodes {
            output::line(format!(
                "{} {} ({}, {t} try {n})",
                d.status.to_uppercase(),
                dbt::short_name(&d.unique_id),
                d.resource_type
            ));
            for l in d.message.as_deref().unwrap_or("").lines() {
                output::line(format!("  {}", output::inert(l)));
            }
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|(t, n, d)| {
            vec![
                t.clone(),
                n.to_string(),
                d.resource_type.clone(),
                dbt::short_name(&d.unique_id),
                d.status.to_uppercase(),
                d.execution_time
                    .map(|e| format!("{e:.2}s"))
                    .unwrap_or_else(|| "-".into()),
                d.failures
                    .map(|f| f.to_string())
                    .unwrap_or_else(|| "-".into()),
                output::inert(
                    d.message
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or(""),
                )
                .into_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "TASK", "TRY", "TYPE", "NODE", "STATUS", "TIME", "FAILURES", "MESSAGE",
        ],
        &rows,
    );
    if nodes.iter().any(|(_, _, d)| {
        dbt::failed(&d.status) && d.message.as_deref().is_some_and(|m| m.contains('\n'))
    }) {
        output::note("a message has more lines: `--failed` shows each failure whole");
    }
    Ok(0)
}

/// `alerts`: the outbox as the store has it.
pub fn alerts(dir: &Path, pipeline: Option<&str>, as_json: bool, limit: u32) -> Result<i32> {
    let project = load_project(dir)?;
    if let Some(p) = pipeline {
        require_pipeline(&project, p)?;
    }
    let store = open_store(&project)?;
    let rows = store.alerts(pipeline, limit)?;
    if as_json {
        pretty(&rows.iter().map(view::Alert::from_row).collect::<Vec<_>>())?;
        return Ok(0);
    }
    output::table(
        &[
            "CREATED", "CHANNEL", "EVENT", "PIPELINE", "RUN_ID", "TASK", "STATUS", "ERROR",
        ],
        &rows
            .iter()
            .map(|a| {
                vec![
                    ts(Some(a.created_at)),
                    a.channel.clone(),
                    a.kind.clone(),
                    a.pipeline.clone(),
                    a.run_id.clone().unwrap_or_default(),
                    a.task_id.clone().unwrap_or_default(),
                    a.status.clone(),
                    a.error.clone().unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(0)
}

/// `pipelines`: each pipeline with its schedule, next run, latest and latest finished run.
pub fn pipelines(dir: &Path, as_json: bool) -> Result<i32> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    let paused = store.paused_pipelines()?;
    let now = nightshift_core::time::from_micros(nightshift_engine::clock::real_now_us());
    let mut names: Vec<&String> = project.pipelines.keys().collect();
    names.sort();
    let mut list = view::PipelineList {
        pipelines: vec![],
        problems: vec![],
    };
    for name in names {
        let p = &project.pipelines[name].pipeline;
        let is_paused = paused.iter().any(|x| x == name);
        list.pipelines
            .push(view::PipelineSummary::build(&store, p, is_paused, now)?);
    }
    let invalid: Vec<_> = project.problems.iter().filter(|p| p.has_errors()).collect();
    if as_json {
        list.problems = invalid.iter().map(|p| p.to_string()).collect();
        pretty(&list)?;
        return Ok(0);
    }
    let show = |r: &Option<view::Run>| {
        r.as_ref()
            .map(|r| format!("{} {}", r.run_id, r.state))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = list
        .pipelines
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{} ({})", s.schedule, s.timezone),
                s.next_run_at.clone().unwrap_or_else(|| "-".into()),
                show(&s.last_run),
                show(&s.last_finished_run),
                if s.paused { "paused" } else { "" }.to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "PIPELINE",
            "SCHEDULE",
            "NEXT RUN",
            "LATEST RUN",
            "LATEST FINISHED",
            "PAUSED",
        ],
        &rows,
    );
    for f in invalid {
        output::note(format!(
            "warning: `{}` does not validate; run `nightshift validate` for its problems",
            f.path.display()
        ));
    }
    Ok(0)
}

/// `audit`: the audit log as the store has it.
pub fn audit(dir: &Path, as_json: bool, limit: u32) -> Result<i32> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    let rows = store.audit(None, limit.clamp(1, 100_000))?;
    if as_json {
        pretty(
            &rows
                .iter()
                .map(view::AuditEntry::from_row)
                .collect::<Vec<_>>(),
        )?;
        return Ok(0);
    }
    if rows.is_empty() {
        output::note("the audit log is empty: no action was taken through the web UI or API");
        return Ok(0);
    }
    output::table(
        &["AT", "TOKEN", "ACTION", "TARGET", "CLIENT", "OUTCOME"],
        &rows
            .iter()
            .map(|a| {
                vec![
                    ts(Some(a.at)),
                    a.actor.clone(),
                    a.action.clone(),
                    a.target.clone(),
                    a.client.clone(),
                    output::inert(&a.outcome).into_owned(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(0)
}

pub fn status(dir: &Path, as_json: bool) -> Result<i32> {
    let project = load_project(dir)?;
    let store = open_store(&project)?;
    if as_json {
        pretty(&view::Status::read(&store)?)?;
        return Ok(0);
    }
    let now = store.now_us()?;
    let engines = store.engines()?;
    let lease = store.scheduler_lease()?.filter(|l| l.expires_at > now);
    let age = |at: i64| (now - at).max(0) / 1_000_000;
    output::line(format!("store: {}", store.location()));
    match &lease {
        Some(l) => output::line(format!(
            "scheduler role: pid {} on `{}` (last heartbeat {}s ago)",
            l.pid,
            l.host,
            age(l.heartbeat_at)
        )),
        None => output::line("scheduler role: nobody holds it (no `nightshift up` is running)"),
    }
    output::table(
        &[
            "HOST",
            "PID",
            "ROLE",
            "POOLS",
            "STARTED",
            "LAST HEARTBEAT",
            "RUNNING",
        ],
        &engines
            .iter()
            .map(|e| {
                let beat = if e.alive(now) {
                    format!("{}s ago", age(e.heartbeat_at))
                } else {
                    format!("{}s ago (gone?)", age(e.heartbeat_at))
                };
                vec![
                    e.host.clone(),
                    e.pid.to_string(),
                    e.role.clone(),
                    e.pools.clone().unwrap_or_else(|| "all".into()),
                    ts(Some(e.started_at)),
                    beat,
                    e.running.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(0)
}
