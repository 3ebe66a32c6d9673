use std::path::Path;

use anyhow::Result;

use crate::commands::usage;
use crate::output;
use nightshift_engine::project;

pub fn exec(dir: &Path) -> Result<i32> {
    let project = project::load(dir).map_err(|e| usage(format!("{e:#}")))?;
    for p in &project.problems {
        output::note(p.to_string().trim_end());
    }
    let errors: usize = project
        .problems
        .iter()
        .map(|p| p.diagnostics.iter().filter(|d| d.is_error()).count())
        .sum();
    if errors > 0 {
        output::note(format!(
            "error: {errors} problem{} found; nothing was changed",
            if errors == 1 { "" } else { "s" }
        ));
        return Ok(2);
    }
    let mut names: Vec<&String> = project.pipelines.keys().collect();
    names.sort();
    for name in &names {
        let lp = &project.pipelines[*name];
        let p = &lp.pipeline;
        output::line(format!(
            "ok: {name} ({} tasks, schedule `{}` in {})",
            p.tasks.len(),
            p.schedule.expr(),
            p.schedule.tz_name()
        ));
    }
    if names.is_empty() {
        output::note(format!(
            "warning: no pipeline files in `{}`",
            dir.join("pipelines").display()
        ));
    }
    Ok(0)
}
