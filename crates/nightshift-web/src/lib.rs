//! The web UI, the REST API (`/api/v1`, described at `/api/v1/openapi.json`, a document
//! generated from the handlers) and the Prometheus metrics (`/metrics`) that `nightshift up`
//! serves.
//!
//! # Layout
//! - [`model`]: what pages and API show, read from the store (one shape for both).
//! - [`openapi`]: the API's routes and the document generated from them.
//! - [`pages`]: server-rendered HTML (maud); no build step, one small script for live logs.
//! - [`svg`]: the DAG graph, the Gantt chart and the history charts, drawn as SVG.
//! - [`api`]: JSON endpoints for what the UI shows.
//! - [`actions`]: the actions (trigger, backfill, clear, cancel, pause, mark), their roles
//!   and their audit records.
//! - [`auth`]: the action token, UI sessions and CSRF tokens.
//! - [`metrics`]: the Prometheus registry and what the engine's events feed it.
//!
//! The server runs on its own thread and runtime with its own store connection, so a slow
//! page never delays the scheduler.

pub mod actions;
pub mod api;
pub mod auth;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pages;
pub mod svg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nightshift_core::Pipeline;
use nightshift_core::clock::Clock;
use nightshift_core::event::Stats;
use nightshift_engine::project::{self, Project};
use nightshift_store::Store;

pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// Too many failed attempts: the seconds to wait go in `Retry-After`.
    #[error("{0}")]
    TooManyRequests(String, u64),
    #[error(transparent)]
    Store(#[from] nightshift_store::Error),
    #[error("{0}")]
    Internal(String),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            WebError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Store(_) | WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<nightshift_engine::engine::Error> for WebError {
    fn from(e: nightshift_engine::engine::Error) -> Self {
        match e {
            nightshift_engine::engine::Error::Store(s) => WebError::Store(s),
            other => WebError::Internal(other.to_string()),
        }
    }
}

/// API errors are JSON `{"error": "..."}`.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if matches!(self, WebError::Store(_) | WebError::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            // The store is locked or unavailable: say so at once rather than hang, and when
            // to ask again.
            let body = serde_json::json!({"error": format!("the metadata store is busy or unavailable; try again shortly ({self})")});
            return (
                self.status(),
                [(axum::http::header::RETRY_AFTER, "5")],
                axum::Json(body),
            )
                .into_response();
        }
        let wait = match &self {
            WebError::TooManyRequests(_, w) => Some(*w),
            _ => None,
        };
        let body = openapi::ErrorBody {
            error: self.to_string(),
        };
        let mut res = (self.status(), axum::Json(body)).into_response();
        if let Some(w) = wait {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, w.into());
        }
        res
    }
}

/// Everything a request handler reads.
pub struct AppState {
    pub store: Store,
    pub project_dir: PathBuf,
    /// The canonical log folder: a log outside it is never served.
    pub logs_dir: PathBuf,
    project: Mutex<(Project, Instant, u64)>,
    versions: Mutex<HashMap<String, Option<Arc<Pipeline>>>>,
    /// Tokens, sessions and failed attempts.
    pub auth: auth::Auth,
    /// Read-only pages need no token only when the server listens on loopback.
    pub open_reads: bool,
    /// Host names the server answers to (empty: any).
    pub hosts: Vec<String>,
    /// A UI or API backfill over more runs than this is refused.
    pub max_backfill_runs: u32,
    /// The name people reach the server by, accepted as Host and Origin.
    pub public_name: Option<String>,
    pub metrics: Arc<Metrics>,
    pub stats: Option<Arc<Stats>>,
    /// The scheduler's clock: "today" in the calendar and forecasts follows a simulation.
    pub clock: Arc<dyn Clock>,
}

impl AppState {
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    /// Today's date (UTC) on the scheduler's clock.
    pub fn today(&self) -> jiff::civil::Date {
        self.now().to_zoned(jiff::tz::TimeZone::UTC).date()
    }

    /// The project as its files are now (re-read at most once a second when they changed).
    pub fn project(&self) -> Project {
        let mut guard = self.project.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1.elapsed() > Duration::from_secs(1) {
            guard.1 = Instant::now();
            let fp = project::fingerprint(&self.project_dir);
            if fp != guard.2
                && let Ok(mut fresh) = project::load(&self.project_dir)
            {
                // Like the scheduler: a broken file keeps its last valid version.
                project::keep_last_valid(&guard.0, &mut fresh);
                guard.0 = fresh;
                guard.2 = fp;
            }
        }
        guard.0.clone()
    }

