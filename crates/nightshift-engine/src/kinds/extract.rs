//! `extract`: `nightshift __extract REQUEST`, with the row counts of the latest successful
//! runs for the completeness check.

use nightshift_core::kinds::{ExtractRequest, ExtractSpec};
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths, internal_argv, resolve_connection};
use crate::attempt::TryCtx;

impl Runner for ExtractSpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let connection = resolve_connection(c, &self.connection)?;
        let mut history: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        let recent = c
            .store
            .recent_metrics(&c.run.pipeline, &c.ti.task_id, c.run.data_interval_start, 7)
            .unwrap_or_default();
        for m in recent {
            let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, f64>>(&m)
            else {
                continue;
            };
            for t in &self.tables {
                if let Some(v) = map.get(&format!("rows.{}", t.name)) {
                    history.entry(t.name.clone()).or_default().push(*v as i64);
                }
            }
        }
        let request = ExtractRequest {
            spec: self.clone(),
            connection,
            project_dir: c.project_dir.to_string_lossy().into_owned(),
            keys: p.ctx.keys.clone(),
            history,
        };
        internal_argv("__extract", &request, p)
    }
}
