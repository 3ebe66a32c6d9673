//! Operator actions on runs: clearing tasks so they run again.

use rusqlite::{OptionalExtension, params};

use crate::{Result, Store, event};

impl Store {
    /// Puts finished tasks of a run back to be run again: each named task gets PENDING and
    /// room for `max_tries` more tries (new try numbers; the history of earlier tries stays),
    /// and a finished run is queued again. Tasks still queued or running are left alone.
    /// Returns the tasks that were cleared.
    pub fn clear_tasks(
        &self,
        run_pk: i64,
        tasks: &[(&str, u32)],
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>> {
        self.write(|tx| {
            let mut cleared = vec![];
            for (task, max_tries) in tasks {
                let n = tx.execute(
                    "UPDATE task_instances SET state = 'PENDING', next_try_at = NULL, owner = NULL, pid = NULL, pid_start = NULL,
                         lease_until = NULL, waiting_since = NULL, pokes = 0, max_tries = try_number + ?3, updated_at = ?4
                     WHERE run = ?1 AND task_id = ?2 AND state IN ('SUCCESS', 'FAILED', 'UPSTREAM_FAILED', 'SKIPPED', 'UP_FOR_RETRY')",
                    params![run_pk, task, max_tries, now],
                )?;
                if n == 1 {
                    event(tx, now, run_pk, Some(task), None, "PENDING", Some(reason))?;
                    cleared.push((*task).to_owned());
                }
            }
            if !cleared.is_empty() {
                let n = tx.execute(
                    "UPDATE pipeline_runs SET status = 'QUEUED', end_time = NULL, queued_at = ?2 WHERE id = ?1 AND status IN ('SUCCESS', 'FAILED')",
                    params![run_pk, now],
                )?;
                if n == 1 {
                    event(tx, now, run_pk, None, None, "QUEUED", Some(reason))?;
                }
            }
            Ok(cleared)
        })
    }
}

impl Store {
    /// Sets a finished or waiting task's state by hand (an operator fixed things outside
    /// nightshift), recorded in the run's history with the reason. Refused for a task
    /// that is running. Returns the state it had, or `None` when it was running or missing.
    pub fn mark_task(
        &self,
        run_pk: i64,
        task: &str,
        state: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<String>> {
        self.write(|tx| {
            let old: Option<String> = tx
                .query_row(
                    "SELECT state FROM task_instances WHERE run = ?1 AND task_id = ?2",
                    params![run_pk, task],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(old) = old.filter(|s| s != "RUNNING") else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE task_instances SET state = ?3, next_try_at = NULL, owner = NULL, lease_until = NULL, updated_at = ?4
                 WHERE run = ?1 AND task_id = ?2",
                params![run_pk, task, state, now],
            )?;
            event(tx, now, run_pk, Some(task), None, state, Some(&format!("marked {} by hand: {reason}", state.to_lowercase())))?;
            Ok(Some(old))
        })
    }

    /// Sets a run's final state from its tasks after a hand edit (`None`: not finished, so
    /// the run is queued for the scheduler to carry on).
    pub fn settle_run(&self, run_pk: i64, outcome: Option<&str>, now: i64) -> Result<()> {
        self.write(|tx| {
            match outcome {
                Some(o) => {
                    tx.execute(
                        "UPDATE pipeline_runs SET status = ?2, end_time = COALESCE(end_time, ?3), start_time = COALESCE(start_time, ?3) WHERE id = ?1",
                        params![run_pk, o, now],
                    )?;
                    event(tx, now, run_pk, None, None, o, Some("settled after a task was marked"))?;
                }
                None => {
                    let n = tx.execute(
                        "UPDATE pipeline_runs SET status = 'QUEUED', end_time = NULL WHERE id = ?1 AND status IN ('SUCCESS', 'FAILED')",
                        [run_pk],
                    )?;
                    if n == 1 {
                        event(tx, now, run_pk, None, None, "QUEUED", Some("queued again after a task was marked"))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Running task instances using a pool, across runs (for `explain`).
    pub fn pool_users(&self, pool: &str) -> Result<Vec<(String, String, String)>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT t.pipeline, r.run_id, t.task_id FROM task_instances t JOIN pipeline_runs r ON r.id = t.run
                 WHERE t.state = 'RUNNING' AND t.pool = ?1 ORDER BY r.data_interval_start",
            )?;
            s.query_map([pool], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
        })
    }

    /// Running runs of a pipeline, by trigger class (backfill or not), for `explain`.
    pub fn running_runs(&self, pipeline: &str) -> Result<Vec<crate::RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {} FROM pipeline_runs WHERE pipeline = ?1 AND status = 'RUNNING' ORDER BY data_interval_start",
                crate::RUN_COLS
            ))?;
            s.query_map([pipeline], crate::run_row)?.collect()
        })
    }
}
