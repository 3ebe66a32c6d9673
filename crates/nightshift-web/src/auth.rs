//! Who may do what. Reads are open on loopback; every action needs a token with a role
//! that allows it: the API as `Authorization: Bearer TOKEN`, the UI through a session
//! started by entering a token at `/login`. Roles: `viewer` reads, `operator` also
//! triggers, backfills, clears, reruns, cancels and pauses, `admin` also marks tasks; a
//! token may be limited to some pipelines.
//!
//! Tokens are compared as SHA-256 digests in constant time (neither content nor length
//! shows). Failed logins and bearer attempts are counted per client address: past
//! [`MAX_FAILURES`] within [`FAILURE_WINDOW`] the address gets 429 with `Retry-After`
//! until the window has passed. UI sessions live in memory (a restart asks people to log in
//! again), end after an idle time and an absolute time, and end when their token changes.
//! Forms carry the session's CSRF token; the cookie is `HttpOnly`, `SameSite=Strict`, and
//! `Secure` when the server speaks HTTPS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use nightshift_core::project::Role;
use sha2::{Digest, Sha256};

use crate::{AppState, WebError};

const COOKIE: &str = "nightshift_session";

/// The client's address, put on every request by the server (any such header a client
/// sends is replaced).
pub const CLIENT_HEADER: &str = "x-nightshift-client";

/// Failed attempts from one address allowed within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Tokens shorter than this are refused when the server starts.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a request asks to do, and the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Trigger,
    Rerun,
    Backfill,
    Clear,
    Cancel,
    Pause,
    Unpause,
    Mark,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Rerun => "rerun",
            Action::Backfill => "backfill",
            Action::Clear => "clear",
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Mark => "mark",
        }
    }

    pub fn needs(self) -> Role {
        match self {
            Action::Mark => Role::Admin,
            _ => Role::Operator,
        }
    }
}

/// A token the server accepts: its name (what the audit log records), role and pipelines.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub pipelines: Option<Vec<String>>,
    digest: [u8; 32],
}

impl Principal {
    pub fn new(name: &str, role: Role, pipelines: Option<Vec<String>>, token: &str) -> Principal {
        Principal {
            name: name.to_owned(),
            role,
            pipelines,
            digest: digest(token),
        }
    }