    pub fn pipeline(&self, name: &str) -> Result<Arc<Pipeline>, WebError> {
        let project = self.project();
        project
            .pipelines
            .get(name)
            .map(|lp| lp.pipeline.clone())
            .ok_or_else(|| WebError::NotFound(format!("no pipeline `{name}`")))
    }

    /// The pipeline version a run was created with.
    pub fn version(&self, hash: &str) -> Result<Arc<Pipeline>, WebError> {
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(hash) {
            return p.clone().ok_or_else(|| {
                WebError::NotFound(format!("pipeline version {hash} does not validate"))
            });
        }
        let settings = self.project().settings;
        let parsed = project::stored_pipeline(&self.store, hash, &settings)?
            .and_then(|(_, p)| p.ok())
            .map(Arc::new);
        cache.insert(hash.to_owned(), parsed.clone());
        parsed
            .ok_or_else(|| WebError::NotFound(format!("pipeline version {hash} does not validate")))
    }
}

/// How long one store statement of a request waits for a lock.
pub const STORE_WAIT: Duration = Duration::from_secs(2);

/// How `up` starts the server.
pub struct Config {
    pub bind: SocketAddr,
    /// The tokens it accepts (none: actions are disabled).
    pub principals: Vec<auth::Principal>,
    pub clock: Arc<dyn Clock>,
    pub settings: nightshift_core::project::WebSettings,
}

