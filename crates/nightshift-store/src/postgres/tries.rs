//! Task instances, claims and tries: the writes fenced on (task instance, try, owner).

use std::collections::{BTreeSet, HashMap, HashSet};

use nightshift_core::{RunState, TaskState};

use super::conn::Params;
use super::listen::work_channel;
use super::{PgStore, TI_COLS, TRY_COLS, event, lock_names, rows, ti_row, try_row, u32_of};
use crate::{Claim, DbtNode, FinishTry, Result, TiRow, TryRow};

/// A try's outcome in one statement: the task instance's update is the fence, and the try
/// row and the event are written only when it held. One round trip, atomic on its own.
const FINISH: &str = "WITH u AS (
        UPDATE task_instances SET state = $4, next_try_at = $5, lease_until = NULL, updated_at = $6, max_tries = max_tries + $7,
            interruptions = CASE WHEN $8 THEN interruptions + 1 ELSE 0 END
        WHERE id = $1 AND try_number = $2 AND ($3::TEXT IS NULL OR owner = $3) AND state = 'RUNNING'
        RETURNING id, run, task_id),
    t AS (
        UPDATE task_tries SET state = $9, end_time = $6, duration_ms = ($6 - start_time) / 1000, exit_code = $10, signal = $11,
            error = $12, metrics = $13, rows_loaded = $14, log_path = COALESCE(log_path, $15), pid = COALESCE(pid, $16), warning = $17
        WHERE ti = $1 AND try_number = $2 AND EXISTS (SELECT 1 FROM u)
        RETURNING 1),
    e AS (
        INSERT INTO task_events (at, run, task_id, try_number, state, detail)
        SELECT $6, u.run, u.task_id, $2, $4, $12 FROM u WHERE $4 <> 'SUCCESS'
        RETURNING 1)
    SELECT COUNT(*) FROM u";

/// [`FINISH`] for a batch of outcomes of distinct task instances, one element of each array
/// per outcome; returns the task instances whose fence held.
const FINISH_MANY: &str = "WITH f AS (
        SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[],
            $7::BIGINT[], $8::BOOL[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[], $12::TEXT[], $13::TEXT[],
            $14::BIGINT[], $15::TEXT[], $16::BIGINT[], $17::TEXT[])
        AS f(ti, try_number, owner, ti_state, next_try_at, end_at, extra, interrupted, try_state,
            exit_code, signal, error, metrics, rows_loaded, log_path, pid, warning)),
    u AS (
        UPDATE task_instances t SET state = f.ti_state, next_try_at = f.next_try_at, lease_until = NULL,
            updated_at = f.end_at, max_tries = t.max_tries + f.extra,
            interruptions = CASE WHEN f.interrupted THEN t.interruptions + 1 ELSE 0 END
        FROM f
        WHERE t.id = f.ti AND t.try_number = f.try_number AND (f.owner IS NULL OR t.owner = f.owner)
            AND t.state = 'RUNNING'
        RETURNING t.id, t.run, t.task_id),
    done AS (SELECT f.*, u.run, u.task_id FROM f JOIN u ON u.id = f.ti),
    t AS (
        UPDATE task_tries r SET state = d.try_state, end_time = d.end_at, duration_ms = (d.end_at - r.start_time) / 1000,
            exit_code = d.exit_code, signal = d.signal, error = d.error, metrics = d.metrics,
            rows_loaded = d.rows_loaded, log_path = COALESCE(r.log_path, d.log_path), pid = COALESCE(r.pid, d.pid),
            warning = d.warning
        FROM done d
        WHERE r.ti = d.ti AND r.try_number = d.try_number
        RETURNING 1),
    e AS (
        INSERT INTO task_events (at, run, task_id, try_number, state, detail)
        SELECT end_at, run, task_id, try_number, ti_state, error FROM done WHERE ti_state <> 'SUCCESS'
        RETURNING 1)
    SELECT id FROM u";

/// Runs [`FINISH`] for one outcome on a connection or a transaction; true when the fence
/// held.
macro_rules! finish_on {
    ($c:expr, $f:expr) => {{
        let f: &FinishTry = $f;
        let (try_number, extra) = (i64::from(f.try_number), i64::from(f.extra_tries));
        let (exit, signal, pid) = (
            f.exit_code.map(i64::from),
            f.signal.map(i64::from),
            f.pid.map(i64::from),
        );
        let params: Params<'_> = &[
            &f.ti_pk,
            &try_number,
            &f.owner,
            &f.ti_state.as_str(),
            &f.next_try_at,
            &f.end,
            &extra,
            &f.interrupted,
            &f.try_state.as_str(),
            &exit,
            &signal,
            &f.error,
            &f.metrics,
            &f.rows_loaded,
            &f.log_path,
            &pid,
            &f.warning,
        ];
        $c.query_one(FINISH, params)?.try_get::<_, i64>(0)? == 1
    }};
}