    fn may(&self, action: Action, pipeline: &str) -> Result<(), String> {
        if self.role < action.needs() {
            return Err(format!(
                "token `{}` has the role `{}`; {} needs `{}`",
                self.name,
                self.role.as_str(),
                action.as_str(),
                action.needs().as_str()
            ));
        }
        match &self.pipelines {
            Some(list) if !list.iter().any(|p| p == pipeline) => Err(format!(
                "token `{}` may act on {} only, not on `{pipeline}`",
                self.name,
                list.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Session {
    csrf: String,
    principal: String,
    /// The digest of the token the session was started with: a changed token ends it.
    digest: [u8; 32],
    created: Instant,
    seen: Instant,
}

/// Tokens, sessions and the failed-attempt counts of one server.
pub struct Auth {
    principals: Vec<Principal>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
    idle: Duration,
    max_age: Duration,
    /// HTTPS: cookies get `Secure`.
    pub secure: bool,
}

impl Auth {
    pub fn new(
        principals: Vec<Principal>,
        idle: Duration,
        max_age: Duration,
        secure: bool,
    ) -> Auth {
        Auth {
            principals,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            idle,
            max_age,
            secure,
        }
    }

    pub fn has_tokens(&self) -> bool {
        !self.principals.is_empty()
    }

    fn by_token(&self, token: &str) -> Option<&Principal> {
        use subtle::ConstantTimeEq;
        let d = digest(token);
        // Every principal is compared, so the time taken does not say which one matched.
        let mut found = None;
        for p in &self.principals {
            if bool::from(p.digest.ct_eq(&d)) {
                found = Some(p);
            }
        }
        found
    }
}

/// 32 random bytes from the operating system (getrandom), hex.
pub fn random_token() -> String {
    let mut buf = [0u8; 32];
    if getrandom::fill(&mut buf).is_err() {
        // Without the kernel's randomness no session can be safe: make one nobody can use.
        return String::new();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two strings as digests, in constant time (neither content nor length shows).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    digest(a).ct_eq(&digest(b)).into()
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

/// The client's address as the server saw it.
pub fn client(headers: &HeaderMap) -> String {
    headers
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned()
}

/// `next` after login: a path on this server only (not `//host`, not `/\host`, no
/// control characters), else `/`.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

impl AppState {
    fn no_token() -> WebError {
        WebError::Forbidden(
            "actions are disabled: no token is configured; set NIGHTSHIFT_TOKEN (or `[web] token_env`, or `[web.tokens.NAME]`) before `nightshift up`".into(),
        )
    }

    /// 429 while this client has failed too often lately.
    pub fn throttled(&self, headers: &HeaderMap) -> Result<(), WebError> {
        let who = client(headers);
        let mut map = self.auth.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(&who) else {
            return Ok(());
        };
        list.retain(|t| t.elapsed() < FAILURE_WINDOW);
        if list.len() < MAX_FAILURES {
            return Ok(());
        }
        let wait = list
            .first()
            .map(|t| FAILURE_WINDOW.saturating_sub(t.elapsed()).as_secs() + 1)
            .unwrap_or(1);
        Err(WebError::TooManyRequests(
            format!("too many failed attempts from {who}; try again in {wait} s"),
            wait,
        ))
    }

    fn failed_attempt(&self, headers: &HeaderMap, what: &str) {
        let who = client(headers);
        tracing::warn!(client = %who, "{what} with a wrong token");
        let mut map = self.auth.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood from many addresses cannot grow the map without end.
        if map.len() > 10_000 {
            map.retain(|_, l| l.last().is_some_and(|t| t.elapsed() < FAILURE_WINDOW));
        }
        map.entry(who).or_default().push(Instant::now());
    }

    /// The principal of a valid session, and the session's CSRF token.
    fn session(&self, headers: &HeaderMap) -> Option<(Principal, String)> {
        let id = cookie(headers)?;
        let mut map = self.auth.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = map.keys().find(|k| same(k, &id))?.clone();
        let s = map.get_mut(&key)?;
        let principal = self
            .auth
            .principals
            .iter()
            .find(|p| p.name == s.principal && p.digest == s.digest)
            .cloned();
        let expired = s.seen.elapsed() > self.auth.idle || s.created.elapsed() > self.auth.max_age;
        match principal {
            Some(p) if !expired => {
                s.seen = Instant::now();
                Some((p, s.csrf.clone()))
            }
            _ => {
                map.remove(&key);
                None
            }
        }
    }

    /// The CSRF token of the request's session, if it has a valid one.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        self.session(headers).map(|(_, c)| c)
    }

    /// The principal of a bearer token: `None` without one; 401 (counted) when wrong.
    fn bearer_principal(&self, headers: &HeaderMap) -> Result<Option<Principal>, WebError> {
        let Some(t) = bearer(headers) else {
            return Ok(None);
        };
        self.throttled(headers)?;
        match self.auth.by_token(t) {
            Some(p) => Ok(Some(p.clone())),
            None => {
                self.failed_attempt(headers, "API request");
                Err(WebError::Unauthorized("the token is wrong".into()))
            }
        }
    }

    /// An API action: a bearer token whose role and pipelines allow it. A refusal for the
    /// role is recorded in the audit log.
    pub fn require_api(
        &self,
        headers: &HeaderMap,
        action: Action,
        pipeline: &str,
        target: &str,
    ) -> Result<Principal, WebError> {
        let p = self.authenticate_api(headers)?;
        self.allowed(headers, &p, action, pipeline, target)?;
        Ok(p)
    }

    /// Who sends an API action (before its body is read: a request without a valid token
    /// learns nothing about its body). [`AppState::allowed`] then checks the role.
    pub fn authenticate_api(&self, headers: &HeaderMap) -> Result<Principal, WebError> {
        if !self.auth.has_tokens() {
            return Err(Self::no_token());
        }
        self.bearer_principal(headers)?.ok_or_else(|| {
            WebError::Unauthorized(
                "this action needs a token: send `Authorization: Bearer TOKEN`".into(),
            )
        })
    }

    /// A UI action: a logged-in session, its CSRF token in the form, and a role that
    /// allows it.
    pub fn require_form(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
        action: Action,
        pipeline: &str,
        target: &str,
    ) -> Result<Principal, WebError> {
        if !self.auth.has_tokens() {
            return Err(Self::no_token());
        }
        let Some((p, expected)) = self.session(headers) else {
            return Err(WebError::Unauthorized(
                "log in with a token first (/login)".into(),
            ));
        };
        match csrf {
            Some(c) if same(c, &expected) => {}
            _ => {
                return Err(WebError::Forbidden(
                    "the form's CSRF token is missing or stale; reload the page".into(),
                ));
            }
        }
        self.allowed(headers, &p, action, pipeline, target)?;
        Ok(p)
    }

    /// Whether `p`'s role and pipelines allow the action; a refusal is recorded in the
    /// audit log.
    pub fn allowed(
        &self,
        headers: &HeaderMap,
        p: &Principal,
        action: Action,
        pipeline: &str,
        target: &str,
    ) -> Result<(), WebError> {
        p.may(action, pipeline).map_err(|why| {
            self.audit(headers, &p.name, action, target, &format!("refused: {why}"));
            WebError::Forbidden(why)
        })
    }

    /// Reads: open on loopback, otherwise any valid token or session.
    pub fn require_read(&self, headers: &HeaderMap) -> Result<(), WebError> {
        if self.open_reads || self.session(headers).is_some() {
            return Ok(());
        }
        match self.bearer_principal(headers)? {
            Some(_) => Ok(()),
            None => Err(WebError::Unauthorized(
                "this server listens beyond loopback: log in at /login or send a token".into(),
            )),
        }
    }

    /// Appends to the audit log; a store that cannot take it is logged, never fatal to the
    /// answer (the action itself is already done or refused).
    pub fn audit(
        &self,
        headers: &HeaderMap,
        actor: &str,
        action: Action,
        target: &str,
        outcome: &str,
    ) {
        let entry = nightshift_store::AuditRow {
            id: 0,
            at: nightshift_core::time::to_micros(self.now()),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            target: target.to_owned(),
            client: client(headers),
            outcome: outcome.chars().take(500).collect(),
        };
        if let Err(e) = self.store.record_audit(&entry) {
            tracing::error!(error = %e, actor, action = action.as_str(), target, "cannot write the audit log");
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

pub async fn login(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let deny = |status, msg: &str| {
        let page = crate::pages::login_page(Some(msg), f.next.as_deref());
        (status, axum::response::Html(page.into_string())).into_response()
    };
    if let Err(WebError::TooManyRequests(msg, wait)) = st.throttled(&headers) {
        let mut res = deny(axum::http::StatusCode::TOO_MANY_REQUESTS, &msg);
        res.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, wait.into());
        return res;
    }
    let Some(p) = st.auth.by_token(f.token.trim()).cloned() else {
        st.failed_attempt(&headers, "login");
        return deny(
            axum::http::StatusCode::UNAUTHORIZED,
            "That token is not right.",
        );
    };
    let id = random_token();
    let csrf = random_token();
    if id.is_empty() || csrf.is_empty() {
        return WebError::Internal("no randomness for a session".into()).into_response();
    }
    tracing::info!(client = %client(&headers), token = %p.name, "logged in");
    st.auth
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id.clone(),
            Session {
                csrf,
                principal: p.name.clone(),
                digest: p.digest,
                created: Instant::now(),
                seen: Instant::now(),
            },
        );
    let mut res = Redirect::to(&local_path(f.next.as_deref())).into_response();
    let secure = if st.auth.secure { "; Secure" } else { "" };
    if let Ok(v) = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}").parse() {
        res.headers_mut().insert(axum::http::header::SET_COOKIE, v);
    }
    res
}

#[derive(serde::Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

/// Ends the session: a POST carrying the session's CSRF token (a link elsewhere cannot log
/// people out).
pub async fn logout(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Read whatever came (no body, another content type): without the token it is refused.
    let f: LogoutForm = serde_urlencoded::from_bytes(&body).unwrap_or(LogoutForm { csrf: None });
    let Some((_, expected)) = st.session(&headers) else {
        return Redirect::to("/").into_response();
    };
    if !f.csrf.as_deref().is_some_and(|c| same(c, &expected)) {
        return WebError::Forbidden(
            "the form's CSRF token is missing or stale; reload the page".into(),
        )
        .into_response();
    }
    if let Some(id) = cookie(&headers) {
        let mut map = st.auth.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| !same(k, &id));
    }
    let mut res = Redirect::to("/").into_response();
    let secure = if st.auth.secure { "; Secure" } else { "" };
    if let Ok(v) =
        format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}").parse()
    {
        res.headers_mut().insert(axum::http::header::SET_COOKIE, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_local_path_only() {
        for bad in [
            "//evil.example/",
            "/\\evil.example/",
            "https://evil.example",
            "/\tx",
            "x",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(Some("/pipelines/p")), "/pipelines/p");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn roles_and_pipelines_limit_actions() {
        let op = Principal::new("ci", Role::Operator, Some(vec!["a".into()]), "t");
        assert!(op.may(Action::Trigger, "a").is_ok());
        assert!(op.may(Action::Trigger, "b").is_err());
        assert!(op.may(Action::Mark, "a").is_err());
        let viewer = Principal::new("v", Role::Viewer, None, "t");
        assert!(viewer.may(Action::Pause, "a").is_err());
        assert!(
            Principal::new("adm", Role::Admin, None, "t")
                .may(Action::Mark, "b")
                .is_ok()
        );
    }
}
