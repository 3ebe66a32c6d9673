//! `/api/v1`: JSON for everything the UI shows, and the actions. Bodies and query values
//! are checked here, and a mistake is answered `400 {"error": "..."}` naming the field.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nightshift_core::time::parse_date;

use crate::model::{CalendarDay, GridPage, PipelineSummary, RunDetail};
use crate::openapi::ErrorBody;
use crate::{AppState, WebError};
use nightshift_engine::view::{Alert, AuditEntry, PipelineList, Status};

type St = State<Arc<AppState>>;
type Q = Query<HashMap<String, String>>;

/// A positive integer query value within bounds, or a 400 naming it.
pub fn query_int(
    q: &HashMap<String, String>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, WebError> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(WebError::BadRequest(format!(
                "query parameter `{key}` must be an integer from {min} to {max}, not `{v}`"
            ))),
        },
    }
}

pub fn query_date(
    q: &HashMap<String, String>,
    key: &str,
) -> Result<Option<jiff::civil::Date>, WebError> {
    q.get(key)
        .map(|v| {
            parse_date(v).map_err(|_| {
                WebError::BadRequest(format!("`{key}` must be a date YYYY-MM-DD, not `{v}`"))
            })
        })
        .transpose()
}

/// Parses a JSON body into `T`, saying which field is wrong and where.
pub fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WebError> {
    if bytes.is_empty() {
        return Err(WebError::BadRequest("the request needs a JSON body".into()));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| WebError::BadRequest(format!("invalid request body: {e}")))
}

pub(crate) fn date_field(v: &str, field: &str) -> Result<jiff::civil::Date, WebError> {
    parse_date(v).map_err(|_| {
        WebError::BadRequest(format!("`{field}` must be a date YYYY-MM-DD, not `{v}`"))
    })
}

/// This document
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// Pipelines with schedule, next run, last run, deadline state, paused; and files with errors
#[utoipa::path(get, path = "/api/v1/pipelines", responses((status = 200, description = "Pipelines", body = PipelineList)))]
pub async fn pipelines(State(st): St, headers: HeaderMap) -> Result<Json<PipelineList>, WebError> {
    st.require_read(&headers)?;
    let project = st.project();
    let mut names: Vec<&String> = project.pipelines.keys().collect();
    names.sort();
    let mut out = vec![];
    for n in names {
        out.push(st.summary(n)?);
    }
    let problems: Vec<String> = project
        .problems
        .iter()
        .filter(|p| p.has_errors())
        .map(|p| p.to_string())
        .collect();
    Ok(Json(PipelineList {
        pipelines: out,
        problems,
    }))
}

/// One pipeline
#[utoipa::path(get, path = "/api/v1/pipelines/{p}", params(("p" = String, Path, description = "Pipeline name")), responses((status = 200, description = "Pipeline", body = PipelineSummary), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn pipeline(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<PipelineSummary>, WebError> {
    st.require_read(&headers)?;
    Ok(Json(st.summary(&p)?))
}

/// A page of the grid: runs newest first with each task's state
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/runs", params(("p" = String, Path, description = "Pipeline name"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Runs per page (default 25)"), ("before" = Option<i64>, Query, description = "next_before of the previous page"), ("state" = Option<String>, Query, description = "Only runs in this state: QUEUED, RUNNING, SUCCESS, FAILED or CANCELLED"), ("trigger" = Option<String>, Query, description = "Only runs of this trigger: scheduled, manual or backfill"), ("date" = Option<String>, Query, format = Date, description = "Jump: runs whose ds is on or before this day")), responses((status = 200, description = "Grid page", body = GridPage), (status = 400, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn runs(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Result<Json<GridPage>, WebError> {
    st.require_read(&headers)?;
    let g = st.grid_query(&p, &q, 500)?;
    Ok(Json(st.grid(&p, &g)?))
}

/// A run: tasks and tries, dbt results, data-quality figures, published manifests, history
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/runs/{run_id}", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id")), responses((status = 200, description = "Run", body = RunDetail), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn run(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
) -> Result<Json<RunDetail>, WebError> {
    st.require_read(&headers)?;
    let (d, _) = st.run_detail(&p, &run_id)?;
    Ok(Json(d))
}

/// Partitions by day: done, failed, running, queued, missing, future
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/calendar", params(("p" = String, Path, description = "Pipeline name"), ("from" = Option<String>, Query, format = Date, description = "First day (default: 16 weeks before `to`)"), ("to" = Option<String>, Query, format = Date, description = "Last day (default: today)")), responses((status = 200, description = "Days", body = CalendarPage), (status = 400, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn calendar(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Result<Json<CalendarPage>, WebError> {
    st.require_read(&headers)?;
    let (from, to) = calendar_range(&q, st.today())?;
    let days = st.calendar(&p, from, to)?;
    Ok(Json(CalendarPage { pipeline: p, days }))
}

/// `from`/`to` of a calendar, by default the last 16 weeks; at most two years.
pub fn calendar_range(
    q: &HashMap<String, String>,
    today: jiff::civil::Date,
) -> Result<(jiff::civil::Date, jiff::civil::Date), WebError> {
    let to = query_date(q, "to")?.unwrap_or(today);
    let from = query_date(q, "from")?
        .unwrap_or_else(|| to.checked_sub(jiff::Span::new().days(111)).unwrap_or(to));
    if from > to {
        return Err(WebError::BadRequest(format!(
            "`from` {from} is after `to` {to}"
        )));
    }
    if (to - from).get_days() > 731 {
        return Err(WebError::BadRequest(
            "a calendar spans at most two years".into(),
        ));
    }
    Ok((from, to))
}

/// Alerts sent or failed, newest first
#[utoipa::path(get, path = "/api/v1/alerts", params(("pipeline" = Option<String>, Query, description = "Only this pipeline's alerts"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")), responses((status = 200, description = "Alerts", body = AlertList), (status = 400, description = "Error", body = ErrorBody)))]
pub async fn alerts(
    State(st): St,
    headers: HeaderMap,
    Query(q): Q,
) -> Result<Json<AlertList>, WebError> {
    st.require_read(&headers)?;
    let limit = query_int(&q, "limit", 1, 1000)?.unwrap_or(100) as u32;
    let rows = st
        .store
        .alerts(q.get("pipeline").map(String::as_str), limit)?;
    Ok(Json(AlertList {
        alerts: rows.iter().map(Alert::from_row).collect(),
    }))
}

/// A chunk of a try's log from `offset`; `X-Next-Offset` says where to continue and
/// `X-Complete` whether the try has ended (then no more will come).
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/runs/{run_id}/tasks/{task}/tries/{n}/log", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id"), ("task" = String, Path, description = "Task id"), ("n" = u32, Path, description = "Try number"), ("offset" = Option<u64>, Query, description = "Byte offset to read from (default 0)")), responses((status = 200, description = "Log text", content_type = "text/plain", body = String), (status = 400, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn log(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id, task, n)): Path<(String, String, String, String)>,
    Query(q): Q,
) -> Result<Response, WebError> {
    st.require_read(&headers)?;
    let (bytes, next, complete) = st.read_log(
        &p,
        &run_id,
        &task,
        &n,
        query_int(&q, "offset", 0, i64::MAX)?.unwrap_or(0) as u64,
    )?;
    let mut res = (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        bytes,
    )
        .into_response();
    let h = res.headers_mut();
    h.insert("x-next-offset", next.into());
    h.insert(
        "x-complete",
        (if complete { "true" } else { "false" })
            .parse()
            .expect("static header"),
    );
    Ok(res)
}

