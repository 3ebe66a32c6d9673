//! The web UI, the REST API (`/api/v1`, described at `/api/v1/openapi.json`, a document
//! generated from the handlers) and the Prometheus metrics (`/metrics`) that `nightshift up`
//! serves.
//!
//! # Layout
//! - [`model`]: what pages and API show, read from the store (one shape for both).
//! - [`openapi`]: the API's routes and the document generated from them.
//! - [`pages`]: server-rendered HTML (maud); no build step, one small script for live logs.
//! - [`svg`]: the DAG graph, the Gantt chart and the history charts, drawn as SVG.
//! - [`api`]: JSON endpoints and the actions (trigger, backfill, clear, pause).
//! - [`auth`]: the action token, UI sessions and CSRF tokens.
//! - [`metrics`]: the Prometheus registry and what the engine's events feed it.
//!
//! The server runs on its own thread and runtime with its own store connection, so a slow
//! page never delays the scheduler.

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
        let body = openapi::ErrorBody {
            error: self.to_string(),
        };
        (self.status(), axum::Json(body)).into_response()
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
    pub token: Option<String>,
    /// Read-only pages need no token only when the server listens on loopback.
    pub open_reads: bool,
    pub sessions: auth::Sessions,
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
    pub token: Option<String>,
    pub clock: Arc<dyn Clock>,
}

/// Binds `cfg.bind` now (so a taken port is reported at start) and serves on a thread of
/// its own. Returns the bound address (port 0 picks a free one).
pub fn serve(
    cfg: Config,
    project: Project,
    metrics: Arc<Metrics>,
    stats: Option<Arc<Stats>>,
) -> Result<SocketAddr, String> {
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
    let state = Arc::new(AppState {
        store,
        project_dir: project.dir.clone(),
        logs_dir,
        project: Mutex::new((project, Instant::now(), fingerprint)),
        versions: Mutex::new(HashMap::new()),
        token: cfg.token,
        open_reads: addr.ip().is_loopback(),
        sessions: auth::Sessions::default(),
        metrics,
        stats,
        clock: cfg.clock,
    });
    let app = router(state);
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
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!(error = %e, "web server stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "web server cannot use its socket"),
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
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
        .route("/pipelines/{p}", get(pages::pipeline))
        .route("/pipelines/{p}/graph", get(pages::graph))
        .route("/pipelines/{p}/calendar", get(pages::calendar))
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
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
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
