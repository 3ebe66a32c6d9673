//! The rows and requests the store's interface speaks in, whatever the backend.

use nightshift_core::{RunState, TaskState, Trigger};

/// Which runs a page of history shows (the grid's filter); `None` matches every run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub trigger: Option<Trigger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub pk: i64,
    pub run_id: String,
    pub pipeline: String,
    pub ds: jiff::civil::Date,
    pub data_interval_start: i64,
    pub data_interval_end: i64,
    pub queued_at: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub status: RunState,
    pub rows_loaded: i64,
    pub trigger: Trigger,
    pub version: String,
}

impl RunRow {
    /// The run's keys as every request and template context carries them.
    pub fn keys(&self) -> nightshift_core::RunKeys {
        nightshift_core::RunKeys {
            pipeline: self.pipeline.clone(),
            run_id: self.run_id.clone(),
            ds: self.ds,
            interval: nightshift_core::DataInterval {
                start: nightshift_core::time::from_micros(self.data_interval_start),
                end: nightshift_core::time::from_micros(self.data_interval_end),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TiRow {
    pub pk: i64,
    pub run_pk: i64,
    pub pipeline: String,
    pub task_id: String,
    pub state: TaskState,
    pub try_number: u32,
    pub max_tries: u32,
    pub next_try_at: Option<i64>,
    pub pool: Option<String>,
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub pid_start: Option<i64>,
    pub lease_until: Option<i64>,
    /// For sensors: when the first poke began.
    pub waiting_since: Option<i64>,
    /// For sensors: pokes that found the condition false.
    pub pokes: u32,
    /// Tries in a row that nightshift itself interrupted (crash, kill, shutdown).
    pub interruptions: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TryRow {
    pub ti_pk: i64,
    pub run_pk: i64,
    pub task_id: String,
    pub try_number: u32,
    pub state: TaskState,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub pid: Option<i64>,
    pub host: String,
    pub log_path: Option<String>,
    pub error: Option<String>,
    pub metrics: Option<String>,
    pub rows_loaded: Option<i64>,
    /// A problem that did not change the outcome (the log could not be written).
    pub warning: Option<String>,
}

pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub pipeline: &'a str,
    pub ds: jiff::civil::Date,
    pub data_interval_start: i64,
    pub data_interval_end: i64,
    pub now: i64,
    pub trigger: Trigger,
    pub version: &'a str,
}

pub struct NewTask<'a> {
    pub task_id: &'a str,
    pub max_tries: u32,
    pub pool: Option<&'a str>,
}

pub struct Claim<'a> {
    pub ti_pk: i64,
    pub owner: &'a str,
    pub host: &'a str,
    pub now: i64,
    pub lease_until: i64,
    /// (pool, slots)
    pub pool: Option<(&'a str, u32)>,
    /// (pipeline, max_active_tasks)
    pub pipeline_limit: (&'a str, u32),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinishTry {
    pub ti_pk: i64,
    pub try_number: u32,
    /// The claim's owner; `None` finishes a try whatever owns it (recovery of a dead owner,
    /// still fenced on the try number).
    pub owner: Option<String>,
    pub end: i64,
    pub try_state: TaskState,
    pub ti_state: TaskState,
    pub next_try_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub metrics: Option<String>,
    pub rows_loaded: Option<i64>,
    /// Tries added to the task's budget (a try stopped by a shutdown does not count).
    pub extra_tries: u32,
    /// The try's log, when it was not recorded at spawn.
    pub log_path: Option<String>,
    /// The try's process, when it was not recorded at spawn (a short try).
    pub pid: Option<u32>,
    /// nightshift itself ended this try (crash, kill, shutdown): counts towards the task's
    /// interruptions in a row instead of its retries. Any other outcome resets the count.
    pub interrupted: bool,
    /// A problem that did not change the outcome, kept on the try.
    pub warning: Option<String>,
}

/// One dbt node's result in one try.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbtNode {
    pub unique_id: String,
    pub resource_type: String,
    pub status: String,
    pub execution_time: Option<f64>,
    pub failures: Option<i64>,
    pub rows_affected: Option<i64>,
    pub message: Option<String>,
    pub invocation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseHolder {
    pub owner: String,
    pub host: String,
    pub pid: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New(i64),
    Existing(i64),
}

impl Created {
    pub fn pk(self) -> i64 {
        match self {
            Created::New(pk) | Created::Existing(pk) => pk,
        }
    }
}

/// A try that was running when its run was cancelled; its engine stops it.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelledTry {
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    pub owner: Option<String>,
}

/// Where a run stands against its deadline, as the scheduler last judged it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeadlineRow {
    pub deadline_at: Option<i64>,
    pub state: Option<String>,
    pub forecast_at: Option<i64>,
}

/// What retention removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    pub runs: u64,
    pub tries: u64,
    /// Log files of the removed tries, for the caller to delete.
    pub log_paths: Vec<String>,
}

/// One recorded state change of a run or task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRecord {
    pub at: i64,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub state: String,
    pub detail: Option<String>,
}

/// An alert to record, once per (event_key, channel).
pub struct NewAlert<'a> {
    pub event_key: &'a str,
    pub channel: &'a str,
    pub kind: &'a str,
    pub pipeline: &'a str,
    pub run_id: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub try_number: Option<u32>,
    pub payload: &'a str,
    pub now: i64,
    /// Who delivers it, and until when the claim holds.
    pub owner: &'a str,
    pub claim_until: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub event_key: String,
    pub channel: String,
    pub kind: String,
    pub pipeline: String,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub payload: String,
    pub status: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

/// One entry of the audit log: who (a token's name) did what to which target, from where,
/// and whether it was allowed and worked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    /// Microseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub client: String,
    /// `ok`, `refused: …` or `failed: …`.
    pub outcome: String,
}

/// A nightshift process that executes tries, as it last told the store.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EngineRow {
    pub owner: String,
    pub host: String,
    pub pid: i64,
    /// `scheduler` (holds the role), `standby` (an `up` without it), `worker`, or `run`
    /// (`run` and `backfill` in the foreground).
    pub role: String,
    /// The pools it serves, comma-separated (`None`: every pool).
    pub pools: Option<String>,
    pub started_at: i64,
    /// By the store's clock.
    pub heartbeat_at: i64,
    /// Its tries RUNNING now.
    pub running: i64,
}

impl EngineRow {
    /// Silent longer than this (a default lease TTL), a process could not have kept its
    /// leases: it is shown as gone.
    pub const GONE_AFTER_US: i64 = 15_000_000;

    /// Whether it beat recently enough to be alive at `now` (the store's clock).
    pub fn alive(&self, now: i64) -> bool {
        now - self.heartbeat_at < Self::GONE_AFTER_US
    }
}

/// The bytes from `offset` on, out of chunks ordered by their offsets, stopping at the first
/// gap (a chunk not shipped yet) or once `max` bytes are gathered.
pub(crate) fn join_chunks(chunks: Vec<(i64, Vec<u8>)>, offset: i64, max: usize) -> Vec<u8> {
    let mut out = vec![];
    let mut at = offset;
    for (start, data) in chunks {
        if start > at || out.len() >= max {
            break;
        }
        let skip = usize::try_from(at - start)
            .unwrap_or(usize::MAX)
            .min(data.len());
        out.extend_from_slice(&data[skip..]);
        at = start + data.len() as i64;
    }
    out
}
