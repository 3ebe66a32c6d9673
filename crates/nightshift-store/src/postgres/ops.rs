//! Operator actions on runs: rerun, clear, cancel, mark by hand.

use nightshift_core::{TaskState, Trigger};

use super::{PgStore, RUN_COLS, event, rows, run_row, u32_of};
use crate::{CancelledTry, Error, NewTask, Result, RunRow};

impl PgStore {
    pub fn reset_run(
        &self,
        pk: i64,
        now: i64,
        trigger: Trigger,
        version: &str,
        tasks: &[NewTask<'_>],
    ) -> Result<bool> {
        self.write(|tx| {
            let row = tx.query_opt(
                "UPDATE pipeline_runs SET status = 'QUEUED', start_time = NULL, end_time = NULL, rows_loaded = 0, queued_at = $2,
                     \"trigger\" = $3, version = $4
                 WHERE id = $1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED') RETURNING pipeline",
                &[&pk, &now, &trigger.as_str(), &version],
            )?;
            let Some(row) = row else { return Ok(false) };
            let pipeline: String = row.try_get(0)?;
            tx.execute(
                "UPDATE task_instances SET state = 'SKIPPED', next_try_at = NULL, owner = NULL, updated_at = $2 WHERE run = $1",
                &[&pk, &now],
            )?;
            for t in tasks {
                tx.execute(
                    "INSERT INTO task_instances (run, pipeline, task_id, state, max_tries, pool, updated_at) VALUES ($1, $2, $3, 'PENDING', $4, $5, $6)
                     ON CONFLICT (run, task_id) DO UPDATE SET state = 'PENDING', next_try_at = NULL, owner = NULL, pid = NULL,
                         pid_start = NULL, waiting_since = NULL, pokes = 0, interruptions = 0, lease_until = NULL, pool = excluded.pool,
                         max_tries = task_instances.try_number + excluded.max_tries, updated_at = excluded.updated_at",
                    &[&pk, &pipeline, &t.task_id, &i64::from(t.max_tries), &t.pool, &now],
                )?;
            }
            event(tx, now, pk, None, None, "QUEUED", Some("rerun"))?;
            super::listen::notify(tx)?;
            Ok(true)
        })
    }

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
                         lease_until = NULL, waiting_since = NULL, pokes = 0, interruptions = 0, max_tries = try_number + $3, updated_at = $4
                     WHERE run = $1 AND task_id = $2 AND state IN ('SUCCESS', 'FAILED', 'UPSTREAM_FAILED', 'SKIPPED', 'UP_FOR_RETRY', 'CANCELLED')",
                    &[&run_pk, task, &i64::from(*max_tries), &now],
                )?;
                if n == 1 {
                    event(tx, now, run_pk, Some(task), None, "PENDING", Some(reason))?;
                    cleared.push((*task).to_owned());
                }
            }
            if !cleared.is_empty() {
                let n = tx.execute(
                    "UPDATE pipeline_runs SET status = 'QUEUED', end_time = NULL, queued_at = $2 WHERE id = $1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')",
                    &[&run_pk, &now],
                )?;
                if n == 1 {
                    event(tx, now, run_pk, None, None, "QUEUED", Some(reason))?;
                }
                super::listen::notify(tx)?;
            }
            Ok(cleared)
        })
    }

    pub fn cancel_runs(
        &self,
        run_pks: &[i64],
        now: i64,
        reason: &str,
    ) -> Result<(Vec<String>, Vec<CancelledTry>)> {
        self.write(|tx| {
            let mut runs = vec![];
            let mut tries = vec![];
            for pk in run_pks {
                let row = tx.query_opt(
                    "UPDATE pipeline_runs SET status = 'CANCELLED', end_time = $2 WHERE id = $1 AND status IN ('QUEUED', 'RUNNING') RETURNING run_id",
                    &[pk, &now],
                )?;
                let Some(row) = row else { continue };
                let run_id: String = row.try_get(0)?;
                let live = tx.query(
                    "SELECT task_id, try_number, owner FROM task_instances WHERE run = $1 AND state = 'RUNNING' FOR UPDATE",
                    &[pk],
                )?;
                for r in &live {
                    let (task, try_number, owner): (String, i64, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    tx.execute(
                        "UPDATE task_tries SET state = 'CANCELLED', end_time = $4, duration_ms = ($4 - start_time) / 1000,
                             error = COALESCE(error, $5)
                         WHERE run = $1 AND task_id = $2 AND try_number = $3",
                        &[pk, &task, &try_number, &now, &format!("cancelled: {reason}")],
                    )?;
                    tries.push(CancelledTry {
                        run_id: run_id.clone(),
                        task_id: task,
                        try_number: u32_of(try_number),
                        owner,
                    });
                }
                tx.execute(
                    "UPDATE task_instances SET state = 'CANCELLED', next_try_at = NULL, lease_until = NULL, updated_at = $2
                     WHERE run = $1 AND state IN ('PENDING', 'QUEUED', 'RUNNING', 'UP_FOR_RETRY')",
                    &[pk, &now],
                )?;
                event(tx, now, *pk, None, None, "CANCELLED", Some(reason))?;
                runs.push(run_id);
            }
            Ok((runs, tries))
        })
    }

    pub fn unfinished_backfill_runs(&self, pipeline: &str) -> Result<Vec<i64>> {
        self.read(|c| {
            c.query(
                "SELECT id FROM pipeline_runs WHERE pipeline = $1 AND \"trigger\" = 'backfill' AND status IN ('QUEUED', 'RUNNING') ORDER BY data_interval_start",
                &[&pipeline],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    pub fn task_state(&self, ti_pk: i64) -> Result<Option<TaskState>> {
        let state: Option<String> = self.read(|c| {
            Ok(
                match c.query_opt("SELECT state FROM task_instances WHERE id = $1", &[&ti_pk])? {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                },
            )
        })?;
        state.map(|s| s.parse().map_err(Error::Corrupt)).transpose()
    }

    pub fn mark_task(
        &self,
        run_pk: i64,
        task: &str,
        state: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<String>> {
        self.write(|tx| {
            let old = tx.query_opt(
                "SELECT state FROM task_instances WHERE run = $1 AND task_id = $2 FOR UPDATE",
                &[&run_pk, &task],
            )?;
            let old: Option<String> = match old {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            };
            let Some(old) = old.filter(|s| s != "RUNNING") else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE task_instances SET state = $3, next_try_at = NULL, owner = NULL, lease_until = NULL, updated_at = $4
                 WHERE run = $1 AND task_id = $2",
                &[&run_pk, &task, &state, &now],
            )?;
            event(tx, now, run_pk, Some(task), None, state, Some(&format!("marked {} by hand: {reason}", state.to_lowercase())))?;
            // Its downstream may be ready now.
            super::listen::notify(tx)?;
            Ok(Some(old))
        })
    }

    pub fn settle_run(&self, run_pk: i64, outcome: Option<&str>, now: i64) -> Result<()> {
        self.write(|tx| {
            match outcome {
                Some(o) => {
                    tx.execute(
                        "UPDATE pipeline_runs SET status = $2, end_time = COALESCE(end_time, $3), start_time = COALESCE(start_time, $3) WHERE id = $1",
                        &[&run_pk, &o, &now],
                    )?;
                    event(tx, now, run_pk, None, None, o, Some("settled after a task was marked"))?;
                }
                None => {
                    let n = tx.execute(
                        "UPDATE pipeline_runs SET status = 'QUEUED', end_time = NULL WHERE id = $1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')",
                        &[&run_pk],
                    )?;
                    if n == 1 {
                        event(tx, now, run_pk, None, None, "QUEUED", Some("queued again after a task was marked"))?;
                        super::listen::notify(tx)?;
                    }
                }
            }
            Ok(())
        })
    }

    pub fn pool_users(&self, pool: &str) -> Result<Vec<(String, String, String)>> {
        self.read(|c| {
            c.query(
                "SELECT t.pipeline, r.run_id, t.task_id FROM task_instances t JOIN pipeline_runs r ON r.id = t.run
                 WHERE t.state = 'RUNNING' AND t.pool = $1 ORDER BY r.data_interval_start",
                &[&pool],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
        })
    }

    pub fn running_runs(&self, pipeline: &str) -> Result<Vec<RunRow>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND status = 'RUNNING' ORDER BY data_interval_start"),
                    &[&pipeline],
                )?,
                run_row,
            )
        })
    }
}
