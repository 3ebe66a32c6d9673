//! `sensor`: one poke is `nightshift __sensor REQUEST`, exiting `SENSOR_NOT_YET` while the
//! condition does not hold; the try then waits for its next poke without a slot, until the
//! task's `timeout` bounds the whole wait.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use nightshift_core::kinds::{SENSOR_NOT_YET, SensorCondition, SensorRequest, SensorSpec};
use nightshift_core::pipeline::Task;
use nightshift_core::time::from_micros;
use tracing::info;

use super::{Findings, Prepared, Runner, TryPaths, Wait, internal_argv, resolve_connection};
use crate::attempt::{TryCtx, plus};
use crate::executor::{ChildOutcome, Exit};

/// One sensor poke runs at most this long.
pub(crate) const POKE_TIMEOUT: Duration = Duration::from_secs(60);

impl Runner for SensorSpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let (condition, connection) = match &self.condition {
            SensorCondition::Sql { connection, sql } => {
                let conn = resolve_connection(c, connection)?;
                (
                    SensorCondition::Sql {
                        connection: connection.clone(),
                        sql: sql.clone(),
                    },
                    Some(conn),
                )
            }
            SensorCondition::Path { path } => (
                SensorCondition::Path {
                    path: c
                        .project_dir
                        .join(p.ctx.render(path))
                        .to_string_lossy()
                        .into_owned(),
                },
                None,
            ),
        };
        let request = SensorRequest {
            condition,
            connection,
            keys: p.ctx.keys.clone(),
        };
        internal_argv("__sensor", &request, p)
    }

    /// `timeout` bounds the whole wait; one poke gets at most a minute.
    fn timeout(&self, task: &Task) -> Option<Duration> {
        Some(task.timeout.unwrap_or(POKE_TIMEOUT).min(POKE_TIMEOUT))
    }

    fn conclude(
        &self,
        c: &TryCtx,
        task: &Task,
        started: Timestamp,
        _p: &TryPaths<'_>,
        outcome: &ChildOutcome,
    ) -> Findings {
        if !matches!(outcome.exit, Exit::Code(SENSOR_NOT_YET)) {
            return Findings::default();
        }
        let end = outcome.end;
        let since = c.ti.waiting_since.map(from_micros).unwrap_or(started);
        let waited = end.duration_since(since);
        let limit = task.timeout.and_then(|t| SignedDuration::try_from(t).ok());
        let poke = SignedDuration::try_from(self.poke_interval).unwrap_or_default();
        let wait = if limit.is_none_or(|l| waited + poke <= l) {
            let next = plus(end, self.poke_interval);
            info!(task = %task.id, next_poke = %next, "sensor condition not met yet; waiting without a slot");
            Wait::Again(next)
        } else {
            Wait::GaveUp(format!(
                "sensor timed out after {} waiting for {}",
                // The configured timeout: the next poke would have come after it.
                nightshift_core::time::format_duration(
                    task.timeout.unwrap_or_else(|| waited.unsigned_abs())
                ),
                self.condition.describe()
            ))
        };
        Findings {
            wait: Some(wait),
            ..Findings::default()
        }
    }
}