impl PgStore {
    pub fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {TI_COLS} FROM task_instances WHERE run = $1 ORDER BY id"),
                    &[&run_pk],
                )?,
                ti_row,
            )
        })
    }

    pub fn decide_pending(
        &self,
        run_pk: i64,
        decisions: &[(String, TaskState)],
        now: i64,
    ) -> Result<usize> {
        let tasks: Vec<&str> = decisions.iter().map(|(t, _)| t.as_str()).collect();
        let states: Vec<&str> = decisions.iter().map(|(_, s)| s.as_str()).collect();
        self.write(|tx| {
            // Every engine reaches the same decisions from the same states: one decides the
            // run's tasks at a time, the others then find them decided. (Without the lock,
            // two set-wide updates could lock the same rows in different orders.)
            lock_names(tx, BTreeSet::from([format!("run:{run_pk}")]))?;
            // One statement for the whole set: a fan-out decides a thousand tasks at once.
            // Tasks it queued are work for every engine: the same statement notifies them (a
            // statement of its own would add a round trip to every hop of a chain). The
            // notice's CTE runs only when the query reads it, hence its count.
            let n: i64 = tx
                .query_one(
                    concat!(
                        "WITH d AS (SELECT * FROM unnest($2::TEXT[], $3::TEXT[]) AS d(task_id, state)),
                              changed AS (
                                  UPDATE task_instances t SET state = d.state, updated_at = $4
                                  FROM d WHERE t.run = $1 AND t.task_id = d.task_id AND t.state = 'PENDING'
                                  RETURNING t.task_id, t.state),
                              events AS (
                                  INSERT INTO task_events (at, run, task_id, try_number, state, detail)
                                  SELECT $4, $1, task_id, NULL, state, NULL FROM changed),
                              notified AS (
                                  SELECT pg_notify('",
                        work_channel!(),
                        "', '') FROM changed WHERE state = 'QUEUED' LIMIT 1)
                         SELECT (SELECT COUNT(*) FROM changed), (SELECT COUNT(*) FROM notified)"
                    ),
                    &[&run_pk, &tasks, &states, &now],
                )?
                .try_get(0)?;
            Ok(n as usize)
        })
    }

    pub fn claim(&self, c: &Claim<'_>) -> Result<Option<u32>> {
        Ok(self
            .claim_batch(std::slice::from_ref(c), 1)?
            .pop()
            .flatten())
    }

    pub fn claim_batch(&self, claims: &[Claim<'_>], most: usize) -> Result<Vec<Option<u32>>> {
        if claims.is_empty() || most == 0 {
            return Ok(vec![]);
        }
        // One statement, its own transaction: `nightshift_claim` (migration 5) takes the
        // pipelines' and pools' locks, so claimers touching the same limits take turns and
        // each sees the others' committed claims, then locks the free instances (skipping
        // those another claimer holds), counts what runs, and claims in the order given.
        // Without pools, the first `most` free ones in order are all this batch can take, so
        // only they are locked: the rest stay free for the other claimers. A pool may refuse
        // some of those locked, so with pools every given instance is locked and the
        // refused ones' slots go to the next.
        let col = |f: &dyn Fn(&Claim<'_>) -> i64| claims.iter().map(f).collect::<Vec<i64>>();
        let (ids, nows, leases) = (col(&|c| c.ti_pk), col(&|c| c.now), col(&|c| c.lease_until));
        let pipeline_max = col(&|c| i64::from(c.pipeline_limit.1));
        let pool_slots = col(&|c| c.pool.map_or(0, |p| i64::from(p.1)));
        let pipelines: Vec<&str> = claims.iter().map(|c| c.pipeline_limit.0).collect();
        let pools: Vec<Option<&str>> = claims.iter().map(|c| c.pool.map(|p| p.0)).collect();
        let owners: Vec<&str> = claims.iter().map(|c| c.owner).collect();
        let hosts: Vec<&str> = claims.iter().map(|c| c.host).collect();
        let most_i = i64::try_from(most).unwrap_or(i64::MAX);
        let lock_most: Option<i64> = claims.iter().all(|c| c.pool.is_none()).then_some(most_i);
        let numbers: HashMap<i64, u32> = self.read(|c| {
            c.query(
                "SELECT claimed_ti, claimed_try FROM nightshift_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[&ids, &nows, &pipelines, &pipeline_max, &pools, &pool_slots, &owners, &hosts, &leases, &most_i, &lock_most],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, u32_of(r.try_get(1)?))))
            .collect()
        })?;
        Ok(claims
            .iter()
            .map(|c| numbers.get(&c.ti_pk).copied())
            .collect())
    }

    pub fn reschedule(
        &self,
        ti_pk: i64,
        try_number: u32,
        owner: &str,
        started: i64,
        next_poke: i64,
    ) -> Result<Option<i64>> {
        let try_number = i64::from(try_number);
        self.write(|tx| {
            let since = tx.query_opt(
                "UPDATE task_instances SET state = 'QUEUED', try_number = try_number - 1, next_try_at = $4, owner = NULL,
                     pid = NULL, pid_start = NULL, lease_until = NULL, updated_at = $5,
                     waiting_since = COALESCE(waiting_since, $5), pokes = pokes + 1
                 WHERE id = $1 AND try_number = $2 AND owner = $3 AND state = 'RUNNING'
                 RETURNING waiting_since",
                &[&ti_pk, &try_number, &owner, &next_poke, &started],
            )?;
            let Some(row) = since else { return Ok(None) };
            tx.execute("DELETE FROM task_tries WHERE ti = $1 AND try_number = $2", &[&ti_pk, &try_number])?;
            Ok(Some(row.try_get(0)?))
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
        let (try_number, pid) = (i64::from(try_number), i64::from(pid));
        let pid_start = pid_start.map(|p| p as i64);
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE task_instances SET pid = $4, pid_start = $5 WHERE id = $1 AND try_number = $2 AND owner = $3 AND state = 'RUNNING'",
                &[&ti_pk, &try_number, &owner, &pid, &pid_start],
            )?;
            if n == 1 {
                tx.execute(
                    "UPDATE task_tries SET pid = $3, log_path = $4 WHERE ti = $1 AND try_number = $2",
                    &[&ti_pk, &try_number, &pid, &log_path],
                )?;
            }
            Ok(n == 1)
        })
    }

    pub fn finish_try(&self, f: &FinishTry) -> Result<bool> {
        // One statement needs no explicit transaction: no BEGIN and COMMIT round trips.
        self.read(|c| Ok(finish_on!(c, f)))
    }

    /// Several outcomes at once (the outcome writer's batch): one statement over arrays,
    /// fenced row by row exactly as [`FINISH`]. A batch naming a task instance twice takes
    /// one statement per outcome in one transaction, so the second meets the first's write.
    pub fn finish_tries(&self, fs: &[FinishTry]) -> Result<Vec<bool>> {
        if fs.is_empty() {
            return Ok(vec![]);
        }
        let distinct: HashSet<i64> = fs.iter().map(|f| f.ti_pk).collect();
        if distinct.len() < fs.len() {
            return self.write(|tx| fs.iter().map(|f| Ok(finish_on!(tx, f))).collect());
        }
        if let [f] = fs {
            return Ok(vec![self.finish_try(f)?]);
        }
        let col = |g: &dyn Fn(&FinishTry) -> Option<i64>| fs.iter().map(g).collect::<Vec<_>>();
        let text = |g: &dyn Fn(&FinishTry) -> Option<&str>| fs.iter().map(g).collect::<Vec<_>>();
        let ti = col(&|f| Some(f.ti_pk));
        let try_number = col(&|f| Some(i64::from(f.try_number)));
        let owner = text(&|f| f.owner.as_deref());
        let ti_state = text(&|f| Some(f.ti_state.as_str()));
        let next_try_at = col(&|f| f.next_try_at);
        let end = col(&|f| Some(f.end));
        let extra = col(&|f| Some(i64::from(f.extra_tries)));
        let interrupted: Vec<bool> = fs.iter().map(|f| f.interrupted).collect();
        let try_state = text(&|f| Some(f.try_state.as_str()));
        let exit = col(&|f| f.exit_code.map(i64::from));
        let signal = col(&|f| f.signal.map(i64::from));
        let error = text(&|f| f.error.as_deref());
        let metrics = text(&|f| f.metrics.as_deref());
        let rows_loaded = col(&|f| f.rows_loaded);
        let log_path = text(&|f| f.log_path.as_deref());
        let pid = col(&|f| f.pid.map(i64::from));
        let warning = text(&|f| f.warning.as_deref());
        let held: HashSet<i64> = self.read(|c| {
            c.query(
                FINISH_MANY,
                &[
                    &ti,
                    &try_number,
                    &owner,
                    &ti_state,
                    &next_try_at,
                    &end,
                    &extra,
                    &interrupted,
                    &try_state,
                    &exit,
                    &signal,
                    &error,
                    &metrics,
                    &rows_loaded,
                    &log_path,
                    &pid,
                    &warning,
                ],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })?;
        Ok(fs.iter().map(|f| held.contains(&f.ti_pk)).collect())
    }

    pub fn finish_run(&self, pk: i64, state: RunState, now: i64) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE pipeline_runs SET status = $2, end_time = $3,
                    rows_loaded = (SELECT COALESCE(SUM(t.rows_loaded), 0)::BIGINT FROM task_tries t JOIN task_instances i
                                   ON t.ti = i.id AND t.try_number = i.try_number
                                   WHERE i.run = $1 AND i.state = 'SUCCESS')
                 WHERE id = $1 AND status = 'RUNNING'",
                &[&pk, &state.as_str(), &now],
            )?;
            if n == 1 {
                event(tx, now, pk, None, None, state.as_str(), None)?;
            }
            Ok(n == 1)
        })
    }

    pub fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<Vec<(i64, u32)>> {
        self.write(|tx| {
            tx.query(
                "UPDATE task_instances SET lease_until = $2 WHERE owner = $1 AND state = 'RUNNING' RETURNING id, try_number",
                &[&owner, &lease_until],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, u32_of(r.try_get(1)?))))
            .collect()
        })
    }

    pub fn running_task_instances(&self) -> Result<Vec<TiRow>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {TI_COLS} FROM task_instances WHERE state = 'RUNNING'"),
                    &[],
                )?,
                ti_row,
            )
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
            c.query(
                "SELECT t.metrics FROM task_tries t JOIN pipeline_runs r ON r.id = t.run
                 WHERE r.pipeline = $1 AND t.task_id = $2 AND t.state = 'SUCCESS' AND r.data_interval_start < $3
                   AND t.metrics IS NOT NULL
                 ORDER BY r.data_interval_start DESC, t.try_number DESC LIMIT $4",
                &[&pipeline, &task_id, &before, &i64::from(limit)],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    pub fn tries(&self, run_pk: i64) -> Result<Vec<TryRow>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {TRY_COLS} FROM task_tries WHERE run = $1 ORDER BY start_time, id"
                    ),
                    &[&run_pk],
                )?,
                try_row,
            )
        })
    }

    pub fn tries_of(&self, keys: &[(i64, u32)]) -> Result<Vec<TryRow>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let tis: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let numbers: Vec<i64> = keys.iter().map(|k| i64::from(k.1)).collect();
        self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {TRY_COLS} FROM task_tries
                         WHERE (ti, try_number) IN (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]))"
                    ),
                    &[&tis, &numbers],
                )?,
                try_row,
            )
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
        let try_number = i64::from(try_number);
        self.write(|tx| {
            tx.execute("DELETE FROM dbt_nodes WHERE ti = $1 AND try_number = $2", &[&ti, &try_number])?;
            for n in nodes {
                tx.execute(
                    "INSERT INTO dbt_nodes (run, ti, try_number, task_id, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    &[&run, &ti, &try_number, &task_id, &n.unique_id, &n.resource_type, &n.status, &n.execution_time, &n.failures, &n.rows_affected, &n.message, &n.invocation_id],
                )?;
            }
            Ok(())
        })
    }

    pub fn dbt_nodes(&self, run: i64) -> Result<Vec<(String, u32, DbtNode)>> {
        self.read(|c| {
            c.query(
                "SELECT task_id, try_number, unique_id, resource_type, status, execution_time, failures, rows_affected, message, invocation_id
                 FROM dbt_nodes WHERE run = $1 ORDER BY task_id, try_number, id",
                &[&run],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    u32_of(r.try_get(1)?),
                    DbtNode {
                        unique_id: r.try_get(2)?,
                        resource_type: r.try_get(3)?,
                        status: r.try_get(4)?,
                        execution_time: r.try_get(5)?,
                        failures: r.try_get(6)?,
                        rows_affected: r.try_get(7)?,
                        message: r.try_get(8)?,
                        invocation_id: r.try_get(9)?,
                    },
                ))
            })
            .collect()
        })
    }
}

impl PgStore {
    pub fn append_log(&self, ti: i64, try_number: u32, offset: i64, data: &[u8]) -> Result<()> {
        let try_number = i64::from(try_number);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO log_chunks (ti, try_number, \"offset\", data) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&ti, &try_number, &offset, &data],
            )?;
            Ok(())
        })
    }

    pub fn read_log(&self, ti: i64, try_number: u32, offset: i64, max: usize) -> Result<Vec<u8>> {
        let try_number = i64::from(try_number);
        let chunks: Vec<(i64, Vec<u8>)> = self.read(|c| {
            c.query(
                "SELECT \"offset\", data FROM log_chunks WHERE ti = $1 AND try_number = $2 AND \"offset\" + length(data) > $3
                 ORDER BY \"offset\" LIMIT 64",
                &[&ti, &try_number, &offset],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
        })?;
        Ok(crate::rows::join_chunks(chunks, offset, max))
    }
}
