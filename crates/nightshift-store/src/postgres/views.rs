//! Reads for the web UI, the API and metrics, bounded by their limits and served from
//! indexes; deadlines; retention; the event history.

use std::collections::HashMap;

use super::{PgStore, RUN_COLS, TI_COLS, rows, run_row, ti_row, ti_row_at, u32_of};
use crate::{DeadlineRow, EventRecord, Pruned, Result, RunFilter, RunRow, TiRow};

fn deadline_row(
    r: &postgres::Row,
    from: usize,
) -> std::result::Result<DeadlineRow, postgres::Error> {
    Ok(DeadlineRow {
        deadline_at: r.try_get(from)?,
        state: r.try_get(from + 1)?,
        forecast_at: r.try_get(from + 2)?,
    })
}

impl PgStore {
    pub fn runs_page(
        &self,
        pipeline: &str,
        before: Option<i64>,
        limit: u32,
        filter: RunFilter,
    ) -> Result<Vec<RunRow>> {
        let state = filter.state.map(|s| s.as_str());
        let trigger = filter.trigger.map(|t| t.as_str());
        self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND data_interval_start < $2
                           AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR \"trigger\" = $5)
                         ORDER BY data_interval_start DESC LIMIT $3"
                    ),
                    &[&pipeline, &before.unwrap_or(i64::MAX), &i64::from(limit), &state, &trigger],
                )?,
                run_row,
            )
        })
    }

    pub fn runs_between(&self, pipeline: &str, from: i64, to: i64) -> Result<Vec<RunRow>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND data_interval_start >= $2 AND data_interval_start < $3
                         ORDER BY data_interval_start"
                    ),
                    &[&pipeline, &from, &to],
                )?,
                run_row,
            )
        })
    }

    /// The cursor is the oldest transaction the read's snapshot did not see finished
    /// (`txid_snapshot_xmin`): every row written by a transaction the read did not see has
    /// an `xmin` at or after it. Row `xmin`s are 32-bit and wrap, so "at or after" is
    /// compared as ages: `age(x)` is how many transactions ago `x` began, counted from this
    /// statement's own (the same for every row), and a row at or after the cursor is no
    /// older than the cursor. `age` is integer arithmetic, where the `xmin` as text then a
    /// number cost a conversion per row; a frozen row counts as infinitely old.
    pub fn task_instances_delta(
        &self,
        whole: &[i64],
        since: &[i64],
        cursor: Option<i64>,
    ) -> Result<(Vec<TiRow>, Option<i64>)> {
        let (whole, since): (Vec<i64>, Vec<i64>) = match cursor {
            Some(_) => (whole.to_vec(), since.to_vec()),
            None => (whole.iter().chain(since).copied().collect(), vec![]),
        };
        if whole.is_empty() && since.is_empty() {
            return Ok((vec![], cursor));
        }
        let low = cursor.unwrap_or(0) & 0xFFFF_FFFF;
        self.read(|c| {
            // One row even when nothing matched, for the cursor.
            let found = c.query(
                &format!(
                    "WITH s AS (SELECT txid_snapshot_xmin(txid_current_snapshot()) AS x)
                     SELECT t.id IS NOT NULL, s.x, t.* FROM s LEFT JOIN (
                         SELECT {TI_COLS} FROM task_instances
                         WHERE run = ANY($1)
                            OR (run = ANY($2) AND age(xmin) <= (SELECT age($3::BIGINT::TEXT::XID)))
                     ) t ON TRUE"
                ),
                &[&whole, &since, &low],
            )?;
            let mut next = cursor;
            let mut tis = Vec::with_capacity(found.len());
            for r in &found {
                next = Some(r.try_get(1)?);
                if r.try_get(0)? {
                    tis.push(ti_row_at(r, 2)?);
                }
            }
            Ok((tis, next))
        })
    }

    pub fn task_instances_of(&self, run_pks: &[i64]) -> Result<Vec<TiRow>> {
        if run_pks.is_empty() {
            return Ok(vec![]);
        }
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {TI_COLS} FROM task_instances WHERE run = ANY($1)"),
                    &[&run_pks],
                )?,
                ti_row,
            )
        })
    }

    pub fn last_runs(&self, pipeline: &str) -> Result<(Option<RunRow>, Option<RunRow>)> {
        self.read(|c| {
            let last = c.query_opt(
                &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 ORDER BY data_interval_start DESC LIMIT 1"),
                &[&pipeline],
            )?;
            let finished = c.query_opt(
                &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = $1 AND status IN ('SUCCESS', 'FAILED') ORDER BY data_interval_start DESC LIMIT 1"),
                &[&pipeline],
            )?;
            Ok((last.as_ref().map(run_row).transpose()?, finished.as_ref().map(run_row).transpose()?))
        })
    }

    pub fn recent_durations(
        &self,
        pipeline: &str,
        before: i64,
        per_task: u32,
    ) -> Result<HashMap<String, Vec<i64>>> {
        self.read(|c| {
            let mut out: HashMap<String, Vec<i64>> = HashMap::new();
            for r in c.query(
                "SELECT task_id, duration_ms FROM (
                     SELECT t.task_id, t.duration_ms,
                            ROW_NUMBER() OVER (PARTITION BY t.task_id ORDER BY r.data_interval_start DESC) AS n
                     FROM task_tries t JOIN pipeline_runs r ON r.id = t.run
                     WHERE r.pipeline = $1 AND r.data_interval_start < $2 AND t.state = 'SUCCESS' AND t.duration_ms IS NOT NULL
                 ) AS recent WHERE n <= $3",
                &[&pipeline, &before, &i64::from(per_task)],
            )? {
                out.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
            }
            Ok(out)
        })
    }

    pub fn set_deadline(
        &self,
        run_pk: i64,
        deadline_at: i64,
        state: &str,
        forecast_at: Option<i64>,
    ) -> Result<bool> {
        self.write(|tx| {
            let old: Option<String> = tx
                .query_one("SELECT deadline_state FROM pipeline_runs WHERE id = $1 FOR UPDATE", &[&run_pk])?
                .try_get(0)?;
            tx.execute(
                "UPDATE pipeline_runs SET deadline_at = $2, deadline_state = $3, forecast_at = $4 WHERE id = $1",
                &[&run_pk, &deadline_at, &state, &forecast_at],
            )?;
            Ok(old.as_deref() != Some(state))
        })
    }

    pub fn deadline(&self, run_pk: i64) -> Result<DeadlineRow> {
        self.read(|c| {
            Ok(
                match c.query_opt("SELECT deadline_at, deadline_state, forecast_at FROM pipeline_runs WHERE id = $1", &[&run_pk])? {
                    Some(r) => deadline_row(&r, 0)?,
                    None => DeadlineRow::default(),
                },
            )
        })
    }

    pub fn deadlines_of(&self, run_pks: &[i64]) -> Result<HashMap<i64, DeadlineRow>> {
        if run_pks.is_empty() {
            return Ok(HashMap::new());
        }
        self.read(|c| {
            c.query(
                "SELECT id, deadline_at, deadline_state, forecast_at FROM pipeline_runs WHERE id = ANY($1)",
                &[&run_pks],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, deadline_row(r, 1)?)))
            .collect()
        })
    }

    pub fn live_task_counts(&self) -> Result<Vec<(String, String, i64)>> {
        self.read(|c| {
            c.query(
                "SELECT pipeline, state, COUNT(*) FROM task_instances WHERE state IN ('QUEUED', 'RUNNING', 'UP_FOR_RETRY')
                 GROUP BY pipeline, state ORDER BY pipeline, state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
        })
    }

    pub fn prune(&self, cutoff: i64, batch: u32) -> Result<Pruned> {
        let mut out = Pruned::default();
        loop {
            let (runs, tries, logs) = self.write(|tx| {
                let pks: Vec<i64> = tx
                    .query(
                        "SELECT id FROM pipeline_runs WHERE data_interval_end < $1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')
                         LIMIT $2 FOR UPDATE SKIP LOCKED",
                        &[&cutoff, &i64::from(batch)],
                    )?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
                if pks.is_empty() {
                    return Ok((0, 0, vec![]));
                }
                let logs: Vec<String> = tx
                    .query("SELECT log_path FROM task_tries WHERE run = ANY($1) AND log_path IS NOT NULL", &[&pks])?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
                tx.execute("DELETE FROM dbt_nodes WHERE run = ANY($1)", &[&pks])?;
                tx.execute(
                    "DELETE FROM log_chunks WHERE ti IN (SELECT id FROM task_instances WHERE run = ANY($1))",
                    &[&pks],
                )?;
                tx.execute("DELETE FROM task_events WHERE run = ANY($1)", &[&pks])?;
                let tries = tx.execute("DELETE FROM task_tries WHERE run = ANY($1)", &[&pks])?;
                tx.execute("DELETE FROM task_instances WHERE run = ANY($1)", &[&pks])?;
                tx.execute(
                    "DELETE FROM alerts WHERE status != 'pending' AND (pipeline, run_id) IN (SELECT pipeline, run_id FROM pipeline_runs WHERE id = ANY($1))",
                    &[&pks],
                )?;
                let runs = tx.execute("DELETE FROM pipeline_runs WHERE id = ANY($1)", &[&pks])?;
                Ok((runs, tries, logs))
            })?;
            out.runs += runs;
            out.tries += tries;
            out.log_paths.extend(logs);
            if runs < u64::from(batch) {
                return Ok(out);
            }
        }
    }

    pub fn events(&self, run_pk: i64) -> Result<Vec<EventRecord>> {
        self.read(|c| {
            c.query(
                "SELECT at, task_id, try_number, state, detail FROM task_events WHERE run = $1 ORDER BY at, id",
                &[&run_pk],
            )?
            .iter()
            .map(|r| {
                Ok(EventRecord {
                    at: r.try_get(0)?,
                    task_id: r.try_get(1)?,
                    try_number: r.try_get::<_, Option<i64>>(2)?.map(u32_of),
                    state: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
        })
    }
}
