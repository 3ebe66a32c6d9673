//! `dbt`: dbt's own argv (built in [`crate::dbt`]) with a target path per try; a retry runs
//! only the nodes the previous try did not finish; its results are read from
//! `run_results.json` after it ends.

use jiff::Timestamp;
use nightshift_core::kinds::{DbtRunner, DbtSpec, DbtWarmRequest};
use nightshift_core::pipeline::Task;

use super::{Findings, Prepared, Runner, TryPaths};
use crate::attempt::TryCtx;
use crate::dbt;
use crate::executor::{self, ChildOutcome, Exit};

impl Runner for DbtSpec {
    fn prepare(&self, c: &TryCtx, task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        // A retry runs only what failed or was skipped, when the previous try says so.
        let prev = (c.try_number > 1)
            .then(|| {
                dbt::read_results(&dbt::try_dir(
                    &c.project_dir,
                    &c.run.pipeline,
                    &c.run.run_id,
                    &task.id,
                    c.try_number - 1,
                ))
            })
            .flatten();
        let only = prev
            .as_deref()
            .and_then(dbt::remaining_nodes)
            .filter(|_| dbt::selects(self));
        if let Some(nodes) = &only {
            executor::log_note(
                p.log_path,
                c.clock.as_ref(),
                &format!(
                    "retrying only the {} node(s) that did not succeed: {}",
                    nodes.len(),
                    nodes.join(" ")
                ),
            );
        }
        std::fs::create_dir_all(p.work_dir)
            .map_err(|e| format!("cannot create `{}`: {e}", p.work_dir.display()))?;
        if dbt::seed_parse(&dbt::parse_cache(self, &c.project_dir, p.ctx), p.work_dir) {
            executor::log_note(
                p.log_path,
                c.clock.as_ref(),
                "starting from the run's saved dbt parse (same project, profile, target and vars)",
            );
        }
        let (argv, env) = dbt::command(self, &c.project_dir, p.work_dir, p.ctx, only.as_deref());
        if self.runner.unwrap_or(c.dbt_runner) == DbtRunner::Warm {
            let mut prepared = warm(self, c, p, argv, "request.json")?;
            prepared.env = env;
            return Ok(prepared);
        }
        Ok(Prepared { argv, env })
    }

    /// In the dbt project, as dbt users run dbt: a profile's relative path resolves there.
    fn default_cwd(&self, c: &TryCtx) -> std::path::PathBuf {
        c.project_dir.join(&self.project_dir)
    }

    /// dbt finishes the node it is on and writes its artifacts on SIGINT.
    fn stop_signal(&self) -> nix::sys::signal::Signal {
        nix::sys::signal::Signal::SIGINT
    }

    fn json_log(&self) -> bool {
        true
    }

    fn says_why(&self) -> bool {
        false
    }

    fn keeps_env(&self, _c: &TryCtx) -> Vec<String> {
        vec![]
    }

    fn conclude(
        &self,
        c: &TryCtx,
        _task: &Task,
        _started: Timestamp,
        p: &TryPaths<'_>,
        outcome: &ChildOutcome,
    ) -> Findings {
        let mut found = Findings::default();
        dbt::keep_parse(p.work_dir, &dbt::parse_cache(self, &c.project_dir, p.ctx));
        if let Some(nodes) = dbt::read_results(p.work_dir) {
            found.metrics = dbt::summary(&nodes);
            found.reason = dbt::failure_reason(&nodes);
            found.dbt_nodes = Some(nodes);
        }
        if let Ok(why) = std::fs::read_to_string(p.work_dir.join("warm_error.txt")) {
            found.reason = Some(why);
        }
        if matches!(outcome.exit, Exit::Code(2)) && found.reason.is_none() {
            found.reason = Some(match dbt::log_errors(p.work_dir) {
                Some(lines) => format!("dbt could not run (a parse error, a bad profile, a missing package or a locked file); dbt said:\n{lines}"),
                None => "dbt could not run (exit 2: a parse error, a bad profile, or the warehouse file locked); see the log".to_owned(),
            });
        }
        // dbt's own files are not masked as the try's log is: the error may quote a secret.
        found.reason = found
            .reason
            .map(|r| c.mask.mask(std::borrow::Cow::Owned(r)).into_owned());
        if let Some(nodes) = &mut found.dbt_nodes {
            for n in nodes.iter_mut() {
                n.message = n
                    .message
                    .take()
                    .map(|m| c.mask.mask(std::borrow::Cow::Owned(m)).into_owned());
            }
        }
        found
    }
}

/// A warm try: its process is `nightshift __dbt_warm`, which hands the invocation to the
/// project's long-lived dbt worker (started here, by the engine, when none is alive).
pub(super) fn warm(
    spec: &DbtSpec,
    c: &TryCtx,
    p: &TryPaths<'_>,
    argv: Vec<String>,
    request_file: &str,
) -> Result<Prepared, String> {
    let python = dbt::python_of(spec, &c.project_dir)?;
    let project = c.project_dir.join(&spec.project_dir);
    let profiles = c.project_dir.join(&spec.profiles_dir);
    let key = dbt::key_of(&[
        &python.to_string_lossy(),
        &project.to_string_lossy(),
        &profiles.to_string_lossy(),
        spec.target.as_deref().unwrap_or(""),
    ]);
    let (dir, socket) = crate::warm::ensure(&c.project_dir, &python, &key)?;
    let own_vars = serde_json::to_string(&spec.vars).unwrap_or_default();
    let request = DbtWarmRequest {
        socket_dir: dir.to_string_lossy().into_owned(),
        socket,
        argv: argv.into_iter().skip(1).collect(),
        parse_argv: dbt::parse_argv(spec, &c.project_dir, p.work_dir, p.ctx),
        manifest_key: dbt::key_of(&[&p.ctx.render(&own_vars)]),
        target_dir: p.work_dir.to_string_lossy().into_owned(),
    };
    super::internal_argv_in("__dbt_warm", &request, p, request_file)
}
