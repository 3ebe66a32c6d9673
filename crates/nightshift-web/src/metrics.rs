//! Prometheus metrics. Durations and transitions are counted from the engine's events in
//! this process; the queued and running gauges are read from the store at each scrape, so
//! they count the work of every process sharing it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use nightshift_core::RunState;
use nightshift_core::event::Event;
use nightshift_store::Store;
use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::AppState;

pub struct Metrics {
    registry: Registry,
    task_duration: HistogramVec,
    run_duration: HistogramVec,
    task_transitions: IntCounterVec,
    run_transitions: IntCounterVec,
    alert_failures: IntCounterVec,
    loop_lag: Gauge,
    tasks: IntGaugeVec,
    skipped: IntCounterVec,
    passes: IntCounter,
    pass_seconds: Counter,
}

const BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let task_duration = HistogramVec::new(
            HistogramOpts::new(
                "nightshift_task_duration_seconds",
                "Duration of finished task tries.",
            )
            .buckets(BUCKETS.to_vec()),
            &["pipeline", "task", "state"],
        )
        .expect("valid metric");
        let run_duration = HistogramVec::new(
            HistogramOpts::new(
                "nightshift_run_duration_seconds",
                "Duration of finished runs.",
            )
            .buckets(BUCKETS.to_vec()),
            &["pipeline", "state"],
        )
        .expect("valid metric");
        let task_transitions = IntCounterVec::new(
            Opts::new(
                "nightshift_task_state_transitions_total",
                "Task instances entering a state.",
            ),
            &["pipeline", "task", "state"],
        )
        .expect("valid metric");
        let run_transitions = IntCounterVec::new(
            Opts::new(
                "nightshift_run_state_transitions_total",
                "Runs entering a final state.",
            ),
            &["pipeline", "state"],
        )
        .expect("valid metric");
        let alert_failures = IntCounterVec::new(
            Opts::new(
                "nightshift_alert_delivery_failures_total",
                "Alerts that could not be delivered after their retries.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let loop_lag = Gauge::new(
            "nightshift_scheduler_loop_lag_seconds",
            "How late the scheduler loop last woke against the time it meant to.",
        )
        .expect("valid metric");
        let tasks = IntGaugeVec::new(
            Opts::new(
                "nightshift_task_instances",
                "Task instances of active runs that are queued, running or waiting to retry.",
            ),
            &["pipeline", "state"],
        )
        .expect("valid metric");
        let skipped = IntCounterVec::new(
            Opts::new(
                "nightshift_skipped_intervals_total",
                "Intervals passed over because the pipeline has catchup = false.",
            ),
            &["pipeline"],
        )
        .expect("valid metric");
        let passes = IntCounter::new(
            "nightshift_scheduler_passes_total",
            "Scheduling passes this process made over the active runs.",
        )
        .expect("valid metric");
        let pass_seconds = Counter::new(
            "nightshift_scheduler_pass_seconds_total",
            "Time this process spent in scheduling passes.",
        )
        .expect("valid metric");
        for c in [
            Box::new(skipped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(passes.clone()),
            Box::new(pass_seconds.clone()),
            Box::new(task_duration.clone()),
            Box::new(run_duration.clone()),
            Box::new(task_transitions.clone()),
            Box::new(run_transitions.clone()),
            Box::new(alert_failures.clone()),
            Box::new(loop_lag.clone()),
            Box::new(tasks.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            task_duration,
            run_duration,
            task_transitions,
            run_transitions,
            alert_failures,
            loop_lag,
            tasks,
            skipped,
            passes,
            pass_seconds,
        }
    }

    /// Counts an engine event (a run's duration is read from the store).
    pub fn observe(&self, store: &Store, e: &Event) {
        match e {
            Event::TaskEnded {
                pipeline,
                task_id,
                state,
                duration_ms,
                ..
            } => {
                self.task_transitions
                    .with_label_values(&[pipeline.as_str(), task_id, state.as_str()])
                    .inc();
                if let Some(ms) = duration_ms {
                    self.task_duration
                        .with_label_values(&[pipeline.as_str(), task_id, state.as_str()])
                        .observe(*ms as f64 / 1000.0);
                }
            }
            Event::TaskRetrying {
                pipeline, task_id, ..
            } => self
                .task_transitions
                .with_label_values(&[pipeline.as_str(), task_id, "UP_FOR_RETRY"])
                .inc(),
            Event::RunEnded {
                pipeline,
                run_id,
                state,
                ..
            } => {
                self.run_transitions
                    .with_label_values(&[pipeline.as_str(), state.as_str()])
                    .inc();
                if let Some(r) = store.find_run(pipeline, run_id).ok().flatten()
                    && let (Some(s), Some(end)) = (r.start_time, r.end_time)
                {
                    let st = if *state == RunState::Success {
                        "SUCCESS"
                    } else {
                        "FAILED"
                    };
                    self.run_duration
                        .with_label_values(&[pipeline.as_str(), st])
                        .observe((end - s) as f64 / 1e6);
                }
            }
            _ => {}
        }
    }

    pub fn alert_failed(&self, channel: &str) {
        self.alert_failures.with_label_values(&[channel]).inc();
    }

    /// The exposition, with gauges refreshed from the store.
    pub fn render(&self, store: &Store, stats: Option<&nightshift_core::event::Stats>) -> String {
        if let Some(s) = stats {
            // A loop stuck in a store call shows as the age of its last iteration.
            self.loop_lag.set(
                s.loop_lag(
                    nightshift_core::clock::real_now_us(),
                    std::time::Duration::from_secs(1),
                )
                .as_secs_f64(),
            );
            let passes = s.passes.load(std::sync::atomic::Ordering::Relaxed);
            self.passes.inc_by(passes.saturating_sub(self.passes.get()));
            let secs = s.pass_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
            if secs > self.pass_seconds.get() {
                self.pass_seconds.inc_by(secs - self.pass_seconds.get());
            }
            let skipped = s.skipped.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (p, n) in skipped {
                let c = self.skipped.with_label_values(&[p.as_str()]);
                if n > c.get() {
                    c.inc_by(n - c.get());
                }
            }
        }
        self.tasks.reset();
        if let Ok(counts) = store.live_task_counts() {
            for (p, state, n) in counts {
                self.tasks
                    .with_label_values(&[p.as_str(), state.as_str()])
                    .set(n);
            }
        }
        let mut buf = vec![];
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub async fn handler(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.require_read(&headers) {
        return e.into_response();
    }
    let body = st.metrics.render(&st.store, st.stats.as_deref());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
