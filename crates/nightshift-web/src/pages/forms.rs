//! Login and the UI's actions: forms that carry the session's CSRF token, answered with a
//! redirect and a message.

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use super::*;
use crate::WebError;
use crate::actions::act;
use crate::auth::Action;

pub fn login_page(error: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; link rel="icon" href="data:,"; title { "Log in · nightshift" } link rel="stylesheet" href="/static/app.css"; }
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
    let again = f.rerun.as_deref() == Some("true");
    let (kind, target) = match action.as_str() {
        "trigger" if again => (
            Action::Rerun,
            format!("{p} ds {}", f.ds.clone().unwrap_or_default()),
        ),
        "trigger" => (
            Action::Trigger,
            format!("{p} ds {}", f.ds.clone().unwrap_or_default()),
        ),
        "backfill" => (
            Action::Backfill,
            format!(
                "{p} {} to {}",
                f.from.clone().unwrap_or_default(),
                f.to.clone().unwrap_or_default()
            ),
        ),
        "pause" => (Action::Pause, p.clone()),
        "unpause" => (Action::Unpause, p.clone()),
        "cancel-backfills" => (Action::Cancel, format!("{p} backfills")),
        other => {
            return error_page(
                &st,
                &headers,
                WebError::NotFound(format!("no action `{other}`")),
            );
        }
    };
    let name = p.clone();
    let csrf = f.csrf.clone();
    let res = form_act(
        &st,
        &headers,
        csrf.as_deref(),
        kind,
        &p,
        target,
        move |st| {
            Ok(match action.as_str() {
                "trigger" => st.act_trigger(&name, need(&f.ds, "ds")?, again)?,
                "backfill" => {
                    st.act_backfill(&name, need(&f.from, "from")?, need(&f.to, "to")?, again)?
                }
                "pause" => st.act_pause(&name, true)?,
                "unpause" => st.act_pause(&name, false)?,
                _ => st.act_cancel(&name, None)?,
            })
        },
    )
    .await;
    match res {
        Ok(v) => done(
            format!("/pipelines/{p}"),
            &format!("{}: {v}", kind.as_str()),
        ),
        Err(e) => error_page(&st, &headers, e),
    }
}

/// A UI action: the session, its CSRF token and the role checked, then run as [`act`]
/// runs it (off the server's thread, recorded in the audit log).
async fn form_act(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    csrf: Option<&str>,
    action: Action,
    pipeline: &str,
    target: String,
    f: impl FnOnce(&AppState) -> Result<serde_json::Value, WebError> + Send + 'static,
) -> Result<serde_json::Value, WebError> {
    let who = st.require_form(headers, csrf, action, pipeline, &target)?;
    act(st.clone(), headers, &who, action, target, f).await
}

pub async fn cancel_action(
    State(st): St,
    headers: HeaderMap,
    Path((p, run_id)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let target = format!("{p} {run_id}");
    let (name, id) = (p.clone(), run_id.clone());
    match form_act(
        &st,
        &headers,
        f.csrf.as_deref(),
        Action::Cancel,
        &p,
        target,
        move |st| st.act_cancel(&name, Some(&id)),
    )
    .await
    {
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
    let target = format!("{p} {run_id} task {}", f.task.clone().unwrap_or_default());
    let (name, id) = (p.clone(), run_id.clone());
    let csrf = f.csrf.clone();
    match form_act(
        &st,
        &headers,
        csrf.as_deref(),
        Action::Clear,
        &p,
        target,
        move |st| {
            st.act_clear(
                &name,
                &id,
                need(&f.task, "task")?,
                f.downstream.as_deref() == Some("true"),
            )
        },
    )
    .await
    {
        Ok(v) => done(
            format!("/pipelines/{p}/runs/{run_id}"),
            &format!("cleared: {}", v["cleared"]),
        ),
        Err(e) => error_page(&st, &headers, e),
    }
}
