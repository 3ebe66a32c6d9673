//! dbt lineage: for a dbt task, the DAG of its latest manifest (models, sources, seeds,
//! snapshots and tests), each node coloured by its status in that run; and a node's page,
//! its status and duration over the pipeline's last 30 runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;
use nightshift_core::TaskKind;
use nightshift_engine::dbt::short_name;
use nightshift_engine::view::TaskInfo;
use nightshift_store::RunFilter;
use serde_json::Value;

use super::{St, badge, page, render};
use crate::{AppState, WebError};

/// The kinds of node drawn; macros, docs and the rest are left out.
const DRAWN: &[&str] = &["model", "seed", "snapshot", "test", "source"];

/// dbt's status as the states the pages colour.
fn state_of(status: &str) -> String {
    match status {
        "success" => "SUCCESS".into(),
        "runtime error" => "ERROR".into(),
        other => other.to_uppercase(),
    }
}

impl AppState {
    /// The dbt task `task` of pipeline `p`, refused unless it is one.
    fn dbt_task(&self, p: &str, task: &str) -> Result<(), WebError> {
        let pipeline = self.pipeline(p)?;
        match pipeline.task(task).map(|t| &t.kind) {
            Some(TaskKind::Dbt(_)) => Ok(()),
            _ => Err(WebError::NotFound(format!(
                "pipeline `{p}` has no dbt task `{task}`"
            ))),
        }
    }

    /// The manifest of the task's latest try that wrote one, with its run id.
    fn latest_manifest(&self, p: &str, task: &str) -> Option<(String, PathBuf)> {
        let root = self.project_dir.join(".nightshift/dbt").join(p);
        let mut best: Option<(std::time::SystemTime, String, PathBuf)> = None;
        for run in std::fs::read_dir(&root).ok()?.flatten() {
            let Ok(tries) = std::fs::read_dir(run.path().join(task)) else {
                continue;
            };
            for t in tries.flatten() {
                let m = t.path().join("manifest.json");
                if let Ok(modified) = std::fs::metadata(&m).and_then(|x| x.modified())
                    && best.as_ref().is_none_or(|b| modified > b.0)
                {
                    best = Some((modified, run.file_name().to_string_lossy().into_owned(), m));
                }
            }
        }
        best.map(|(_, run, m)| (run, m))
    }
}

/// The drawn nodes of a manifest: id, kind and what each depends on (among drawn nodes).
fn nodes_of(manifest: &Path) -> Result<Vec<TaskInfo>, WebError> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| WebError::Internal(format!("reading dbt's manifest: {e}")))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| WebError::Internal(format!("dbt's manifest is not JSON: {e}")))?;
    let mut out = vec![];
    for section in ["sources", "nodes"] {
        if let Some(map) = doc[section].as_object() {
            for (id, n) in map {
                let kind = n["resource_type"].as_str().unwrap_or("");
                if !DRAWN.contains(&kind) {
                    continue;
                }
                let deps = n["depends_on"]["nodes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(TaskInfo {
                    id: id.clone(),
                    kind: kind.to_owned(),
                    depends_on: deps,
                });
            }
        }
    }
    // Sources first, then by name: a stable drawing.
    out.sort_by(|a, b| (a.kind != "source", &a.id).cmp(&(b.kind != "source", &b.id)));
    let ids: std::collections::HashSet<String> = out.iter().map(|n| n.id.clone()).collect();
    for n in &mut out {
        n.depends_on.retain(|d| ids.contains(d));
    }
    Ok(out)
}

