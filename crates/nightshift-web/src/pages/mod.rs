//! Server-rendered pages. Every value is escaped by maud; actions are forms that carry
//! the session's CSRF token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use crate::api::calendar_range;
use crate::model::{GridPage, Run};
use crate::svg::{self, color};
use crate::{AppState, WebError};

mod forms;
mod lineage;
mod run;
mod status;

pub use forms::{ActionForm, cancel_action, clear_action, login_form, login_page, pipeline_action};
pub use lineage::{lineage, node as dbt_node};
pub use run::{run, try_page};
pub use status::{audit, status};

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
pre.msg{margin:.3em 0 0;white-space:pre-wrap;font-size:.8em;max-width:70em}
.cal{display:grid;grid-template-rows:repeat(7,16px);grid-auto-flow:column;grid-auto-columns:16px;gap:3px}
.cal a,.cal span{display:block;width:16px;height:16px;border:1px solid #cfd8dc;border-radius:2px}
.legend span{display:inline-block;width:12px;height:12px;border:1px solid #90a4ae;margin:0 4px 0 12px;vertical-align:middle}
.cal span.pad{border:none}
.st{background-color:#eceff1}
.st[data-state="RUNNING"],.st[data-state="running"]{background-image:repeating-linear-gradient(45deg,rgba(255,255,255,.45) 0 3px,transparent 3px 7px)}
td.cell[data-trigger="backfill"] a::after,td.cell[data-trigger="manual"] a::after{display:block;text-align:center;font:bold 10px/18px sans-serif;color:#fff}
td.cell[data-trigger="backfill"] a::after{content:"B"}td.cell[data-trigger="manual"] a::after{content:"M"}
.calwrap{display:flex;gap:6px}.cal-days{display:grid;grid-template-rows:repeat(7,16px);gap:3px;font-size:10px;color:#78909c}
.cal-months{display:grid;grid-auto-flow:column;grid-auto-columns:16px;gap:3px;font-size:10px;color:#78909c;margin-left:34px;height:14px}
@media (prefers-color-scheme:dark){
body{background:#121417;color:#e0e0e0}table{background:#1c1f23}td,th{border-color:#333a40}
header{background:#000}a{color:#90caf9}header a{color:#fff}.muted{color:#9aa5ad}
pre.log{background:#000}.err{color:#ef9a9a}.ok{color:#a5d6a7}.cal a,.cal span{border-color:#333a40}
}
"#;

/// Every state the pages color, for the stylesheet's rules (colors live in [`color`]).
const STATES: &[&str] = &[
    "SUCCESS",
    "PASS",
    "done",
    "met",
    "WARN",
    "ERROR",
    "FAIL",
    "FAILED",
    "failed",
    "missed",
    "UPSTREAM_FAILED",
    "RUNNING",
    "running",
    "QUEUED",
    "queued",
    "UP_FOR_RETRY",
    "at_risk",
    "SKIPPED",
    "CANCELLED",
    "cancelled",
    "PENDING",
    "missing",
    "paused",
    "NONE",
    "none",
    "on_track",
    "future",
];

/// The stylesheet, served at `/static/app.css`: with the Content-Security-Policy in force
/// (`default-src 'self'`), pages carry no inline style or script.
pub fn stylesheet() -> &'static str {
    static SHEET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHEET.get_or_init(|| {
        let mut css = CSS.to_owned();
        for s in STATES {
            let fg = if matches!(*s, "PENDING" | "NONE" | "none" | "missing" | "on_track") {
                "#263238"
            } else {
                "#fff"
            };
            css.push_str(&format!(
                ".st[data-state=\"{s}\"]{{background-color:{}}}.badge[data-state=\"{s}\"]{{color:{fg}}}\n",
                color(s)
            ));
        }
        css
    })
}

/// The try page's live log, served at `/static/live-log.js`.
pub fn live_log_script() -> &'static str {
    LIVE_LOG
}

/// Every page that shows running or queued work refreshes its content every 5 s in place
/// (no flicker: `main` is swapped), unless someone is typing in a form. Served at
/// `/static/refresh.js`.
pub const REFRESH: &str = r#"
(function(){
  var active='[data-state=RUNNING],[data-state=QUEUED],[data-state=running],[data-state=queued],[data-state=UP_FOR_RETRY]';
  function busy(){var a=document.activeElement;return a&&(a.tagName==='INPUT'||a.tagName==='SELECT'||a.tagName==='TEXTAREA');}
  function tick(){
    if(!document.querySelector(active)||document.getElementById('log')){return;}
    if(busy()){setTimeout(tick,5000);return;}
    fetch(location.href,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null;}).then(function(t){
      if(t){var doc=new DOMParser().parseFromString(t,'text/html');var m=doc.querySelector('main');
        if(m&&!busy()){document.querySelector('main').innerHTML=m.innerHTML;document.body.dataset.refreshed=String(Date.now());}}
      setTimeout(tick,5000);
    }).catch(function(){setTimeout(tick,10000);});
  }
  setTimeout(tick,5000);
})();
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
    let session = st.session_csrf(headers);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) " · nightshift" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/refresh.js" defer {}
            }
            body {
                header {
                    a href="/" { strong { "nightshift" } }
                    a href="/" { "Pipelines" }
                    a href="/status" { "Processes" }
                    a href="/audit" { "Audit" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href="/metrics" { "Metrics" }
                    span.who {
                        @if let Some(csrf) = &session {
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
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
    html! { span.badge.st data-state=(state) { (state) } }
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
    ms.map(nightshift_core::time::human_ms)
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
                    tr { th { "Pipeline" } th { "Schedule" } th { "Next run" } th { "Last run" } th { "Last finished" } th { "Failed (7 days)" } th { "Deadline" } th { "Paused" } th { "" } }
                    @for p in &rows {
                        tr data-pipeline=(p.name) {
                            td { a href={"/pipelines/" (p.name)} { (p.name) } @if let Some(d) = &p.description { br; span.muted { (d) } } }
                            td { code { (p.schedule) } " " span.muted { (p.timezone) } }
                            td { (p.next_run_at.clone().unwrap_or_default()) }
                            td { @if let Some(r) = &p.last_run { a href={"/pipelines/" (p.name) "/runs/" (r.run_id)} { (r.run_id) } " " (badge(&r.state)) } @else { span.muted { "no runs yet" } } }
                            td.finished { @if let Some(r) = &p.last_finished_run { a href={"/pipelines/" (p.name) "/runs/" (r.run_id)} { (r.run_id) } " " (badge(&r.state)) } @else { span.muted { "–" } } }
                            td.failures { @if p.failures_7d > 0 { span.err { (p.failures_7d) } } @else { span.muted { "0" } } }
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
        p {
            a href={"/pipelines/" (g.name)} { "Grid" } " · " a href={"/pipelines/" (g.name) "/graph"} { "Graph" } " · " a href={"/pipelines/" (g.name) "/calendar"} { "Calendar" }
            @for t in g.tasks.iter().filter(|t| t.kind == "dbt") {
                " · " a.lineage href={"/pipelines/" (g.name) "/dbt/" (t.id)} { "dbt lineage: " (t.id) }
            }
        }
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
                    td.cell.st data-run=(r.run.run_id) data-state=(r.run.state) data-trigger=(r.run.trigger) {
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
                        td.cell.st data-task=(t.id) data-run=(r.run.run_id) data-state=(state) {
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
                span.st data-state=(s) {} (s)
            }
            " · run row: B backfill, M manual"
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
        let gq = st.grid_query(&p, &q, 200)?;
        let (before, limit) = (gq.before, gq.limit);
        let g = st.grid(&p, &gq)?;
        let state = gq.filter.state.map(|s| s.as_str()).unwrap_or("");
        let trigger = gq.filter.trigger.map(|t| t.as_str()).unwrap_or("");
        // The filter carries over to the other pages (the validated names need no escaping).
        let keep = format!("&state={state}&trigger={trigger}");
        let csrf = st.session_csrf(&headers);
        let chart_runs: Vec<&Run> = g.runs.iter().rev().map(|r| &r.run).collect();
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
                form #grid-filter method="get" action={"/pipelines/" (p)} {
                    input type="hidden" name="limit" value=(limit);
                    label { "State " select name="state" {
                        option value="" selected[state.is_empty()] { "all" }
                        @for s in ["QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED"] {
                            option value=(s) selected[state == s] { (s) }
                        }
                    } } " "
                    label { "Trigger " select name="trigger" {
                        option value="" selected[trigger.is_empty()] { "all" }
                        @for t in ["scheduled", "manual", "backfill"] {
                            option value=(t) selected[trigger == t] { (t) }
                        }
                    } } " "
                    label { "Up to ds " input type="date" name="date" value=(q.get("date").map(String::as_str).unwrap_or("")); } " "
                    button type="submit" { "Show" }
                    @if !state.is_empty() || !trigger.is_empty() || before.is_some() {
                        " " a #clear-filter href={"/pipelines/" (p) "?limit=" (limit)} { "clear" }
                    }
                }
                @if g.runs.is_empty() {
                    p.muted { @if state.is_empty() && trigger.is_empty() && before.is_none() { "No runs yet." } @else { "No runs match." } }
                } @else { (grid_table(&g)) }
                p {
                    @if before.is_some() { a href={"/pipelines/" (p) "?limit=" (limit) (keep)} { "« newest" } " " }
                    @if let Some(nb) = g.next_before { a #older href={"/pipelines/" (p) "?limit=" (limit) "&before=" (nb) (keep)} { "older »" } }
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
        let g = st.grid(&p, &crate::model::GridQuery::newest(25))?;
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
                        // The run drawn is always the one selected, even when it is older
                        // than the newest page of runs.
                        @if let Some(d) = chosen.as_ref().filter(|d| !g.runs.iter().any(|r| r.run.run_id == d.run.run_id)) {
                            option value=(d.run.run_id) selected { (d.run.run_id) " (ds " (d.run.ds) ") " (d.run.state) }
                        }
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
                @let span_days = (to - from).get_days().max(1) as i64;
                @let prev_to = from.yesterday().unwrap_or(from);
                @let prev_from = prev_to.checked_sub(jiff::Span::new().days(span_days)).unwrap_or(prev_to);
                @let next_from = to.tomorrow().unwrap_or(to);
                @let next_to = next_from.checked_add(jiff::Span::new().days(span_days)).unwrap_or(next_from);
                p #cal-nav {
                    a rel="prev" href={"/pipelines/" (p) "/calendar?from=" (prev_from) "&to=" (prev_to)} { "« earlier" }
                    " · "
                    a href={"/pipelines/" (p) "/calendar"} { "today" }
                    " · "
                    a rel="next" href={"/pipelines/" (p) "/calendar?from=" (next_from) "&to=" (next_to)} { "later »" }
                }
                p { (missing) " missing day(s). Click a missing day to fill the backfill form with it." }
                p.legend.muted {
                    @for s in ["done", "failed", "running", "queued", "cancelled", "missing", "future"] { span.st data-state=(s) {} (s) }
                }
                @let weeks = (pad + days.len()).div_ceil(7);
                div.cal-months #cal-months {
                    @for w in 0..weeks {
                        @let first = from.checked_add(jiff::Span::new().days((w * 7) as i64 - pad as i64)).unwrap_or(from);
                        @let label = (first.day() <= 7 || w == 0).then(|| first.strftime("%b").to_string());
                        span { (label.unwrap_or_default()) }
                    }
                }
                div.calwrap {
                div.cal-days { @for d in ["Mon", "", "Wed", "", "Fri", "", "Sun"] { span { (d) } } }
                div.cal #calendar {
                    @for _ in 0..pad { span.pad {} }
                    @for d in &days {
                        @let title = format!("{}: {}", d.ds, d.state);
                        @if let Some(r) = &d.run_id {
                            a.st data-ds=(d.ds) data-state=(d.state) title=(title) href={"/pipelines/" (p) "/runs/" (r)} {}
                        } @else if d.state == "missing" {
                            a.st data-ds=(d.ds) data-state=(d.state) title=(title) href={"/pipelines/" (p) "/calendar?from=" (from) "&to=" (to) "&bf_from=" (d.ds)} {}
                        } @else {
                            span.st data-ds=(d.ds) data-state=(d.state) title=(title) {}
                        }
                    }
                }
                }
                h2 { "Backfill" }
                (action_forms(&p, summary.paused, csrf.as_deref(), (&bf_from, &bf_to)))
            },
        ))
    })
}
