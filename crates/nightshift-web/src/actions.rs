//! The actions of `/api/v1` (trigger, backfill, clear, cancel, pause, mark) and the
//! `act_*` methods the UI's forms share: each checked against the token's role, run off the
//! server's thread, and recorded in the audit log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nightshift_core::time::to_micros;
use nightshift_core::{RunState, Trigger};
use nightshift_engine::engine::{create_run, rerun};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{body, date_field};
use crate::auth::{Action, Principal};
use crate::openapi::ErrorBody;
use crate::{AppState, WebError};

type St = State<Arc<AppState>>;

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

impl AppState {
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

/// An action without a body: its token and role checked, then run as [`act`] runs it.
async fn checked(
    st: Arc<AppState>,
    headers: &HeaderMap,
    action: Action,
    pipeline: &str,
    target: String,
    f: impl FnOnce(&AppState) -> Result<Value, WebError> + Send + 'static,
) -> Result<Json<Value>, WebError> {
    let who = st.require_api(headers, action, pipeline, &target)?;
    Ok(Json(act(st, headers, &who, action, target, f).await?))
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
    checked(
        st,
        &headers,
        Action::Cancel,
        &p.clone(),
        target,
        move |st| st.act_cancel(&p, Some(&run_id)),
    )
    .await
}

/// Cancel every unfinished backfill run of the pipeline
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/backfills/cancel", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 401, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 503, description = "Error", body = ErrorBody)))]
pub async fn cancel_backfills(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    let target = format!("{p} backfills");
    checked(
        st,
        &headers,
        Action::Cancel,
        &p.clone(),
        target,
        move |st| st.act_cancel(&p, None),
    )
    .await
}

/// Pause: the scheduler starts no new runs
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/pause", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn pause(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    set_paused(st, &headers, p, true).await
}

/// Unpause
#[utoipa::path(post, path = "/api/v1/pipelines/{p}/unpause", params(("p" = String, Path, description = "Pipeline name")), security(("bearer" = [])), responses((status = 200, description = "Done", body = Object), (status = 400, description = "Error", body = ErrorBody), (status = 401, description = "Error", body = ErrorBody), (status = 403, description = "Error", body = ErrorBody), (status = 404, description = "Error", body = ErrorBody), (status = 409, description = "Error", body = ErrorBody)))]
pub async fn unpause(
    State(st): St,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> Result<Json<Value>, WebError> {
    set_paused(st, &headers, p, false).await
}

async fn set_paused(
    st: Arc<AppState>,
    headers: &HeaderMap,
    p: String,
    paused: bool,
) -> Result<Json<Value>, WebError> {
    let action = if paused {
        Action::Pause
    } else {
        Action::Unpause
    };
    checked(st, headers, action, &p.clone(), p.clone(), move |st| {
        st.act_pause(&p, paused)
    })
    .await
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
