use std::path::Path;

use anyhow::Result;

use crate::commands::usage;
use crate::output;
use nightshift_engine::project;

pub fn exec(dir: &Path, as_json: bool) -> Result<i32> {
    let project = project::load(dir).map_err(|e| usage(format!("{e:#}")))?;
    let errors: usize = project
        .problems
        .iter()
        .map(|p| p.diagnostics.iter().filter(|d| d.is_error()).count())
        .sum();
    if as_json {
        let problems: Vec<serde_json::Value> = project
            .problems
            .iter()
            .flat_map(|f| {
                f.diagnostics.iter().map(move |d| {
                    let (line, column) = d
                        .span
                        .as_ref()
                        .map(|s| nightshift_core::diag::line_col(&f.source, s.start))
                        .unzip();
                    serde_json::json!({
                        "file": f.path.display().to_string(), "line": line, "column": column,
                        "severity": if d.is_error() { "error" } else { "warning" },
                        "message": d.message, "help": d.help,
                    })
                })
            })
            .collect();
        let mut names: Vec<&String> = project.pipelines.keys().collect();
        names.sort();
        output::line(serde_json::to_string_pretty(&serde_json::json!({
            "ok": errors == 0, "pipelines": names, "problems": problems,
        }))?);
        return Ok(if errors > 0 { 2 } else { 0 });
    }
    for p in &project.problems {
        output::diagnostics(p);
    }
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
