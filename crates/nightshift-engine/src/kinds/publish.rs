//! `publish`: `nightshift __publish REQUEST`. Refuses when a dbt test of this run failed,
//! whatever the trigger rules let through: only tested data is published.

use nightshift_core::Pipeline;
use nightshift_core::kinds::{DbtRunner, DbtSpec, PublishRequest, PublishSpec, TaskKind};
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths, internal_argv, resolve_connection};
use crate::attempt::TryCtx;
use crate::dbt;

impl Runner for PublishSpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
        // The latest try of each dbt task speaks for it.
        let mut latest: std::collections::BTreeMap<&str, u32> = Default::default();
        for (task, try_number, _) in &nodes {
            let e = latest.entry(task.as_str()).or_insert(0);
            *e = (*e).max(*try_number);
        }
        let mut checks: std::collections::BTreeMap<String, u32> = Default::default();
        let mut invocation = None;
        for (task, try_number, n) in &nodes {
            if latest.get(task.as_str()) != Some(try_number) {
                continue;
            }
            invocation = invocation.or(n.invocation_id.clone());
            if n.resource_type == "test" {
                *checks.entry(n.status.clone()).or_insert(0) += 1;
            }
        }
        let bad =
            checks.get("fail").copied().unwrap_or(0) + checks.get("error").copied().unwrap_or(0);
        if bad > 0 {
            return Err(format!(
                "refusing to publish: {bad} dbt test(s) of this run failed"
            ));
        }
        let dir = p.work_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        // The vars of the pipeline's dbt tasks on the same project, so that the export
        // starts from their parse instead of parsing the project again.
        let spec = dbt_spec_sharing_vars(&self.dbt, &c.pipeline);
        dbt::seed_parse(&dbt::parse_cache(&spec, &c.project_dir, p.ctx), dir);
        let (mut dbt_argv, dbt_env) = dbt::command(&spec, &c.project_dir, dir, p.ctx, None);
        if spec.runner.unwrap_or(c.dbt_runner) == DbtRunner::Warm {
            // The export goes through the project's warm dbt too (`--args` is appended).
            dbt_argv = super::dbt::warm(&spec, c, p, dbt_argv, "dbt-request.json")?.argv;
        }
        let request = PublishRequest {
            dbt_cwd: Some(
                c.project_dir
                    .join(&spec.project_dir)
                    .to_string_lossy()
                    .into_owned(),
            ),
            outputs: self.outputs.clone(),
            root: c
                .project_dir
                .join(&self.output)
                .to_string_lossy()
                .into_owned(),
            dbt_argv,
            dbt_env,
            keys: p.ctx.keys.clone(),
            checks,
            dbt_invocation_id: invocation,
            warehouse: match &self.warehouse {
                Some(w) => Some((w.clone(), resolve_connection(c, &w.connection)?)),
                None => None,
            },
        };
        internal_argv("__publish", &request, p)
    }

    fn conclude(
        &self,
        c: &TryCtx,
        _task: &Task,
        _started: jiff::Timestamp,
        p: &TryPaths<'_>,
        _outcome: &crate::executor::ChildOutcome,
    ) -> super::Findings {
        let spec = dbt_spec_sharing_vars(&self.dbt, &c.pipeline);
        dbt::keep_parse(p.work_dir, &dbt::parse_cache(&spec, &c.project_dir, p.ctx));
        super::Findings::default()
    }
}

/// The publish task's dbt call with the `vars` (and the runner) of the pipeline's dbt tasks
/// on the same project, profile and target, when they all agree (else its own, none).
fn dbt_spec_sharing_vars(own: &DbtSpec, p: &Pipeline) -> DbtSpec {
    let mut spec = own.clone();
    if !spec.vars.is_empty() {
        return spec;
    }
    let mut shared: Option<&DbtSpec> = None;
    for t in &p.tasks {
        if let TaskKind::Dbt(d) = &t.kind
            && d.project_dir == own.project_dir
            && d.profiles_dir == own.profiles_dir
            && d.target == own.target
        {
            match shared {
                None => shared = Some(d),
                Some(s) if s.vars == d.vars && s.runner == d.runner => {}
                Some(_) => return spec,
            }
        }
    }
    if let Some(d) = shared {
        spec.vars = d.vars.clone();
        spec.runner = spec.runner.or(d.runner);
    }
    spec
}
