//! `notify`: `nightshift __notify REQUEST`, with the run's summary as the store has it now.
//! Webhook URLs stay in the environment (`url_env`), out of argv and logs.

use nightshift_core::TaskState;
use nightshift_core::kinds::{NotifyRequest, NotifySpec, TaskSummary};
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths, internal_argv};
use crate::attempt::TryCtx;

impl Runner for NotifySpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let tis = c
            .store
            .task_instances(c.run.pk)
            .map_err(|e| e.to_string())?;
        let tries = c.store.tries(c.run.pk).map_err(|e| e.to_string())?;
        let mut tasks = vec![];
        let mut failed = false;
        let mut rows = 0;
        for ti in tis.iter().filter(|t| t.pk != c.ti.pk) {
            let last = tries
                .iter()
                .filter(|t| t.ti_pk == ti.pk)
                .max_by_key(|t| t.try_number);
            failed |= ti.state.is_failure();
            if ti.state == TaskState::Success {
                rows += last.and_then(|t| t.rows_loaded).unwrap_or(0);
            }
            tasks.push(TaskSummary {
                task_id: ti.task_id.clone(),
                state: ti.state.as_str().to_owned(),
                tries: tries.iter().filter(|t| t.ti_pk == ti.pk).count() as u32,
                duration_ms: last.and_then(|t| t.duration_ms),
                error: last.and_then(|t| t.error.clone()),
            });
        }
        let nodes = c.store.dbt_nodes(c.run.pk).map_err(|e| e.to_string())?;
        let failed_checks = nodes
            .iter()
            .filter(|(_, _, n)| {
                n.resource_type == "test" && matches!(n.status.as_str(), "fail" | "error")
            })
            .map(|(_, _, n)| n.unique_id.clone())
            .collect();
        let channels = self
            .channels
            .iter()
            .map(|name| {
                c.channels
                    .get(name)
                    .map(|ch| (name.clone(), ch.clone()))
                    .ok_or_else(|| format!("unknown channel `{name}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = NotifyRequest {
            keys: p.ctx.keys.clone(),
            status: if failed { "FAILED" } else { "SUCCESS" }.to_owned(),
            rows_loaded: rows,
            tasks,
            failed_checks,
            channels,
            project_dir: c.project_dir.to_string_lossy().into_owned(),
        };
        internal_argv("__notify", &request, p)
    }

    fn keeps_env(&self, c: &TryCtx) -> Vec<String> {
        self.channels
            .iter()
            .filter_map(|n| c.channels.get(n))
            .flat_map(super::channel_env)
            .collect()
    }
}
