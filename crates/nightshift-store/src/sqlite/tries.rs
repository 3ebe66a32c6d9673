//! Task instances, claims and tries: the writes fenced on (task instance, try, owner).

use nightshift_core::{RunState, TaskState};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, TI_COLS, TRY_COLS, event, ti_row, try_row};
use crate::{Claim, DbtNode, FinishTry, Result, TiRow, TryRow};

impl SqliteStore {
    pub fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE run = ?1 ORDER BY id"
            ))?;
            s.query_map([run_pk], ti_row)?.collect()
        })
    }

    pub fn decide_pending(
        &self,
        run_pk: i64,
        decisions: &[(String, TaskState)],
        now: i64,
    ) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for (task, state) in decisions {
                let changed = tx.prepare_cached("UPDATE task_instances SET state = ?3, updated_at = ?4 WHERE run = ?1 AND task_id = ?2 AND state = 'PENDING'")?.execute(params![run_pk, task, state.as_str(), now],
                )?;
                if changed == 1 {
                    event(tx, now, run_pk, Some(task), None, state.as_str(), None)?;
                }
                n += changed;
            }
            Ok(n)
        })
    }

    pub fn claim(&self, c: &Claim<'_>) -> Result<Option<u32>> {
        Ok(self
            .claim_batch(std::slice::from_ref(c), 1)?
            .pop()
            .flatten())
    }

    pub fn claim_batch(&self, claims: &[Claim<'_>], most: usize) -> Result<Vec<Option<u32>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(claims.len());
            let mut taken = 0;
            for c in claims {
                if taken >= most {
                    out.push(None);
                    continue;
                }
                let (pool, slots) = c.pool.map(|(p, s)| (Some(p), s)).unwrap_or((None, 0));
                let claimed: Option<(u32, i64, String)> = tx
                    .prepare_cached(
                        "UPDATE task_instances
                         SET state = 'RUNNING', try_number = try_number + 1, owner = ?2, host = ?3, lease_until = ?4,
                             pid = NULL, pid_start = NULL, next_try_at = NULL, updated_at = ?5
                         WHERE id = ?1 AND state IN ('QUEUED', 'UP_FOR_RETRY') AND (next_try_at IS NULL OR next_try_at <= ?5)
                           AND (?6 IS NULL OR (SELECT COUNT(*) FROM task_instances WHERE state = 'RUNNING' AND pool = ?6) < ?7)
                           AND (SELECT COUNT(*) FROM task_instances WHERE state = 'RUNNING' AND pipeline = ?8) < ?9
                         RETURNING try_number, run, task_id",
                    )?
                    .query_row(
                        params![c.ti_pk, c.owner, c.host, c.lease_until, c.now, pool, slots, c.pipeline_limit.0, c.pipeline_limit.1],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((n, run, task)) = &claimed {
                    tx.prepare_cached(
                        "INSERT INTO task_tries (ti, run, task_id, try_number, state, start_time, host) VALUES (?1, ?2, ?3, ?4, 'RUNNING', ?5, ?6)",
                    )?
                    .execute(params![c.ti_pk, run, task, n, c.now, c.host])?;
                    // The try row records this change with its time; no separate event.
                }
                taken += usize::from(claimed.is_some());
                out.push(claimed.map(|c| c.0));
            }
            Ok(out)
        })
    }

    pub fn reschedule(
        &self,
        ti_pk: i64,
        try_number: u32,
        owner: &str,
        started: i64,
        next_poke: i64,
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let since: Option<i64> = tx
                .prepare_cached(
                    "UPDATE task_instances SET state = 'QUEUED', try_number = try_number - 1, next_try_at = ?4, owner = NULL,
                         pid = NULL, pid_start = NULL, lease_until = NULL, updated_at = ?5,
                         waiting_since = COALESCE(waiting_since, ?5), pokes = pokes + 1
                     WHERE id = ?1 AND try_number = ?2 AND owner = ?3 AND state = 'RUNNING'
                     RETURNING waiting_since",
                )?
                .query_row(params![ti_pk, try_number, owner, next_poke, started], |r| r.get(0))
                .optional()?;
            if since.is_some() {
                tx.prepare_cached("DELETE FROM task_tries WHERE ti = ?1 AND try_number = ?2")?.execute(params![ti_pk, try_number])?;
            }
            Ok(since)
        })
    }

    pub fn record_spawn(
        &self,
        ti_pk: i64,
        try_number: u32,
        owner: &str,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE task_instances SET pid = ?4, pid_start = ?5 WHERE id = ?1 AND try_number = ?2 AND owner = ?3 AND state = 'RUNNING'")?.execute(params![ti_pk, try_number, owner, pid, pid_start.map(|p| p as i64)],
            )?;
            if n == 1 {
                tx.prepare_cached("UPDATE task_tries SET pid = ?3, log_path = ?4 WHERE ti = ?1 AND try_number = ?2")?.execute(params![ti_pk, try_number, pid, log_path],
                )?;
            }
            Ok(n == 1)
        })
    }

    pub fn finish_try(&self, f: &FinishTry) -> Result<bool> {
        self.write(|tx| finish_in(tx, f))
    }

    /// Several outcomes in one transaction (the outcome writer's batch).
    pub fn finish_tries(&self, fs: &[FinishTry]) -> Result<Vec<bool>> {
        self.write(|tx| fs.iter().map(|f| finish_in(tx, f)).collect())
    }

    pub fn finish_run(&self, pk: i64, state: RunState, now: i64) -> Result<bool> {
        self.write(|tx| {
            let n = tx.prepare_cached("UPDATE pipeline_runs SET status = ?2, end_time = ?3,
                    rows_loaded = (SELECT COALESCE(SUM(t.rows_loaded), 0) FROM task_tries t JOIN task_instances i
                                   ON t.ti = i.id AND t.try_number = i.try_number
                                   WHERE i.run = ?1 AND i.state = 'SUCCESS')
                 WHERE id = ?1 AND status = 'RUNNING'")?.execute(params![pk, state.as_str(), now],
            )?;
            if n == 1 {
                event(tx, now, pk, None, None, state.as_str(), None)?;
            }
            Ok(n == 1)
        })
    }

    pub fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<Vec<(i64, u32)>> {
        self.write(|tx| {
            let mut s = tx.prepare("UPDATE task_instances SET lease_until = ?2 WHERE owner = ?1 AND state = 'RUNNING' RETURNING id, try_number")?;
            s.query_map(params![owner, lease_until], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    pub fn running_task_instances(&self) -> Result<Vec<TiRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE state = 'RUNNING'"
            ))?;
            s.query_map([], ti_row)?.collect()
        })
    }

    pub fn recent_metrics(
        &self,
        pipeline: &str,
        task_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT t.metrics FROM task_tries t JOIN pipeline_runs r ON r.id = t.run
                 WHERE r.pipeline = ?1 AND t.task_id = ?2 AND t.state = 'SUCCESS' AND r.data_interval_start < ?3
                   AND t.metrics IS NOT NULL
                 ORDER BY r.data_interval_start DESC, t.try_number DESC LIMIT ?4",
            )?;
            s.query_map(params![pipeline, task_id, before, limit], |r| r.get(0))?.collect()
        })
    }

    pub fn tries(&self, run_pk: i64) -> Result<Vec<TryRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TRY_COLS} FROM task_tries WHERE run = ?1 ORDER BY start_time, id"
            ))?;
            s.query_map([run_pk], try_row)?.collect()
        })
    }

    pub fn tries_of(&self, keys: &[(i64, u32)]) -> Result<Vec<TryRow>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {TRY_COLS} FROM task_tries WHERE ti = ?1 AND try_number = ?2"
            ))?;
            let mut out = Vec::with_capacity(keys.len());
            for (ti, n) in keys {
                if let Some(t) = st.query_row(params![ti, n], try_row).optional()? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    pub fn record_dbt_nodes(
        &self,
        run: i64,
        ti: i64,
        try_number: u32,
        task_id: &str,
        nodes: &[DbtNode],
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM dbt_nodes WHERE ti = ?1 AND try_number = ?2", params![ti, try_number])?;
            let mut s = tx.prepare_cached(
                "INSERT INTO dbt_nodes (run, ti, try_number, task_id, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for n in nodes {
                s.execute(params![
                    run, ti, try_number, task_id, n.unique_id, n.resource_type, n.status, n.execution_time, n.failures, n.rows_affected, n.message,
                    n.invocation_id
                ])?;
            }
            Ok(())
        })
    }

    pub fn dbt_nodes(&self, run: i64) -> Result<Vec<(String, u32, DbtNode)>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT task_id, try_number, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id
                 FROM dbt_nodes WHERE run = ?1 ORDER BY task_id, try_number, id",
            )?;
            s.query_map([run], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    DbtNode {
                        unique_id: r.get(2)?,
                        resource_type: r.get(3)?,
                        status: r.get(4)?,
                        execution_time: r.get(5)?,
                        failures: r.get(6)?,
                        rows_affected: r.get(7)?,
                        message: r.get(8)?,
                        invocation_id: r.get(9)?,
                    },
                ))
            })?
            .collect()
        })
    }
}

