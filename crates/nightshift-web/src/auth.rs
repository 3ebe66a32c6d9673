//! Who may do what. Reads are open on loopback; every action needs the token: the API as
//! `Authorization: Bearer TOKEN`, the UI through a session started by entering the token at
//! `/login`. UI forms carry the session's CSRF token, and the session cookie is
//! `SameSite=Strict` and `HttpOnly`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use crate::{AppState, WebError};

const COOKIE: &str = "nightshift_session";

/// Session id → CSRF token. Kept in memory: a restart asks people to log in again.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, String>>);

/// 32 random bytes from the operating system (getrandom), hex.
pub fn random_token() -> String {
    let mut buf = [0u8; 32];
    if getrandom::fill(&mut buf).is_err() {
        // Without the kernel's randomness no session can be safe: make one nobody can use.
        return String::new();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without leaking where two strings differ (subtle's constant-time equality; a
/// different length shows, which tells only the token's length).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl AppState {
    /// The CSRF token of the request's session, if it has a valid one.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        let map = self.sessions.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .find(|(k, _)| same(k, &id))
            .map(|(_, v)| v.clone())
    }

    fn no_token() -> WebError {
        WebError::Forbidden(
            "actions are disabled: no token is configured; set NIGHTSHIFT_TOKEN (or `[web] token_env`) before `nightshift up`".into(),
        )
    }

    /// An API action: the bearer token must match.
    pub fn require_token(&self, headers: &HeaderMap) -> Result<(), WebError> {
        let Some(token) = &self.token else {
            return Err(Self::no_token());
        };
        match bearer(headers) {
            Some(t) if same(t, token) => Ok(()),
            Some(_) => Err(WebError::Unauthorized("the token is wrong".into())),
            None => Err(WebError::Unauthorized(
                "this action needs the token: send `Authorization: Bearer TOKEN`".into(),
            )),
        }
    }

    /// A UI action: a logged-in session and its CSRF token in the form.
    pub fn require_session(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), WebError> {
        if self.token.is_none() {
            return Err(Self::no_token());
        }
        let Some(expected) = self.session_csrf(headers) else {
            return Err(WebError::Unauthorized(
                "log in with the token first (/login)".into(),
            ));
        };
        match csrf {
            Some(c) if same(c, &expected) => Ok(()),
            _ => Err(WebError::Forbidden(
                "the form's CSRF token is missing or stale; reload the page".into(),
            )),
        }
    }

    /// Reads: open on loopback, otherwise the token or a session.
    pub fn require_read(&self, headers: &HeaderMap) -> Result<(), WebError> {
        if self.open_reads
            || self.session_csrf(headers).is_some()
            || self.require_token(headers).is_ok()
        {
            return Ok(());
        }
        Err(WebError::Unauthorized(
            "this server listens beyond loopback: log in at /login or send the token".into(),
        ))
    }
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

pub async fn login(State(st): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let ok = st.token.as_deref().is_some_and(|t| same(t, f.token.trim()));
    if !ok {
        let page = crate::pages::login_page(Some("That token is not right."), f.next.as_deref());
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::response::Html(page.into_string()),
        )
            .into_response();
    }
    let id = random_token();
    let csrf = random_token();
    if id.is_empty() || csrf.is_empty() {
        return WebError::Internal("no randomness for a session".into()).into_response();
    }
    st.sessions
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), csrf);
    // Only local paths: a login link cannot send people elsewhere.
    let next = f
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    let mut res = Redirect::to(&next).into_response();
    if let Ok(v) = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict").parse() {
        res.headers_mut().insert(axum::http::header::SET_COOKIE, v);
    }
    res
}

pub async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        st.sessions
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict").parse() {
        res.headers_mut().insert(axum::http::header::SET_COOKIE, v);
    }
    res
}