/// Connections served at once; more wait in the kernel's backlog until one closes.
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request's headers, and an idle keep-alive connection
/// is closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `cfg.bind` now (so a taken port is reported at start) and serves on a thread of
/// its own. Returns the bound address (port 0 picks a free one) and whether it speaks
/// HTTPS.
pub fn serve(
    cfg: Config,
    project: Project,
    metrics: Arc<Metrics>,
    stats: Option<Arc<Stats>>,
) -> Result<(SocketAddr, bool), String> {
    let tls = match (&cfg.settings.tls_cert, &cfg.settings.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(
            &project.dir.join(cert),
            &project.dir.join(key),
        )?),
        _ => None,
    };
    let listener = std::net::TcpListener::bind(cfg.bind)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    // A request waits at most this long for a store lock, so a locked store answers 503
    // within the API's bound instead of hanging.
    let store =
        Store::open_waiting(&project.store_location(), STORE_WAIT).map_err(|e| e.to_string())?;
    let fingerprint = project::fingerprint(&project.dir);
    let logs_dir = project.logs_dir();
    let _ = std::fs::create_dir_all(&logs_dir);
    let logs_dir = logs_dir.canonicalize().unwrap_or(logs_dir);
    let loopback = addr.ip().is_loopback();
    // On loopback, only localhost names (and the public name) reach the server: a page
    // elsewhere cannot rebind its own name to 127.0.0.1 and read the UI.
    let hosts = if loopback {
        let mut h: Vec<String> = ["localhost", "127.0.0.1", "[::1]", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        h.extend(cfg.settings.public_name.clone());
        h
    } else {
        vec![]
    };
    let state = Arc::new(AppState {
        store,
        project_dir: project.dir.clone(),
        logs_dir,
        project: Mutex::new((project, Instant::now(), fingerprint)),
        versions: Mutex::new(HashMap::new()),
        auth: auth::Auth::new(
            cfg.principals,
            cfg.settings.session_idle,
            cfg.settings.session_max,
            tls.is_some(),
        ),
        open_reads: loopback,
        hosts,
        max_backfill_runs: cfg.settings.max_backfill_runs,
        public_name: cfg.settings.public_name.clone(),
        metrics,
        stats,
        clock: cfg.clock,
    });
    let app = router(state);
    let https = tls.is_some();
    std::thread::Builder::new()
        .name("web".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the web server's runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => accept_loop(l, app, tls).await,
                    Err(e) => tracing::error!(error = %e, "web server cannot use its socket"),
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok((addr, https))
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate `{}`: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key `{}`: {e}", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not make a TLS server: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections up to [`MAX_CONNECTIONS`], each served on a task of its own with
/// [`HEADER_TIMEOUT`] (TLS handshake included), the client's address put on every request.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // At the cap, new connections wait in the backlog rather than take memory here.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most often: wait for some to close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let client = axum::http::HeaderValue::from_str(&peer.ip().to_string()).ok();
            let svc = hyper::service::service_fn(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    let client = client.clone();
                    async move {
                        use tower::Service as _;
                        let h = req.headers_mut();
                        h.remove(auth::CLIENT_HEADER);
                        if let Some(c) = client {
                            h.insert(auth::CLIENT_HEADER, c);
                        }
                        app.call(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// `ok`, or `degraded: …` while the scheduler cannot use its store (it keeps supervising
/// running tries; restarting it would not help, so the status stays 200).
async fn healthz(axum::extract::State(st): axum::extract::State<Arc<AppState>>) -> String {
    match st.stats.as_deref() {
        Some(s) if s.degraded() => {
            "degraded: the metadata store is unavailable; running tries go on, no new runs or claims".to_owned()
        }
        _ => "ok".to_owned(),
    }
}

/// Every route; [`ROUTES`] lists them for the OpenAPI check.
pub fn router(state: Arc<AppState>) -> Router {
    use axum::routing::{get, post};
    let (api, _) = openapi::api_router();
    Router::new()
        .route("/", get(pages::index))
        .route("/status", get(pages::status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::handler))
        .route("/login", get(pages::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/audit", get(pages::audit))
        .route(
            "/static/app.css",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    pages::stylesheet(),
                )
            }),
        )
        .route(
            "/static/refresh.js",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/javascript; charset=utf-8",
                    )],
                    pages::REFRESH,
                )
            }),
        )
        .route(
            "/static/live-log.js",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/javascript; charset=utf-8",
                    )],
                    pages::live_log_script(),
                )
            }),
        )
        .route("/pipelines/{p}", get(pages::pipeline))
        .route("/pipelines/{p}/graph", get(pages::graph))
        .route("/pipelines/{p}/calendar", get(pages::calendar))
        .route("/pipelines/{p}/dbt/{task}", get(pages::lineage))
        .route("/pipelines/{p}/dbt/{task}/nodes/{id}", get(pages::dbt_node))
        .route("/pipelines/{p}/runs/{run_id}", get(pages::run))
        .route(
            "/pipelines/{p}/runs/{run_id}/tasks/{task}/tries/{n}",
            get(pages::try_page),
        )
        .route("/ui/pipelines/{p}/{action}", post(pages::pipeline_action))
        .route(
            "/ui/pipelines/{p}/runs/{run_id}/clear",
            post(pages::clear_action),
        )
        .route(
            "/ui/pipelines/{p}/runs/{run_id}/cancel",
            post(pages::cancel_action),
        )
        .merge(api)
        .fallback(|| async { WebError::NotFound("no such page".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The host part of a Host header or an origin's authority (`[::1]:8080` → `[::1]`).
fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

/// Checks every request before its handler: the Host is one this server answers to (a
/// loopback server answers localhost names and the configured public name only, against
/// DNS rebinding); a state-changing request comes from this server's own pages (its
/// Origin, else its Referer, names this host; a browser form without either is refused).
/// Every answer gets the security headers.
async fn guard(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !st.hosts.is_empty()
        && !host.is_empty()
        && !st
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host_name(&host)))
    {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this server does not answer to the name `{}`; use localhost, or set `[web] public_name`", host_name(&host)),
        )
            .into_response();
    }
    let method = req.method();
    if !(method == axum::http::Method::GET
        || method == axum::http::Method::HEAD
        || method == axum::http::Method::OPTIONS)
    {
        let source = headers
            .get(axum::http::header::ORIGIN)
            .or_else(|| headers.get(axum::http::header::REFERER))
            .and_then(|v| v.to_str().ok())
            .filter(|v| *v != "null");
        let from_here = |v: &str| {
            let authority = v
                .split_once("://")
                .map_or("", |(_, r)| r.split(['/', '?', '#']).next().unwrap_or(""));
            authority.eq_ignore_ascii_case(&host)
                || st
                    .public_name
                    .as_deref()
                    .is_some_and(|n| host_name(authority).eq_ignore_ascii_case(n))
        };
        let browser_form = headers.get(axum::http::header::COOKIE).is_some()
            && headers.get(axum::http::header::AUTHORIZATION).is_none();
        let refused = match source {
            Some(v) => !from_here(v),
            None => browser_form,
        };
        if refused {
            return WebError::Forbidden(
                "this request comes from another site (its Origin or Referer is not this server); act from nightshift's own pages".into(),
            )
            .into_response();
        }
    }
    let secure = st.auth.secure;
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
            .parse()
            .expect("static header"),
    );
    let html = h
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        // Pages carry CSRF tokens: never kept by a cache.
        h.insert(
            axum::http::header::CACHE_CONTROL,
            "no-store".parse().expect("static header"),
        );
    }
    if secure {
        h.insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000".parse().expect("static header"),
        );
    }
    h.insert(
        "x-content-type-options",
        "nosniff".parse().expect("static header"),
    );
    h.insert("x-frame-options", "DENY".parse().expect("static header"));
    h.insert(
        "referrer-policy",
        "same-origin".parse().expect("static header"),
    );
    res
}
