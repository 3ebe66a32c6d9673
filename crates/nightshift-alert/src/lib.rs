//! Alerts: which engine events become messages, to which channels, exactly once.
//!
//! # Layout
//! - [`channel`]: delivering one message to one channel (log, webhook/Slack, SMTP, command)
//!   with its timeout and retries; `notify` tasks use it too.
//! - [`Alerter`]: turns engine events into alerts, records each in the store's outbox
//!   (unique per event and channel, so several processes observing one failure send one
//!   alert), and delivers them on one thread per channel: a hung endpoint delays only its
//!   own channel, never the scheduler.

pub mod channel;
pub mod guard;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nightshift_core::clock::Clock;
use nightshift_core::deadline::DeadlineState;
use nightshift_core::event::Event;
use nightshift_core::project::{AlertKind, ProjectSettings};
use nightshift_core::time::to_micros;
use nightshift_core::{RunState, TaskState};
use nightshift_store::{NewAlert, Store};
use serde_json::json;

pub use channel::{Message, Outcome, deliver, deliver_reporting, describe, redact};

/// Called with the channel's name whenever a delivery finally fails (metrics).
pub type FailureHook = Arc<dyn Fn(&str) + Send + Sync>;

/// How long a process's claim on an alert it is delivering holds before another scheduler
/// may deliver it instead: longer than any channel's retries take.
const CLAIM: Duration = Duration::from_secs(600);

pub struct Alerter {
    store: Arc<Store>,
    settings: Arc<ProjectSettings>,
    base_url: String,
    owner: String,
    workers: HashMap<String, mpsc::Sender<i64>>,
    outstanding: Arc<AtomicUsize>,
    /// Data time: when an alert was raised and sent. Its claim is a lease, in real time.
    clock: Arc<dyn Clock>,
}