pub async fn lineage(
    State(st): St,
    headers: HeaderMap,
    UrlPath((p, task)): UrlPath<(String, String)>,
) -> Response {
    render(&st, &headers, || {
        st.dbt_task(&p, &task)?;
        let title = format!("{p} · dbt lineage of {task}");
        let Some((run_id, manifest)) = st.latest_manifest(&p, &task) else {
            return Ok(page(
                &st,
                &headers,
                &title,
                html! {
                    h1 { "dbt lineage of " (task) }
                    p.muted { "No manifest yet: the lineage appears after the task's first try that parses the dbt project." }
                },
            ));
        };
        let nodes = nodes_of(&manifest)?;
        let run = st.find_run(&p, &run_id)?;
        let mut states: HashMap<String, String> = HashMap::new();
        // Every dbt task of the run speaks for its nodes (the tests ran in `dbt test`); a
        // later try overrides an earlier one.
        for (_, _, n) in st.store.dbt_nodes(run.pk)? {
            states.insert(n.unique_id.clone(), state_of(&n.status));
        }
        let drawing = crate::svg::graph_labeled(&nodes, &states, short_name, |id| {
            Some(format!("/pipelines/{p}/dbt/{task}/nodes/{id}"))
        });
        let count = |k: &str| nodes.iter().filter(|n| n.kind == k).count();
        Ok(page(
            &st,
            &headers,
            &title,
            html! {
                h1 { "dbt lineage of " (task) }
                p {
                    a href={"/pipelines/" (p)} { "« " (p) } " · from the manifest of run "
                    a href={"/pipelines/" (p) "/runs/" (run_id)} { (run_id) }
                    " · " (count("model")) " models, " (count("source")) " sources, " (count("seed")) " seeds, "
                    (count("snapshot")) " snapshots, " (count("test")) " tests"
                }
                p.muted { "Each node in its status of that run (grey: not run by it). A node links to its history." }
                div.graph #lineage { (drawing) }
            },
        ))
    })
}

pub async fn node(
    State(st): St,
    headers: HeaderMap,
    UrlPath((p, task, id)): UrlPath<(String, String, String)>,
) -> Response {
    render(&st, &headers, || {
        st.dbt_task(&p, &task)?;
        let runs = st.store.runs_page(&p, None, 30, RunFilter::default())?;
        let mut rows = vec![];
        for r in &runs {
            let last = st
                .store
                .dbt_nodes(r.pk)?
                .into_iter()
                .rfind(|(_, _, n)| n.unique_id == id);
            if let Some((t, n, node)) = last {
                rows.push((r.run_id.clone(), r.ds, t, n, node));
            }
        }
        let durations: Vec<f64> = rows.iter().filter_map(|r| r.4.execution_time).collect();
        let max = durations.iter().copied().fold(0.0, f64::max).max(0.001);
        Ok(page(
            &st,
            &headers,
            &format!("{p} · {}", short_name(&id)),
            html! {
                h1 { (short_name(&id)) }
                p { a href={"/pipelines/" (p) "/dbt/" (task)} { "« lineage of " (task) } " · " code { (id) } }
                @if rows.is_empty() {
                    p.muted { "Not run in the last 30 runs of " (p) "." }
                } @else {
                    table #node-history {
                        tr { th { "run" } th { "ds" } th { "status" } th { "time" } th {} th { "task" } th { "message" } }
                        @for (run_id, ds, t, n, node) in &rows {
                            tr data-status=(node.status) {
                                td { a href={"/pipelines/" (p) "/runs/" (run_id)} { (run_id) } }
                                td { (ds) }
                                td { (badge(&state_of(&node.status))) }
                                td { (node.execution_time.map(|s| nightshift_core::time::human_ms((s * 1000.0) as i64)).unwrap_or_default()) }
                                td { (maud::PreEscaped(format!(
                                    r##"<svg width="120" height="10" role="img" aria-label="time"><rect width="{:.0}" height="10" fill="{}"/></svg>"##,
                                    120.0 * node.execution_time.unwrap_or(0.0) / max,
                                    crate::svg::color(&state_of(&node.status))
                                ))) }
                                td { (t) " #" (n) }
                                td { (node.message.as_deref().and_then(|m| m.lines().next()).unwrap_or("")) }
                            }
                        }
                    }
                }
            },
        ))
    })
}