impl SqliteStore {
    pub fn append_log(&self, ti: i64, try_number: u32, offset: i64, data: &[u8]) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO log_chunks (ti, try_number, \"offset\", data) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![ti, try_number, offset, data],
            )
        })?;
        Ok(())
    }

    pub fn read_log(&self, ti: i64, try_number: u32, offset: i64, max: usize) -> Result<Vec<u8>> {
        let chunks: Vec<(i64, Vec<u8>)> = self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT \"offset\", data FROM log_chunks WHERE ti = ?1 AND try_number = ?2 AND \"offset\" + length(data) > ?3
                 ORDER BY \"offset\" LIMIT 64",
            )?;
            s.query_map(params![ti, try_number, offset], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })?;
        Ok(crate::rows::join_chunks(chunks, offset, max))
    }
}

/// A try's outcome, fenced, inside the caller's transaction.
fn finish_in(tx: &rusqlite::Transaction<'_>, f: &FinishTry) -> rusqlite::Result<bool> {
    let n = tx.prepare_cached("UPDATE task_instances SET state = ?4, next_try_at = ?5, lease_until = NULL, updated_at = ?6, max_tries = max_tries + ?7,
             interruptions = CASE WHEN ?8 THEN interruptions + 1 ELSE 0 END
         WHERE id = ?1 AND try_number = ?2 AND (?3 IS NULL OR owner = ?3) AND state = 'RUNNING'")?.execute(params![f.ti_pk, f.try_number, f.owner, f.ti_state.as_str(), f.next_try_at, f.end, f.extra_tries, f.interrupted],
    )?;
    if n == 0 {
        return Ok(false);
    }
    tx.prepare_cached("UPDATE task_tries SET state = ?3, end_time = ?4, duration_ms = (?4 - start_time) / 1000, exit_code = ?5, signal = ?6,
                error = ?7, metrics = ?8, rows_loaded = ?9, log_path = COALESCE(log_path, ?10), pid = COALESCE(pid, ?11), warning = ?12
         WHERE ti = ?1 AND try_number = ?2")?.execute(params![f.ti_pk, f.try_number, f.try_state.as_str(), f.end, f.exit_code, f.signal, f.error, f.metrics, f.rows_loaded, f.log_path, f.pid, f.warning],
    )?;
    // The try row holds start, end and outcome; the event log adds the task's next
    // state only when it is not simply the try's success.
    if f.ti_state != TaskState::Success {
        let (run, task): (i64, String) = tx
            .prepare_cached("SELECT run, task_id FROM task_instances WHERE id = ?1")?
            .query_row([f.ti_pk], |r| Ok((r.get(0)?, r.get(1)?)))?;
        event(
            tx,
            f.end,
            run,
            Some(&task),
            Some(f.try_number),
            f.ti_state.as_str(),
            f.error.as_deref(),
        )?;
    }
    Ok(true)
}
