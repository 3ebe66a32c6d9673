//! `/api/v1`: JSON for everything the UI shows, and the actions. Bodies and query values
//! are checked here, and a mistake is answered `400 {"error": "..."}` naming the field.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nightshift_core::time::{parse_date, to_micros};
use nightshift_core::{RunState, Trigger};
use nightshift_engine::engine::{create_run, rerun};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Action, Principal};
use crate::openapi::ErrorBody;
use crate::{AppState, WebError};

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

/// `start_date … end_date` of a pipeline, for messages.
fn dates(p: &nightshift_core::Pipeline) -> String {
    match p.end_date {
        Some(e) => format!("{} to {e}", p.start_date),
        None => format!("from {}", p.start_date),
    }
}

/// Runs an allowed action off the server's thread (a large backfill never holds up other
/// requests) and records it, with how it went, in the audit log.
pub(crate) async fn act(
    st: Arc<AppState>,
    headers: &HeaderMap,
    who: &Principal,
    action: Action,
    target: String,
    f: impl FnOnce(&AppState) -> Result<Value, WebError> + Send + 'static,
) -> Result<Value, WebError> {
    let on = st.clone();
    let res = tokio::task::spawn_blocking(move || f(&on))
        .await
        .map_err(|e| WebError::Internal(format!("the action stopped: {e}")))
        .and_then(|r| r);
    let outcome = match &res {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("failed: {e}"),
    };
    st.audit(headers, &who.name, action, &target, &outcome);
    res
}

fn date_field(v: &str, field: &str) -> Result<jiff::civil::Date, WebError> {
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
#[utoipa::path(get, path = "/api/v1/pipelines", responses((status = 200, description = "Pipelines", body = Object)))]
pub async fn pipelines(State(st): St, headers: HeaderMap) -> Result<Json<Value>, WebError> {
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
    Ok(Json(json!({"pipelines": out, "problems": problems})))
}

/// One pipeline
#[utoipa::path(get, path = "/api/v1/pipelines/{p}", params(("p" = String, Path, description = "Pipeline name")), responses((status = 200, description = "Pipeline", body = Object), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn pipeline(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    Ok(Json(
        serde_json::to_value(st.summary(&p)?).unwrap_or_default(),
    ))
}

