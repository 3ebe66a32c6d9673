//! Server-rendered pages. Every value is escaped by maud; actions are forms that carry
//! the session's CSRF token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use nightshift_core::time::to_micros;

use crate::api::{calendar_range, query_int};
use crate::model::{GridPage, RunSummary};
use crate::svg::{self, color};
use crate::{AppState, WebError};

type St = State<Arc<AppState>>;
type Q = Query<HashMap<String, String>>;

const CSS: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#263238;background:#fafafa}
header{background:#263238;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}
main{padding:16px;max-width:1400px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;font-size:.9em}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:.85em}
.muted{color:#78909c}.err{color:#c62828;white-space:pre-wrap}.ok{color:#2e7d32}
.grid td.cell{padding:0;width:18px;height:18px}.grid td.cell a{display:block;width:18px;height:18px}
.grid th.run{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;font-size:.75em;height:90px}
form.inline{display:inline-block;margin:0 12px 6px 0}
pre.log{background:#102027;color:#e0f2f1;padding:8px;overflow:auto;max-height:70vh;font-size:.8em}
.cal{display:grid;grid-template-rows:repeat(7,16px);grid-auto-flow:column;grid-auto-columns:16px;gap:3px}
.cal a,.cal span{display:block;width:16px;height:16px;border:1px solid #cfd8dc;border-radius:2px}
.legend span{display:inline-block;width:12px;height:12px;border:1px solid #90a4ae;margin:0 4px 0 12px;vertical-align:middle}
"#;

const LIVE_LOG: &str = r#"
(function(){
  var pre=document.getElementById('log'); if(!pre){return;}
  var off=Number(pre.dataset.offset||0), src=pre.dataset.src, status=document.getElementById('live');
  function tick(){
    fetch(src+'?offset='+off).then(function(r){
      if(!r.ok){status.textContent='log unavailable ('+r.status+')';return null;}
      var next=Number(r.headers.get('x-next-offset')), done=r.headers.get('x-complete')==='true';
      return r.text().then(function(t){
        if(t){var atEnd=pre.scrollTop+pre.clientHeight>=pre.scrollHeight-4;pre.textContent+=t;if(atEnd){pre.scrollTop=pre.scrollHeight;}}
        off=next;
        if(done){status.textContent='complete';}else{status.textContent='live';setTimeout(tick,1000);}
      });
    }).catch(function(){setTimeout(tick,3000);});
  }
  if(pre.dataset.complete!=='true'){tick();}
})();
"#;

fn layout(st: &AppState, headers: &HeaderMap, title: &str, body: Markup) -> Markup {
    let logged_in = st.session_csrf(headers).is_some();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) " · nightshift" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a href="/" { strong { "nightshift" } }
                    a href="/" { "Pipelines" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href="/metrics" { "Metrics" }
                    span.who {
                        @if logged_in {
                            form.inline method="post" action="/logout" { button type="submit" { "Log out" } }
                        } @else {
                            a href="/login" { "Log in to act" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn badge(state: &str) -> Markup {
    let fg = if matches!(state, "PENDING" | "NONE" | "none" | "missing" | "on_track") {
        "#263238"
    } else {
        "#fff"
    };
    html! { span.badge data-state=(state) style=(format!("background:{};color:{fg}", color(state))) { (state) } }
}

fn page(st: &AppState, headers: &HeaderMap, title: &str, body: Markup) -> Response {
    axum::response::Html(layout(st, headers, title, body).into_string()).into_response()
}

fn error_page(st: &AppState, headers: &HeaderMap, e: WebError) -> Response {
    let status = e.status();
    let mut res = page(
        st,
        headers,
        "Error",
        html! { h1 { "Something is wrong" } p.err { (e.to_string()) } p { a href="/" { "Back to the pipelines" } } },
    );
    *res.status_mut() = status;
    res
}

/// Renders `f`, or an error page with the error's status.
fn render(
    st: &AppState,
    headers: &HeaderMap,
    f: impl FnOnce() -> Result<Response, WebError>,
) -> Response {
    if let Err(e) = st.require_read(headers) {
        return if matches!(e, WebError::Unauthorized(_)) {
            Redirect::to("/login").into_response()
        } else {
            error_page(st, headers, e)
        };
    }
    match f() {
        Ok(r) => r,
        Err(e) => error_page(st, headers, e),
    }
}

fn msg_banner(q: &HashMap<String, String>) -> Markup {
    html! {
        @if let Some(m) = q.get("msg") { p.ok role="status" { (m) } }
    }
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

fn fmt_ms(ms: Option<i64>) -> String {
    ms.map(|m| format!("{:.1}s", m as f64 / 1000.0))
        .unwrap_or_else(|| "–".into())
}

pub async fn index(State(st): St, headers: HeaderMap, Query(q): Q) -> Response {
    render(&st, &headers, || {
        let project = st.project();
        let mut names: Vec<&String> = project.pipelines.keys().collect();
        names.sort();
        let mut rows = vec![];
        for n in names {
            rows.push(st.summary(n)?);
        }
        let csrf = st.session_csrf(&headers);
        Ok(page(
            &st,
            &headers,
            "Pipelines",
            html! {
                h1 { "Pipelines" }
                (msg_banner(&q))
                @for p in project.problems.iter().filter(|p| p.has_errors()) {
                    div.err role="alert" { "This file has errors; the last valid version keeps running:\n" (p.to_string()) }
                }
                table #pipelines {
                    tr { th { "Pipeline" } th { "Schedule" } th { "Next run" } th { "Last run" } th { "Deadline" } th { "Paused" } th { "" } }
                    @for p in &rows {
                        tr data-pipeline=(p.name) {
                            td { a href={"/pipelines/" (p.name)} { (p.name) } @if let Some(d) = &p.description { br; span.muted { (d) } } }
                            td { code { (p.schedule) } " " span.muted { (p.timezone) } }
                            td { (p.next_run_at.clone().unwrap_or_default()) }
                            td { @if let Some(r) = &p.last_run { a href={"/pipelines/" (p.name) "/runs/" (r.run_id)} { (r.run_id) } " " (badge(&r.state)) } @else { span.muted { "no runs yet" } } }
                            td { @if let Some(d) = &p.deadline { (d) " " @if let Some(s) = &p.deadline_state { (badge(s)) } } @else { span.muted { "–" } } }
                            td { @if p.paused { (badge("paused")) } @else { "no" } }
                            td {
                                @if let Some(c) = &csrf {
                                    form.inline method="post" action={"/ui/pipelines/" (p.name) "/" (if p.paused { "unpause" } else { "pause" })} {
                                        (csrf_field(c)) button type="submit" { (if p.paused { "Unpause" } else { "Pause" }) }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ))
    })
}

fn action_forms(p: &str, paused: bool, csrf: Option<&str>, bf: (&str, &str)) -> Markup {
    html! {
        @if let Some(c) = csrf {
            div.actions {
                form.inline method="post" action={"/ui/pipelines/" (p) "/trigger"} {
                    (csrf_field(c)) label { "Run ds " input type="date" name="ds" required; } " "
                    label { input type="checkbox" name="rerun" value="true"; " again if done" } " " button type="submit" { "Trigger" }
                }
                form.inline method="post" action={"/ui/pipelines/" (p) "/backfill"} {
                    (csrf_field(c)) label { "Backfill " input type="date" name="from" value=(bf.0) required; } " "
                    label { "to " input type="date" name="to" value=(bf.1) required; } " " button type="submit" { "Backfill" }
                }
                form.inline method="post" action={"/ui/pipelines/" (p) "/" (if paused { "unpause" } else { "pause" })} {
                    (csrf_field(c)) button type="submit" { (if paused { "Unpause" } else { "Pause" }) }
                }
                form.inline method="post" action={"/ui/pipelines/" (p) "/cancel-backfills"} {
                    (csrf_field(c)) button type="submit" title="Cancel every unfinished backfill run; the schedule goes on" { "Cancel backfills" }
                }
            }
        } @else {
            p.muted { a href="/login" { "Log in" } " with the token to trigger, backfill, clear or pause." }
        }
    }
}

fn pipeline_header(g: &crate::model::PipelineSummary) -> Markup {
    html! {
        h1 { "Pipeline " (g.name) @if g.paused { " " (badge("paused")) } }
        p {
            "Schedule " code { (g.schedule) } " (" (g.timezone) ") · next run " (g.next_run_at.clone().unwrap_or_default())
            @if let Some(d) = &g.deadline { " · deadline " (d) @if let Some(s) = &g.deadline_state { " " (badge(s)) } }
        }
        p { a href={"/pipelines/" (g.name)} { "Grid" } " · " a href={"/pipelines/" (g.name) "/graph"} { "Graph" } " · " a href={"/pipelines/" (g.name) "/calendar"} { "Calendar" } }
    }
}

fn grid_table(g: &GridPage) -> Markup {
    let runs: Vec<&crate::model::GridRun> = g.runs.iter().rev().collect();
    html! {
        table.grid #grid {
            tr {
                th { "task \\ run" }
                @for r in &runs {
                    th.run title={(r.run.run_id) " ds " (r.run.ds) ": " (r.run.state)} {
                        a href={"/pipelines/" (g.pipeline.name) "/runs/" (r.run.run_id)} { (r.run.ds) }
                    }
                }
            }
            tr {
                th { "run" }
                @for r in &runs {
                    td.cell data-run=(r.run.run_id) data-state=(r.run.state) style=(format!("background:{}", color(&r.run.state))) {
                        a href={"/pipelines/" (g.pipeline.name) "/runs/" (r.run.run_id)} title={(r.run.run_id) ": " (r.run.state)} {}
                    }
                }
            }
            @for t in &g.pipeline.tasks {
                tr {
                    th { (t.id) }
                    @for r in &runs {
                        @let cell = r.tasks.get(&t.id);
                        @let state = cell.map(|c| c.state.as_str()).unwrap_or("NONE");
                        @let tries = cell.map(|c| c.try_number).unwrap_or(0);
                        td.cell data-task=(t.id) data-run=(r.run.run_id) data-state=(state) style=(format!("background:{}", color(state))) {
                            @if tries > 0 {
                                a href={"/pipelines/" (g.pipeline.name) "/runs/" (r.run.run_id) "/tasks/" (t.id) "/tries/" (tries)} title={(t.id) " " (r.run.run_id) ": " (state) " (try " (tries) ")"} {}
                            } @else {
                                a href={"/pipelines/" (g.pipeline.name) "/runs/" (r.run.run_id)} title={(t.id) " " (r.run.run_id) ": " (state)} {}
                            }
                        }
                    }
                }
            }
        }
    }
}

fn legend() -> Markup {
    html! {
        p.legend.muted {
            @for s in ["SUCCESS", "RUNNING", "FAILED", "UPSTREAM_FAILED", "UP_FOR_RETRY", "QUEUED", "PENDING", "SKIPPED", "CANCELLED"] {
                span style=(format!("background:{}", color(s))) {} (s)
            }
        }
    }
}

pub async fn pipeline(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Response {
    render(&st, &headers, || {
        let limit = query_int(&q, "limit", 1, 200)?.unwrap_or(25) as u32;
        let before = query_int(&q, "before", i64::MIN, i64::MAX)?;
        let g = st.grid(&p, before, limit)?;
        let csrf = st.session_csrf(&headers);
        let chart_runs: Vec<&RunSummary> = g.runs.iter().rev().map(|r| &r.run).collect();
        Ok(page(
            &st,
            &headers,
            &p,
            html! {
                (pipeline_header(&g.pipeline))
                (msg_banner(&q))
                (action_forms(&p, g.pipeline.paused, csrf.as_deref(), ("", "")))
                h2 { "Duration and rows loaded" }
                (svg::history(&chart_runs))
                h2 { "Grid" }
                (legend())
                @if g.runs.is_empty() { p.muted { "No runs yet." } } @else { (grid_table(&g)) }
                p {
                    @if before.is_some() { a href={"/pipelines/" (p) "?limit=" (limit)} { "« newest" } " " }
                    @if let Some(nb) = g.next_before { a #older href={"/pipelines/" (p) "?limit=" (limit) "&before=" (nb)} { "older »" } }
                }
            },
        ))
    })
}

pub async fn graph(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Response {
    render(&st, &headers, || {
        let g = st.grid(&p, None, 25)?;
        let chosen = match q.get("run") {
            Some(id) => Some(st.run_detail(&p, id)?.0),
            None => match g.runs.first() {
                Some(r) => Some(st.run_detail(&p, &r.run.run_id)?.0),
                None => None,
            },
        };
        let states: HashMap<String, String> = chosen
            .as_ref()
            .map(|d| {
                d.tasks
                    .iter()
                    .map(|t| (t.task_id.clone(), t.state.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let tries: HashMap<String, u32> = chosen
            .as_ref()
            .map(|d| {
                d.tasks
                    .iter()
                    .map(|t| (t.task_id.clone(), t.try_number))
                    .collect()
            })
            .unwrap_or_default();
        let run_id = chosen.as_ref().map(|d| d.run.run_id.clone());
        let pname = p.clone();
        let drawing = svg::graph(&g.pipeline.tasks, &states, |task| {
            let rid = run_id.as_ref()?;
            let n = tries.get(task).copied().unwrap_or(0);
            Some(if n > 0 {
                format!("/pipelines/{pname}/runs/{rid}/tasks/{task}/tries/{n}")
            } else {
                format!("/pipelines/{pname}/runs/{rid}")
            })
        });
        Ok(page(
            &st,
            &headers,
            &format!("{p} graph"),
            html! {
                (pipeline_header(&g.pipeline))
                form method="get" {
                    label { "Run " select name="run" {
                        @for r in &g.runs {
                            option value=(r.run.run_id) selected[run_id.as_deref() == Some(r.run.run_id.as_str())] { (r.run.run_id) " (ds " (r.run.ds) ") " (r.run.state) }
                        }
                    } }
                    " " button type="submit" { "Show" }
                }
                @if let Some(d) = &chosen { p { "Run " a href={"/pipelines/" (p) "/runs/" (d.run.run_id)} { (d.run.run_id) } " " (badge(&d.run.state)) } }
                (legend())
                div #graph { (drawing) }
            },
        ))
    })
}

pub async fn calendar(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Response {
    render(&st, &headers, || {
        let (from, to) = calendar_range(&q, st.today())?;
        let days = st.calendar(&p, from, to)?;
        let summary = st.summary(&p)?;
        let csrf = st.session_csrf(&headers);
        let missing = days.iter().filter(|d| d.state == "missing").count();
        // Start the grid on a Monday so rows are weekdays.
        let pad = from.weekday().to_monday_zero_offset() as usize;
        let bf_from = q.get("bf_from").cloned().unwrap_or_default();
        let bf_to = q.get("bf_to").cloned().unwrap_or_else(|| bf_from.clone());
        Ok(page(
            &st,
            &headers,
            &format!("{p} calendar"),
            html! {
                (pipeline_header(&summary))
                h2 { "Partitions " (from) " to " (to) }
                p { (missing) " missing day(s). Click a missing day to fill the backfill form with it." }
                p.legend.muted {
                    @for s in ["done", "failed", "running", "queued", "cancelled", "missing", "future"] { span style=(format!("background:{}", color(s))) {} (s) }
                }
                div.cal #calendar {
                    @for _ in 0..pad { span style="border:none" {} }
                    @for d in &days {
                        @let title = format!("{}: {}", d.ds, d.state);
                        @if let Some(r) = &d.run_id {
                            a data-ds=(d.ds) data-state=(d.state) title=(title) href={"/pipelines/" (p) "/runs/" (r)} style=(format!("background:{}", color(&d.state))) {}
                        } @else if d.state == "missing" {
                            a data-ds=(d.ds) data-state=(d.state) title=(title) href={"/pipelines/" (p) "/calendar?from=" (from) "&to=" (to) "&bf_from=" (d.ds)} style=(format!("background:{}", color(&d.state))) {}
                        } @else {
                            span data-ds=(d.ds) data-state=(d.state) title=(title) style=(format!("background:{}", color(&d.state))) {}
                        }
                    }
                }
                h2 { "Backfill" }
                (action_forms(&p, summary.paused, csrf.as_deref(), (&bf_from, &bf_to)))
            },
        ))
    })
}

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
        let tests: Vec<&crate::model::DbtResult> =
            d.dbt.iter().filter(|x| x.resource_type == "test").collect();
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
                        @for x in &tests { tr { td { (x.unique_id) } td { (badge(&x.status.to_uppercase())) } td { (x.failures.map(|f| f.to_string()).unwrap_or_default()) } td { (x.task_id) " #" (x.try_number) } } } }
                }
                @let models: Vec<&crate::model::DbtResult> = d.dbt.iter().filter(|x| x.resource_type != "test").collect();
                @if !models.is_empty() {
                    h2 { "dbt models" }
                    table #dbt-models { tr { th { "node" } th { "status" } th { "time" } th { "message" } }
                        @for x in &models { tr { td { (x.unique_id) } td { (x.status) } td { (x.execution_time.map(|t| format!("{t:.2}s")).unwrap_or_default()) } td { (x.message.clone().unwrap_or_default()) } } } }
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
                script { (PreEscaped(LIVE_LOG)) }
            },
        ))
    })
}

pub fn login_page(error: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; link rel="icon" href="data:,"; title { "Log in · nightshift" } style { (PreEscaped(CSS)) } }
            body {
                header { a href="/" { strong { "nightshift" } } }
                main {
                    h1 { "Log in" }
                    p { "Actions need the token set in " code { "NIGHTSHIFT_TOKEN" } " (or " code { "[web] token_env" } ") when " code { "nightshift up" } " started." }
                    @if let Some(e) = error { p.err role="alert" { (e) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next.unwrap_or("/"));
                        label { "Token " input type="password" name="token" autocomplete="current-password" required; }
                        " " button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

pub async fn login_form(Query(q): Q) -> Response {
    axum::response::Html(login_page(None, q.get("next").map(String::as_str)).into_string())
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    ds: Option<String>,
    from: Option<String>,
    to: Option<String>,
    rerun: Option<String>,
    task: Option<String>,
    downstream: Option<String>,
}

fn done(to: String, msg: &str) -> Response {
    let enc: String = msg
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    Redirect::to(&format!("{to}?msg={enc}")).into_response()
}

fn need<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, WebError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WebError::BadRequest(format!("the form needs `{name}`")))
}

pub async fn pipeline_action(
    State(st): St,
    headers: HeaderMap,
    Path((p, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let res = (|| {
        st.require_session(&headers, f.csrf.as_deref())?;
        let again = f.rerun.as_deref() == Some("true");
        let v = match action.as_str() {
            "trigger" => st.act_trigger(&p, need(&f.ds, "ds")?, again)?,
            "backfill" => st.act_backfill(&p, need(&f.from, "from")?, need(&f.to, "to")?, again)?,
            "pause" => st.act_pause(&p, true)?,
            "unpause" => st.act_pause(&p, false)?,
            "cancel-backfills" => st.act_cancel(&p, None)?,
            other => return Err(WebError::NotFound(format!("no action `{other}`"))),
        };
        Ok(v)
    })();
    match res {
        Ok(v) => done(format!("/pipelines/{p}"), &format!("{action}: {v}")),
        Err(e) => error_page(&st, &headers, e),
    }
}

pub async fn cancel_action(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let res = (|| {
        st.require_session(&headers, f.csrf.as_deref())?;
        st.act_cancel(&p, Some(&run_id))
    })();
    match res {
        Ok(_) => done(format!("/pipelines/{p}/runs/{run_id}"), "cancelled"),
        Err(e) => error_page(&st, &headers, e),
    }
}

pub async fn clear_action(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let res = (|| {
        st.require_session(&headers, f.csrf.as_deref())?;
        st.act_clear(
            &p,
            &run_id,
            need(&f.task, "task")?,
            f.downstream.as_deref() == Some("true"),
        )
    })();
    match res {
        Ok(v) => done(
            format!("/pipelines/{p}/runs/{run_id}"),
            &format!("cleared: {}", v["cleared"]),
        ),
        Err(e) => error_page(&st, &headers, e),
    }
}