/// The days of a pipeline's calendar.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CalendarPage {
    pub pipeline: String,
    pub days: Vec<CalendarDay>,
}

/// Alerts, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// A page of the audit log, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
}

impl AppState {
    /// Up to 256 KiB of a try's log from `offset`. The path comes from the store and must
    /// resolve inside the project's log folder.
    pub fn read_log(
        &self,
        p: &str,
        run_id: &str,
        task: &str,
        n: &str,
        offset: u64,
    ) -> Result<(Vec<u8>, u64, bool), WebError> {
        use std::io::{Read, Seek, SeekFrom};
        let n: u32 = n.parse().map_err(|_| {
            WebError::BadRequest(format!("try number must be a positive integer, not `{n}`"))
        })?;
        let run = self.find_run(p, run_id)?;
        let t = self
            .store
            .tries(run.pk)?
            .into_iter()
            .find(|t| t.task_id == task && t.try_number == n)
            .ok_or_else(|| {
                WebError::NotFound(format!("no try {n} of task `{task}` in run `{run_id}`"))
            })?;
        let complete = t.end_time.is_some();
        let Some(path) = t.log_path else {
            return Ok((vec![], offset, complete));
        };
        let on_disk = nightshift_engine::project::resolve_stored(&self.project_dir, &path);
        let Some(real) = nightshift_engine::project::inside(&self.logs_dir, &on_disk) else {
            // Not in this host's log folder: on a shared store, another host wrote it and
            // shipped it there (a local file outside the folder is never read).
            if matches!(
                self.store.location(),
                nightshift_store::Location::Postgres(_)
            ) {
                let buf = self.store.read_log(t.ti_pk, n, offset as i64, 256 * 1024)?;
                let next = offset + buf.len() as u64;
                let done = complete && buf.is_empty();
                return Ok((buf, next, done));
            }
            if on_disk.exists() {
                return Err(WebError::Forbidden(
                    "the log of this try lies outside the project's log folder; it is not served"
                        .into(),
                ));
            }
            // Created on the try's first line: nothing written yet.
            return Ok((vec![], offset, complete));
        };
        let mut f = std::fs::File::open(&real)
            .map_err(|e| WebError::Internal(format!("reading the log: {e}")))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = offset.min(len);
        f.seek(SeekFrom::Start(start))
            .map_err(|e| WebError::Internal(e.to_string()))?;
        let mut buf = vec![];
        f.take(256 * 1024)
            .read_to_end(&mut buf)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        let next = start + buf.len() as u64;
        Ok((buf, next, complete && next >= len))
    }
}

/// The audit log: every action through the UI and API, newest first
#[utoipa::path(get, path = "/api/v1/audit", params(("before" = Option<i64>, Query, description = "Only entries with a smaller id (the next page)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")), responses((status = 200, description = "Entries", body = AuditPage), (status = 400, description = "Error", body = ErrorBody)))]
pub async fn audit(
    State(st): St,
    headers: HeaderMap,
    Query(q): Q,
) -> Result<Json<AuditPage>, WebError> {
    st.require_read(&headers)?;
    let before = query_int(&q, "before", 1, i64::MAX)?;
    let limit = query_int(&q, "limit", 1, 1000)?.unwrap_or(100) as u32;
    let rows = st.store.audit(before, limit)?;
    Ok(Json(AuditPage {
        entries: rows.iter().map(AuditEntry::from_row).collect(),
    }))
}

/// Who holds the scheduler role, and every process executing tries on this store
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, description = "Processes", body = Status)))]
pub async fn status(State(st): St, headers: HeaderMap) -> Result<Json<Status>, WebError> {
    st.require_read(&headers)?;
    Ok(Json(Status::read(&st.store)?))
}