/// A page of the grid: runs newest first with each task's state
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/runs", params(("p" = String, Path, description = "Pipeline name"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Runs per page (default 25)"), ("before" = Option<i64>, Query, description = "next_before of the previous page")), responses((status = 200, description = "Grid page", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn runs(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    let limit = query_int(&q, "limit", 1, 500)?.unwrap_or(25) as u32;
    let before = query_int(&q, "before", i64::MIN, i64::MAX)?;
    Ok(Json(
        serde_json::to_value(st.grid(&p, before, limit)?).unwrap_or_default(),
    ))
}

/// A run: tasks and tries, dbt results, data-quality figures, published manifests, history
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/runs/{run_id}", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id")), responses((status = 200, description = "Run", body = Object), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn run(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    let (d, _) = st.run_detail(&p, &run_id)?;
    Ok(Json(serde_json::to_value(d).unwrap_or_default()))
}

/// Partitions by day: done, failed, running, queued, missing, future
#[utoipa::path(get, path = "/api/v1/pipelines/{p}/calendar", params(("p" = String, Path, description = "Pipeline name"), ("from" = Option<String>, Query, format = Date, description = "First day (default: 16 weeks before `to`)"), ("to" = Option<String>, Query, format = Date, description = "Last day (default: today)")), responses((status = 200, description = "Days", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody)))]
pub async fn calendar(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    Query(q): Q,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    let (from, to) = calendar_range(&q, st.today())?;
    Ok(Json(
        json!({"pipeline": p, "days": st.calendar(&p, from, to)?}),
    ))
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
#[utoipa::path(get, path = "/api/v1/alerts", params(("pipeline" = Option<String>, Query, description = "Only this pipeline's alerts"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")), responses((status = 200, description = "Alerts", body = Object), (status = 400, description = "Error", body = ErrorBody)))]
pub async fn alerts(
    State(st): St,
    headers: HeaderMap,
    Query(q): Q,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    let limit = query_int(&q, "limit", 1, 1000)?.unwrap_or(100) as u32;
    let rows = st
        .store
        .alerts(q.get("pipeline").map(String::as_str), limit)?;
    Ok(Json(json!({"alerts": rows})))
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
        let Some(real) =
            nightshift_engine::project::inside(&self.logs_dir, std::path::Path::new(&path))
        else {
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
            if std::path::Path::new(&path).exists() {
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

    /// Cancels one run (`run_id`) or every unfinished backfill run of the pipeline.
    pub fn act_cancel(&self, p: &str, run_id: Option<&str>) -> Result<Value, WebError> {
        let pks = match run_id {
            Some(id) => vec![self.find_run(p, id)?.pk],
            None => {
                self.pipeline(p)?;
                self.store.unfinished_backfill_runs(p)?
            }
        };
        let (runs, tries) = self.store.cancel_runs(
            &pks,
            to_micros(self.now()),
            "cancelled from the web UI or API",
        )?;
        if run_id.is_some() && runs.is_empty() {
            return Err(WebError::Conflict(format!(
                "run `{}` has finished already; nothing to cancel",
                run_id.unwrap_or_default()
            )));
        }
        Ok(json!({
            "pipeline": p,
            "cancelled": runs,
            "stopping": tries.iter().map(|t| json!({"run_id": t.run_id, "task": t.task_id, "try": t.try_number})).collect::<Vec<_>>(),
        }))
    }

    pub fn act_pause(&self, p: &str, paused: bool) -> Result<Value, WebError> {
        self.pipeline(p)?;
        self.store.set_paused(p, paused, to_micros(self.now()))?;
        Ok(json!({"pipeline": p, "paused": paused}))
    }

    /// A run for the interval with this ds (manual trigger); an existing finished run is
    /// run again only with `rerun`.
    pub fn act_trigger(&self, p: &str, ds: &str, again: bool) -> Result<Value, WebError> {
        let project = self.project();
        let lp = project
            .pipelines
            .get(p)
            .ok_or_else(|| WebError::NotFound(format!("no pipeline `{p}`")))?;
        let date = date_field(ds, "ds")?;
        let iv = lp
            .pipeline
            .schedule
            .interval_for_ds(date)
            .map_err(|e| WebError::BadRequest(e.to_string()))?
            .ok_or_else(|| {
                WebError::BadRequest(format!("the schedule of `{p}` starts no interval on {ds}"))
            })?;
        let t = self.now();
        if !lp.pipeline.in_range(&iv) {
            return Err(WebError::BadRequest(format!(
                "ds {ds} is outside `{p}`'s dates ({}); runs exist only from start_date to end_date",
                dates(&lp.pipeline)
            )));
        }
        if iv.end > t {
            return Err(WebError::BadRequest(format!(
                "the interval of ds {ds} has not ended yet (it ends {}); trigger it once it has",
                iv.end
            )));
        }
        let created =
            create_run(&self.store, lp, iv, Trigger::Manual, t).map_err(WebError::from)?;
        let run = self
            .store
            .run(created.pk())?
            .ok_or_else(|| WebError::Internal("run vanished".into()))?;
        let what = match created {
            nightshift_store::Created::New(_) => "created",
            nightshift_store::Created::Existing(_) if run.status.is_terminal() && again => {
                rerun(&self.store, lp, run.pk, Trigger::Manual, t).map_err(WebError::from)?;
                "rerun"
            }
            nightshift_store::Created::Existing(_) if run.status.is_terminal() => {
                return Err(WebError::Conflict(format!(
                    "run {} (ds {}) already finished {}; send \"rerun\": true to run it again",
                    run.run_id, run.ds, run.status
                )));
            }
            nightshift_store::Created::Existing(_) => "already active",
        };
        Ok(json!({"pipeline": p, "run_id": run.run_id, "ds": run.ds.to_string(), "result": what}))
    }

    /// Backfill runs for every ended interval with a ds in [from, to]: new ones created,
    /// failed ones run again, succeeded ones only with `rerun`. The scheduler runs them.
    pub fn act_backfill(
        &self,
        p: &str,
        from: &str,
        to: &str,
        again: bool,
    ) -> Result<Value, WebError> {
        let project = self.project();
        let lp = project
            .pipelines
            .get(p)
            .ok_or_else(|| WebError::NotFound(format!("no pipeline `{p}`")))?;
        let from_d = date_field(from, "from")?;
        let to_d = date_field(to, "to")?;
        if to_d < from_d {
            return Err(WebError::BadRequest(format!(
                "`to` {to} is before `from` {from}"
            )));
        }
        if from_d < lp.pipeline.start_date || lp.pipeline.end_date.is_some_and(|e| to_d > e) {
            return Err(WebError::BadRequest(format!(
                "{from} to {to} reaches outside `{p}`'s dates ({}); backfill within them",
                dates(&lp.pipeline)
            )));
        }
        let t = self.now();
        let max = self.max_backfill_runs as usize;
        let (ivs, reached_now) = lp
            .pipeline
            .intervals_between(from_d, to_d, t, max)
            .map_err(|e| match e {
                nightshift_core::pipeline::IntervalsError::TooMany(_) => WebError::BadRequest(format!(
                    "{from} to {to} is more than {max} runs of `{p}`; backfill in smaller ranges, run `nightshift backfill` on the server, or raise `[web] max_backfill_runs`"
                )),
                other => WebError::BadRequest(other.to_string()),
            })?;
        if reached_now {
            return Err(WebError::BadRequest(format!(
                "{from} to {to} reaches intervals of `{p}` that have not ended yet; end the range at the last ended ds"
            )));
        }
        let ivs: Vec<_> = ivs
            .into_iter()
            .filter(|iv| lp.pipeline.in_range(iv))
            .collect();
        if ivs.is_empty() {
            return Err(WebError::BadRequest(format!(
                "no ended interval of `{p}` has a ds from {from} to {to}"
            )));
        }
        let (mut created, mut rerun_n, mut skipped) = (0, 0, 0);
        for iv in ivs {
            match self.store.find_run_by_interval(p, to_micros(iv.start))? {
                None => {
                    create_run(&self.store, lp, iv, Trigger::Backfill, t)
                        .map_err(WebError::from)?;
                    created += 1;
                }
                Some(r)
                    if r.status == RunState::Failed || (again && r.status == RunState::Success) =>
                {
                    rerun(&self.store, lp, r.pk, Trigger::Backfill, t).map_err(WebError::from)?;
                    rerun_n += 1;
                }
                Some(_) => skipped += 1,
            }
        }
        Ok(
            json!({"pipeline": p, "from": from, "to": to, "created": created, "rerun": rerun_n, "skipped": skipped}),
        )
    }

    /// Clears a task of a run (and with `downstream`, everything after it) to run again.
    pub fn act_clear(
        &self,
        p: &str,
        run_id: &str,
        task: &str,
        downstream: bool,
    ) -> Result<Value, WebError> {
        let run = self.find_run(p, run_id)?;
        let pipe = self.version(&run.version)?;
        if pipe.task(task).is_none() {
            return Err(WebError::BadRequest(format!(
                "run `{run_id}` has no task `{task}`"
            )));
        }
        let ids = if downstream {
            pipe.with_downstream(vec![task.to_owned()])
        } else {
            vec![task.to_owned()]
        };
        let list: Vec<(&str, u32)> = ids
            .iter()
            .filter_map(|id| pipe.task(id).map(|t| (id.as_str(), t.max_tries())))
            .collect();
        let cleared = self.store.clear_tasks(
            run.pk,
            &list,
            to_micros(self.now()),
            "cleared from the web UI or API",
        )?;
        if cleared.is_empty() {
            return Err(WebError::Conflict(format!(
                "nothing to clear: `{task}` is not finished in run `{run_id}`"
            )));
        }
        Ok(json!({"pipeline": p, "run_id": run_id, "cleared": cleared}))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TriggerRequest)]
pub struct TriggerBody {
    #[schema(format = Date)]
    ds: String,
    #[serde(default)]
    #[schema(default = false)]
    rerun: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BackfillRequest)]
pub struct BackfillBody {
    #[schema(format = Date)]
    from: String,
    #[schema(format = Date)]
    to: String,
    #[serde(default)]
    #[schema(default = false)]
    rerun: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ClearRequest)]
pub struct ClearBody {
    task: String,
    #[serde(default)]
    #[schema(default = false)]
    downstream: bool,
}

/// Trigger a run for a ds (rerun: run a finished one again)
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/runs", params(("p" = String, Path, description = "Pipeline name")), request_body = TriggerBody, security(("bearer" = [])), responses((status = 201, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody), (status = 429, description = "Error", body = ErrorBody), (status = 503, description = "Error", body = ErrorBody)))]
pub async fn trigger(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    b: Bytes,
) -> Result<Response, WebError> {
    let who = st.authenticate_api(&headers)?;
    let req: TriggerBody = body(&b)?;
    let action = if req.rerun {
        Action::Rerun
    } else {
        Action::Trigger
    };
    let target = format!("{p} ds {}", req.ds);
    st.allowed(&headers, &who, action, &p, &target)?;
    let out = act(st, &headers, &who, action, target, move |st| {
        st.act_trigger(&p, &req.ds, req.rerun)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Backfill runs for every ended interval with a ds in [from, to]
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/backfills", params(("p" = String, Path, description = "Pipeline name")), request_body = BackfillBody, security(("bearer" = [])), responses((status = 201, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn backfill(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
    b: Bytes,
) -> Result<Response, WebError> {
    let who = st.authenticate_api(&headers)?;
    let req: BackfillBody = body(&b)?;
    let target = format!("{p} {} to {}", req.from, req.to);
    st.allowed(&headers, &who, Action::Backfill, &p, &target)?;
    let out = act(st, &headers, &who, Action::Backfill, target, move |st| {
        st.act_backfill(&p, &req.from, &req.to, req.rerun)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Clear a task (and optionally its downstream) to run again
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/runs/{run_id}/clear", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id")), request_body = ClearBody, security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn clear(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    b: Bytes,
) -> Result<Json<Value>, WebError> {
    let who = st.authenticate_api(&headers)?;
    let req: ClearBody = body(&b)?;
    let target = format!("{p} {run_id} task {}", req.task);
    st.allowed(&headers, &who, Action::Clear, &p, &target)?;
    Ok(Json(
        act(st, &headers, &who, Action::Clear, target, move |st| {
            st.act_clear(&p, &run_id, &req.task, req.downstream)
        })
        .await?,
    ))
}

/// Cancel an unfinished run: queued work and running tries become CANCELLED (the schedule goes on)
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/runs/{run_id}/cancel", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody), (status = 503, description = "Error", body = ErrorBody)))]
pub async fn cancel_run(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, WebError> {
    let target = format!("{p} {run_id}");
    let who = st.require_api(&headers, Action::Cancel, &p, &target)?;
    Ok(Json(
        act(st, &headers, &who, Action::Cancel, target, move |st| {
            st.act_cancel(&p, Some(&run_id))
        })
        .await?,
    ))
}

/// Cancel every unfinished backfill run of the pipeline
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/backfills/cancel", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 401, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 503, description = "Error", body = ErrorBody)))]
pub async fn cancel_backfills(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    let target = format!("{p} backfills");
    let who = st.require_api(&headers, Action::Cancel, &p, &target)?;
    Ok(Json(
        act(st, &headers, &who, Action::Cancel, target, move |st| {
            st.act_cancel(&p, None)
        })
        .await?,
    ))
}

/// Pause: the scheduler starts no new runs
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/pause", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn pause(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    let who = st.require_api(&headers, Action::Pause, &p, &p)?;
    Ok(Json(
        act(st, &headers, &who, Action::Pause, p.clone(), move |st| {
            st.act_pause(&p, true)
        })
        .await?,
    ))
}

/// Unpause
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/unpause", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn unpause(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    let who = st.require_api(&headers, Action::Unpause, &p, &p)?;
    Ok(Json(
        act(st, &headers, &who, Action::Unpause, p.clone(), move |st| {
            st.act_pause(&p, false)
        })
        .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MarkRequest)]
pub struct MarkBody {
    task: String,
    /// `success` or `failed`.
    state: String,
    /// What was done by hand (kept with the task's history).
    reason: String,
}

/// The audit log: every action through the UI and API, newest first
#[utoipa::path(get, path = "/api/v1/audit", params(("before" = Option<i64>, Query, description = "Only entries with a smaller id (the next page)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")), responses((status = 200, description = "Entries", body = Object), (status = 400, description = "Error", body = ErrorBody)))]
pub async fn audit(
    State(st): St,
    headers: HeaderMap,
    Query(q): Q,
) -> Result<Json<Value>, WebError> {
    st.require_read(&headers)?;
    let before = query_int(&q, "before", 1, i64::MAX)?;
    let limit = query_int(&q, "limit", 1, 1000)?.unwrap_or(100) as u32;
    let rows = st.store.audit(before, limit)?;
    Ok(Json(json!({ "entries": rows })))
}

/// Mark a finished or waiting task success or failed by hand (admin)
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/runs/{run_id}/mark", params(("p" = String, Path, description = "Pipeline name"), ("run_id" = String, Path, description = "Run id")), request_body = MarkBody, security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody), (status = 429, description = "Error", body = ErrorBody), (status = 503, description = "Error", body = ErrorBody)))]
pub async fn mark(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    b: Bytes,
) -> Result<Json<Value>, WebError> {
    let who = st.authenticate_api(&headers)?;
    let req: MarkBody = body(&b)?;
    let target = format!("{p} {run_id} task {} → {}", req.task, req.state);
    st.allowed(&headers, &who, Action::Mark, &p, &target)?;
    Ok(Json(
        act(st, &headers, &who, Action::Mark, target, move |st| {
            st.act_mark(&p, &run_id, &req.task, &req.state, &req.reason)
        })
        .await?,
    ))
}

impl AppState {
    /// Sets a task's state by hand (not while it runs) and settles its run.
    pub fn act_mark(
        &self,
        p: &str,
        run_id: &str,
        task: &str,
        state: &str,
        reason: &str,
    ) -> Result<Value, WebError> {
        let state = match state {
            "success" => nightshift_core::TaskState::Success,
            "failed" => nightshift_core::TaskState::Failed,
            other => {
                return Err(WebError::BadRequest(format!(
                    "`state` must be `success` or `failed`, not `{other}`"
                )));
            }
        };
        if reason.trim().is_empty() {
            return Err(WebError::BadRequest(
                "`reason` is empty: say what was done by hand".into(),
            ));
        }
        let run = self.find_run(p, run_id)?;
        let pipe = self.version(&run.version)?;
        if pipe.task(task).is_none() {
            return Err(WebError::BadRequest(format!(
                "run `{run_id}` has no task `{task}`"
            )));
        }
        let now = to_micros(self.now());
        let Some(old) = self
            .store
            .mark_task(run.pk, task, state.as_str(), reason.trim(), now)?
        else {
            return Err(WebError::Conflict(format!(
                "task `{task}` of run `{run_id}` is running; wait for it or cancel the run first"
            )));
        };
        let states: Vec<nightshift_core::TaskState> = self
            .store
            .task_instances(run.pk)?
            .iter()
            .map(|t| t.state)
            .collect();
        let outcome = nightshift_core::state::run_outcome(states.iter().copied());
        self.store
            .settle_run(run.pk, outcome.map(|o| o.as_str()), now)?;
        Ok(json!({
            "pipeline": p, "run_id": run_id, "task": task, "from": old, "to": state.as_str(),
            "run": outcome.map(|o| o.as_str()).unwrap_or("QUEUED"),
        }))
    }
}
