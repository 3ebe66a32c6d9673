//! Operator actions on runs: clearing tasks so they run again.

use rusqlite::params;

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