impl Alerter {
    /// Starts one delivery thread per alert channel.
    pub fn new(
        store: Arc<Store>,
        settings: ProjectSettings,
        project_dir: PathBuf,
        on_failure: Option<FailureHook>,
        host: &str,
        clock: Arc<dyn Clock>,
    ) -> Alerter {
        let base_url = settings
            .alerts
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.web.bind));
        let settings = Arc::new(settings);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let mut workers = HashMap::new();
        for name in &settings.alerts.channels {
            let Some(ch) = settings.channels.get(name).cloned() else {
                continue;
            };
            let (tx, rx) = mpsc::channel::<i64>();
            let store = store.clone();
            let name2 = name.clone();
            let dir = project_dir.clone();
            let outstanding = outstanding.clone();
            let hook = on_failure.clone();
            let clock = clock.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("alerts-{name}"))
                .spawn(move || {
                    for id in rx {
                        deliver_recorded(
                            &store,
                            &name2,
                            &ch,
                            &dir,
                            id,
                            hook.as_ref(),
                            clock.as_ref(),
                        );
                        outstanding.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            match spawned {
                Ok(_) => {
                    workers.insert(name.clone(), tx);
                }
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "cannot start the alert thread")
                }
            }
        }
        Alerter {
            store,
            settings,
            base_url,
            owner: format!("{host}:{}", std::process::id()),
            workers,
            outstanding,
            clock,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Delivers alerts left pending by a process that died before sending them.
    pub fn deliver_stale(&self) {
        if self.workers.is_empty() {
            return;
        }
        // Claims are compared across hosts: measured with the store's clock.
        let Ok(now) = self.store.now_us() else {
            return;
        };
        match self
            .store
            .claim_stale_alerts(&self.owner, now, now + CLAIM.as_micros() as i64)
        {
            Ok(ids) => {
                for id in ids {
                    if let Ok(Some(a)) = self.store.alert(id) {
                        self.dispatch(&a.channel, id);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read pending alerts"),
        }
    }

    fn dispatch(&self, channel: &str, id: i64) {
        if let Some(w) = self.workers.get(channel) {
            self.outstanding.fetch_add(1, Ordering::SeqCst);
            if w.send(id).is_err() {
                self.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Waits until queued deliveries are done, at most `limit` (a command about to exit).
    pub fn wait_idle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Turns one engine event into alerts for the channels that want it. Never blocks on
    /// delivery: it writes the outbox and hands the id to the channel's thread.
    pub fn handle(&self, ev: &Event) {
        if self.workers.is_empty() {
            return;
        }
        if let Err(e) = self.handle_inner(ev) {
            tracing::error!(error = %e, "cannot record an alert");
        }
    }

    fn handle_inner(&self, ev: &Event) -> Result<(), nightshift_store::Error> {
        match ev {
            Event::TaskEnded {
                pipeline,
                run_id,
                task_id,
                state: TaskState::Failed,
                try_number,
                ..
            } => self.task_alert(
                AlertKind::TaskFailed,
                pipeline,
                run_id,
                task_id,
                *try_number,
                None,
            ),
            Event::TaskRetrying {
                pipeline,
                run_id,
                task_id,
                try_number,
                next_try_at,
            } => self.task_alert(
                AlertKind::TaskRetrying,
                pipeline,
                run_id,
                task_id,
                *try_number,
                Some(*next_try_at),
            ),
            Event::RunEnded {
                pipeline,
                run_id,
                state,
                ..
            } => self.run_alerts(pipeline, run_id, *state),
            Event::Deadline {
                pipeline,
                run_id,
                ds,
                state,
                deadline,
                forecast,
                at,
            } => {
                let kind = match state {
                    DeadlineState::AtRisk => AlertKind::DeadlineAtRisk,
                    DeadlineState::Missed => AlertKind::DeadlineMissed,
                    _ => return Ok(()),
                };
                let subject = match kind {
                    AlertKind::DeadlineAtRisk => format!(
                        "[nightshift] {pipeline} {run_id}: deadline at risk (forecast {}, deadline {deadline})",
                        forecast
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "unknown".into())
                    ),
                    _ => format!("[nightshift] {pipeline} {run_id}: deadline missed ({deadline})"),
                };
                let link = format!("{}/pipelines/{pipeline}/runs/{run_id}", self.base_url);
                let text = format!(
                    "pipeline: {pipeline}\nrun_id: {run_id}\nds: {ds}\ndeadline: {deadline}\nforecast finish: {}\nrun page: {link}",
                    forecast
                        .map(|f| f.to_string())
                        .unwrap_or_else(|| "no history yet".into())
                );
                let data = json!({
                    "event": kind.as_str(), "pipeline": pipeline, "run_id": run_id, "ds": ds,
                    "deadline": deadline.to_string(), "forecast": forecast.map(|f| f.to_string()),
                    "raised_at": at.to_string(),
                    "links": {"page": link},
                });
                let msg = Message {
                    subject,
                    text,
                    data,
                    link: Some(link),
                };
                let key = format!(
                    "{}:{pipeline}:{run_id}:{}",
                    kind.as_str(),
                    to_micros(*deadline)
                );
                self.enqueue(kind, &key, pipeline, Some(run_id), None, None, &msg, |_| {
                    true
                })
            }
            _ => Ok(()),
        }
    }

    fn wants(&self, channel: &str, kind: AlertKind) -> bool {
        self.settings
            .alerts
            .subscriptions
            .get(channel)
            .map(|s| s.events.contains(&kind))
            .unwrap_or(false)
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        kind: AlertKind,
        key: &str,
        pipeline: &str,
        run_id: Option<&str>,
        task_id: Option<&str>,
        try_number: Option<u32>,
        msg: &Message,
        allow: impl Fn(&str) -> bool,
    ) -> Result<(), nightshift_store::Error> {
        let payload = serde_json::to_string(msg).unwrap_or_default();
        let now = to_micros(self.clock.now());
        for channel in &self.settings.alerts.channels {
            if !self.wants(channel, kind) || !allow(channel) {
                continue;
            }
            let id = self.store.enqueue_alert(&NewAlert {
                event_key: key,
                channel,
                kind: kind.as_str(),
                pipeline,
                run_id,
                task_id,
                try_number,
                payload: &payload,
                now,
                owner: &self.owner,
                claim_until: self.store.now_us()? + CLAIM.as_micros() as i64,
            })?;
            if let Some(id) = id {
                self.dispatch(channel, id);
            }
        }
        Ok(())
    }

    fn after_failures(&self, channel: &str) -> u32 {
        self.settings
            .alerts
            .subscriptions
            .get(channel)
            .map(|s| s.after_failures)
            .unwrap_or(1)
    }

    fn task_alert(
        &self,
        kind: AlertKind,
        pipeline: &str,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        next_try_at: Option<Timestamp>,
    ) -> Result<(), nightshift_store::Error> {
        let Some(run) = self.store.find_run(pipeline, run_id)? else {
            return Ok(());
        };
        let tries = self.store.tries(run.pk)?;
        let t = tries
            .iter()
            .find(|t| t.task_id == task_id && t.try_number == try_number);
        let max_tries = self
            .store
            .task_instances(run.pk)?
            .into_iter()
            .find(|ti| ti.task_id == task_id)
            .map(|ti| ti.max_tries)
            .unwrap_or(try_number);
        let duration_ms = t.and_then(|t| t.duration_ms);
        let error = t.and_then(|t| t.error.clone());
        let page = format!(
            "{}/pipelines/{pipeline}/runs/{run_id}/tasks/{task_id}/tries/{try_number}",
            self.base_url
        );
        let log = format!(
            "{}/api/v1/pipelines/{pipeline}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log",
            self.base_url
        );
        let (state, what) = match kind {
            AlertKind::TaskRetrying => ("UP_FOR_RETRY", "failed, will retry"),
            _ => ("FAILED", "FAILED"),
        };
        let subject = format!(
            "[nightshift] {pipeline} {run_id}: task {task_id} {what} (try {try_number} of {max_tries})"
        );
        let dur = duration_ms
            .map(|d| format!("{:.1}s", d as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let mut text = format!(
            "pipeline: {pipeline}\nrun_id: {run_id}\nds: {}\ntask: {task_id}\nstate: {state}\ntry: {try_number} of {max_tries}\nduration: {dur}\n",
            run.ds
        );
        if let Some(e) = &error {
            text.push_str(&format!("error: {e}\n"));
        }
        if let Some(n) = next_try_at {
            text.push_str(&format!("next try at: {n}\n"));
        }
        text.push_str(&format!("page: {page}\nlog: {log}\n"));
        let data = json!({
            "event": kind.as_str(), "pipeline": pipeline, "run_id": run_id, "ds": run.ds,
            "task": task_id, "state": state, "try": try_number, "max_tries": max_tries,
            "duration_ms": duration_ms, "error": error,
            "exit_code": t.and_then(|t| t.exit_code), "signal": t.and_then(|t| t.signal),
            "next_try_at": next_try_at.map(|n| n.to_string()),
            "links": {"page": page, "log": log},
        });
        let msg = Message {
            subject,
            text,
            data,
            link: Some(page),
        };
        let key = format!(
            "{}:{pipeline}:{run_id}:{task_id}:{try_number}",
            kind.as_str()
        );
        // Failed runs before this one, plus this one: the run is not finished yet.
        let streak = if kind == AlertKind::TaskFailed {
            self.store
                .consecutive_failed_runs(pipeline, run.data_interval_start - 1)?
                + 1
        } else {
            1
        };
        self.enqueue(
            kind,
            &key,
            pipeline,
            Some(run_id),
            Some(task_id),
            Some(try_number),
            &msg,
            |c| streak >= self.after_failures(c),
        )
    }

    fn run_alerts(
        &self,
        pipeline: &str,
        run_id: &str,
        state: RunState,
    ) -> Result<(), nightshift_store::Error> {
        let Some(run) = self.store.find_run(pipeline, run_id)? else {
            return Ok(());
        };
        let link = format!("{}/pipelines/{pipeline}/runs/{run_id}", self.base_url);
        let tis = self.store.task_instances(run.pk)?;
        let failed: Vec<&str> = tis
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| t.task_id.as_str())
            .collect();
        let duration_ms = match (run.start_time, run.end_time) {
            (Some(s), Some(e)) => Some((e - s) / 1000),
            _ => None,
        };
        let end = run.end_time.unwrap_or_default();
        let data = |kind: AlertKind| {
            json!({
                "event": kind.as_str(), "pipeline": pipeline, "run_id": run_id, "ds": run.ds,
                "state": run.status.as_str(), "duration_ms": duration_ms, "rows_loaded": run.rows_loaded,
                "failed_tasks": failed, "links": {"page": link},
            })
        };
        let text = format!(
            "pipeline: {pipeline}\nrun_id: {run_id}\nds: {}\nstate: {}\nduration: {}\nrows_loaded: {}\n{}page: {link}\n",
            run.ds,
            run.status,
            duration_ms
                .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            run.rows_loaded,
            if failed.is_empty() {
                String::new()
            } else {
                format!("failed tasks: {}\n", failed.join(", "))
            },
        );
        match state {
            RunState::Failed => {
                let streak = self
                    .store
                    .consecutive_failed_runs(pipeline, run.data_interval_start)?;
                let msg = Message {
                    subject: format!(
                        "[nightshift] {pipeline} {run_id}: run FAILED ({} failed task(s))",
                        failed.len()
                    ),
                    text,
                    data: data(AlertKind::RunFailed),
                    link: Some(link.clone()),
                };
                let key = format!("run_failed:{pipeline}:{run_id}:{end}");
                self.enqueue(
                    AlertKind::RunFailed,
                    &key,
                    pipeline,
                    Some(run_id),
                    None,
                    None,
                    &msg,
                    |c| streak >= self.after_failures(c),
                )
            }
            RunState::Success => {
                let msg = Message {
                    subject: format!("[nightshift] {pipeline} {run_id}: run succeeded"),
                    text: text.clone(),
                    data: data(AlertKind::RunSucceeded),
                    link: Some(link.clone()),
                };
                self.enqueue(
                    AlertKind::RunSucceeded,
                    &format!("run_succeeded:{pipeline}:{run_id}:{end}"),
                    pipeline,
                    Some(run_id),
                    None,
                    None,
                    &msg,
                    |_| true,
                )?;
                // A success closes the incident a failure alert opened on each channel.
                let mut open = vec![];
                for c in &self.settings.alerts.channels {
                    if self.store.open_incident(c, pipeline)? {
                        open.push(c.clone());
                    }
                }
                if open.is_empty() {
                    return Ok(());
                }
                let msg = Message {
                    subject: format!("[nightshift] {pipeline} recovered: {run_id} succeeded"),
                    text,
                    data: data(AlertKind::Recovered),
                    link: Some(link),
                };
                self.enqueue(
                    AlertKind::Recovered,
                    &format!("recovered:{pipeline}:{run_id}:{end}"),
                    pipeline,
                    Some(run_id),
                    None,
                    None,
                    &msg,
                    |c| open.iter().any(|o| o == c),
                )
            }
            _ => Ok(()),
        }
    }
}

/// Delivers one recorded alert and records how it went.
fn deliver_recorded(
    store: &Store,
    name: &str,
    ch: &nightshift_core::project::Channel,
    dir: &std::path::Path,
    id: i64,
    hook: Option<&FailureHook>,
    clock: &dyn Clock,
) {
    let row = match store.alert(id) {
        Ok(Some(r)) if r.status == "pending" => r,
        _ => return,
    };
    let msg: Message = match serde_json::from_str(&row.payload) {
        Ok(m) => m,
        Err(e) => {
            let _ = store.finish_alert(
                id,
                false,
                0,
                Some(&format!("unreadable payload: {e}")),
                to_micros(clock.now()),
            );
            return;
        }
    };
    let out = deliver(name, ch, &msg, dir, &channel::process_env);
    if let Err(e) = store.finish_alert(
        id,
        out.error.is_none(),
        out.attempts,
        out.error.as_deref(),
        to_micros(clock.now()),
    ) {
        tracing::error!(error = %e, alert = id, "cannot record an alert's delivery");
    }
    match &out.error {
        None => {
            tracing::info!(channel = name, kind = %row.kind, pipeline = %row.pipeline, "alert sent")
        }
        Some(e) => {
            tracing::error!(channel = name, kind = %row.kind, pipeline = %row.pipeline, attempts = out.attempts, error = %e, "alert delivery failed");
            if let Some(h) = hook {
                h(name);
            }
        }
    }
}
