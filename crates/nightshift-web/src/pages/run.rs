//! The run page (tasks, tries, dbt results, published outputs) and the try page (its log,
//! followed live).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;
use nightshift_core::time::to_micros;

use super::*;
use crate::WebError;

pub async fn run(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    render(&st, &headers, || {
        let (d, _) = st.run_detail(&p, &run_id)?;
        let csrf = st.session_csrf(&headers);
        let now_us = to_micros(st.now());
        let r = &d.run;
        let pname = p.clone();
        let rid = run_id.clone();
        let gantt = svg::gantt(&d, now_us, |task, n| {
            format!("/pipelines/{pname}/runs/{rid}/tasks/{task}/tries/{n}")
        });
        let mut tests: Vec<&crate::model::DbtResult> =
            d.dbt.iter().filter(|x| x.resource_type == "test").collect();
        // What needs attention first: failing and erroring tests, then warnings, then passes.
        tests.sort_by_key(|x| nightshift_engine::dbt::attention(&x.status));
        let mut models: Vec<&crate::model::DbtResult> =
            d.dbt.iter().filter(|x| x.resource_type != "test").collect();
        models.sort_by_key(|x| nightshift_engine::dbt::attention(&x.status));
        let short = nightshift_engine::dbt::short_name;
        Ok(page(
            &st,
            &headers,
            &format!("{p} {run_id}"),
            html! {
                h1 { "Run " (run_id) " " (badge(&r.state)) }
                p { a href={"/pipelines/" (p)} { "« " (p) } " · " a href={"/pipelines/" (p) "/graph?run=" (run_id)} { "graph" } }
                (msg_banner(&q))
                table #summary {
                    tr { th { "ds" } td { (r.ds) } th { "trigger" } td { (r.trigger) } }
                    tr { th { "data interval" } td colspan="3" { (r.data_interval_start) " → " (r.data_interval_end) } }
                    tr { th { "started" } td { (r.start_time.clone().unwrap_or_default()) } th { "ended" } td { (r.end_time.clone().unwrap_or_default()) } }
                    tr { th { "duration" } td { (fmt_ms(r.duration_ms)) } th { "rows_loaded" } td #rows-loaded { (r.rows_loaded) } }
                    @if let Some(dl) = &r.deadline_at {
                        tr { th { "deadline" } td { (dl) " " @if let Some(s) = &r.deadline_state { (badge(s)) } } th { "forecast finish" } td { (r.forecast_at.clone().unwrap_or_else(|| "–".into())) } }
                    }
                }
                @let run_why: Vec<&str> = d.reasons.iter().filter(|x| x.task_id.is_none()).map(|x| x.reason.as_str()).collect();
            @if !run_why.is_empty() { ul #why { @for w in &run_why { li { (w) } } } }
            @if let Some(c) = &csrf {
                @if r.state == "QUEUED" || r.state == "RUNNING" {
                    form.inline #cancel method="post" action={"/ui/pipelines/" (p) "/runs/" (run_id) "/cancel"} {
                        (csrf_field(c)) button type="submit" { "Cancel run" }
                    }
                }
            }
            h2 { "Tries" }
                div #gantt { (gantt) }
                h2 { "Tasks" }
                table #tasks {
                    tr { th { "task" } th { "kind" } th { "state" } th { "tries" } th { "why" } th { "" } }
                    @for t in &d.tasks {
                        tr data-task=(t.task_id) {
                            td { (t.task_id) }
                            td { (t.kind) }
                            td { (badge(&t.state)) @if let Some(n) = &t.next_try_at { br; span.muted { "next try " (n) } } }
                            td { @for x in &t.tries { a href={"/pipelines/" (p) "/runs/" (run_id) "/tasks/" (t.task_id) "/tries/" (x.try_number)} title=(x.state) { "#" (x.try_number) } " " } }
                            td.why { (d.reasons.iter().find(|x| x.task_id.as_deref() == Some(t.task_id.as_str())).map(|x| x.reason.as_str()).unwrap_or("")) }
                            td {
                                @if let Some(c) = &csrf {
                                    form.inline method="post" action={"/ui/pipelines/" (p) "/runs/" (run_id) "/clear"} {
                                        (csrf_field(c)) input type="hidden" name="task" value=(t.task_id);
                                        label { input type="checkbox" name="downstream" value="true"; " downstream" } " "
                                        button type="submit" { "Clear" }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Data quality" }
                @if d.quality.is_empty() && tests.is_empty() { p.muted { "No figures recorded." } }
                @if !d.quality.is_empty() {
                    table #quality { tr { th { "task" } th { "figure" } th { "value" } }
                        @for f in &d.quality { tr { td { (f.task_id) } td { (f.name) } td { code { (f.value.to_string()) } } } } }
                }
                @if !tests.is_empty() {
                    h2 { "dbt tests" }
                    table #dbt-tests { tr { th { "test" } th { "status" } th { "failures" } th { "try" } }
                        @for x in &tests { tr data-status=(x.status) { td title=(x.unique_id) { (short(&x.unique_id)) @if let Some(m) = x.message.as_deref().filter(|_| nightshift_engine::dbt::failed(&x.status)) { pre.msg { (m) } } } td { (badge(&x.status.to_uppercase())) } td { (x.failures.map(|f| f.to_string()).unwrap_or_default()) } td { (x.task_id) " #" (x.try_number) } } } }
                }
                @if !models.is_empty() {
                    h2 { "dbt models" }
                    table #dbt-models { tr { th { "node" } th { "status" } th { "time" } th { "message" } }
                        @for x in &models { tr data-status=(x.status) { td title=(x.unique_id) { (x.resource_type) " " (short(&x.unique_id)) } td { (badge(&x.status.to_uppercase())) } td { (x.execution_time.map(|t| format!("{t:.2}s")).unwrap_or_default()) } td { @if x.message.as_deref().is_some_and(|m| m.contains('\n')) { pre.msg { (x.message.as_deref().unwrap_or_default()) } } @else { (x.message.clone().unwrap_or_default()) } } } } }
                }
                h2 { "Published outputs" }
                @if d.published.is_empty() { p.muted { "This pipeline publishes nothing." } }
                @for o in &d.published {
                    h3 { (o.output) " " span.muted { (o.path) } }
                    @match &o.manifest {
                        Some(m) => pre.manifest { (serde_json::to_string_pretty(m).unwrap_or_default()) },
                        None => p.muted { "Not published for this ds." },
                    }
                }
                h2 { "History" }
                table #events { tr { th { "at" } th { "task" } th { "try" } th { "state" } th { "detail" } }
                    @for e in &d.events { tr { td { (e.at) } td { (e.task_id.clone().unwrap_or_default()) } td { (e.try_number.map(|n| n.to_string()).unwrap_or_default()) } td { (e.state) } td { (e.detail.clone().unwrap_or_default()) } } } }
            },
        ))
    })
}

pub async fn try_page(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id, task, n)): Path<(String, String, String, String)>,
) -> Response {
    render(&st, &headers, || {
        let (d, _) = st.run_detail(&p, &run_id)?;
        let num: u32 = n.parse().map_err(|_| {
            WebError::BadRequest(format!("try number must be a positive integer, not `{n}`"))
        })?;
        let t =
            d.tasks.iter().find(|t| t.task_id == task).ok_or_else(|| {
                WebError::NotFound(format!("run `{run_id}` has no task `{task}`"))
            })?;
        let x = t
            .tries
            .iter()
            .find(|x| x.try_number == num)
            .ok_or_else(|| WebError::NotFound(format!("task `{task}` has no try {num}")))?;
        let (first, offset, complete) = st.read_log(&p, &run_id, &task, &n, 0)?;
        let src = format!("/api/v1/pipelines/{p}/runs/{run_id}/tasks/{task}/tries/{num}/log");
        Ok(page(
            &st,
            &headers,
            &format!("{task} try {num}"),
            html! {
                h1 { (task) " · try " (num) " " (badge(&x.state)) }
                p { a href={"/pipelines/" (p) "/runs/" (run_id)} { "« run " (run_id) } " · pipeline " a href={"/pipelines/" (p)} { (p) } }
                table #try {
                    tr { th { "started" } td { (x.start_time) } th { "ended" } td { (x.end_time.clone().unwrap_or_else(|| "running".into())) } }
                    tr { th { "duration" } td { (fmt_ms(x.duration_ms)) } th { "exit code" } td #exit-code { (x.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) @if let Some(s) = x.signal { " (signal " (s) ")" } } }
                    tr { th { "host" } td { (x.host) } th { "pid" } td { (x.pid.map(|p| p.to_string()).unwrap_or_default()) } }
                    tr { th { "rows loaded" } td { (x.rows_loaded.map(|r| r.to_string()).unwrap_or_else(|| "–".into())) } th { "tries" } td { (t.try_number) " of " (t.max_tries) } }
                }
                @if let Some(e) = &x.error { h2 { "Error" } p.err #error { (e) } }
                h2 { "Log " span #live.muted { (if complete { "complete" } else { "live" }) } " " a href=(src) { "raw" } }
                pre.log #log data-src=(src) data-offset=(offset) data-complete=(complete) { (String::from_utf8_lossy(&first)) }
                script src="/static/live-log.js" {}
            },
        ))
    })
}
