//! Reads for the web UI, the API and metrics: pages of history, bounded by their limits
//! and served from indexes, so their cost follows the page, not the history.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::{RUN_COLS, SqliteStore, TI_COLS, run_row, ti_row};
use crate::{DeadlineRow, EventRecord, Pruned, Result, RunFilter, RunRow, TiRow};

impl SqliteStore {
    pub fn runs_page(
        &self,
        pipeline: &str,
        before: Option<i64>,
        limit: u32,
        filter: RunFilter,
    ) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 AND data_interval_start < ?2
                   AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR \"trigger\" = ?5)
                 ORDER BY data_interval_start DESC LIMIT ?3"
            ))?;
            let state = filter.state.map(|s| s.as_str());
            let trigger = filter.trigger.map(|t| t.as_str());
            s.query_map(
                params![pipeline, before.unwrap_or(i64::MAX), limit, state, trigger],
                run_row,
            )?
            .collect()
        })
    }

    pub fn runs_between(&self, pipeline: &str, from: i64, to: i64) -> Result<Vec<RunRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 AND data_interval_start >= ?2 AND data_interval_start < ?3
                 ORDER BY data_interval_start"
            ))?;
            s.query_map(params![pipeline, from, to], run_row)?.collect()
        })
    }

    /// SQLite has no cheap way to tell changed rows: every row, and no cursor.
    pub fn task_instances_delta(
        &self,
        whole: &[i64],
        since: &[i64],
        _cursor: Option<i64>,
    ) -> Result<(Vec<TiRow>, Option<i64>)> {
        let all: Vec<i64> = whole.iter().chain(since).copied().collect();
        Ok((self.task_instances_of(&all)?, None))
    }

    pub fn task_instances_of(&self, run_pks: &[i64]) -> Result<Vec<TiRow>> {
        if run_pks.is_empty() {
            return Ok(vec![]);
        }
        self.read(|c| {
            let list = run_pks
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut s = c.prepare(&format!(
                "SELECT {TI_COLS} FROM task_instances WHERE run IN ({list})"
            ))?;
            s.query_map([], ti_row)?.collect()
        })
    }

    pub fn last_runs(&self, pipeline: &str) -> Result<(Option<RunRow>, Option<RunRow>)> {
        self.read(|c| {
            let last = c
                .query_row(
                    &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 ORDER BY data_interval_start DESC LIMIT 1"),
                    [pipeline],
                    run_row,
                )
                .optional()?;
            let finished = c
                .query_row(
                    &format!("SELECT {RUN_COLS} FROM pipeline_runs WHERE pipeline = ?1 AND status IN ('SUCCESS', 'FAILED') ORDER BY data_interval_start DESC LIMIT 1"),
                    [pipeline],
                    run_row,
                )
                .optional()?;
            Ok((last, finished))
        })
    }

    pub fn recent_durations(
        &self,
        pipeline: &str,
        before: i64,
        per_task: u32,
    ) -> Result<HashMap<String, Vec<i64>>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT task_id, duration_ms FROM (
                     SELECT t.task_id, t.duration_ms,
                            ROW_NUMBER() OVER (PARTITION BY t.task_id ORDER BY r.data_interval_start DESC) AS n
                     FROM task_tries t JOIN pipeline_runs r ON r.id = t.run
                     WHERE r.pipeline = ?1 AND r.data_interval_start < ?2 AND t.state = 'SUCCESS' AND t.duration_ms IS NOT NULL
                 ) WHERE n <= ?3",
            )?;
            let mut out: HashMap<String, Vec<i64>> = HashMap::new();
            let mut rows = s.query(params![pipeline, before, per_task])?;
            while let Some(r) = rows.next()? {
                out.entry(r.get(0)?).or_default().push(r.get(1)?);
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
            let old: Option<String> = tx.query_row("SELECT deadline_state FROM pipeline_runs WHERE id = ?1", [run_pk], |r| r.get(0))?;
            tx.execute(
                "UPDATE pipeline_runs SET deadline_at = ?2, deadline_state = ?3, forecast_at = ?4 WHERE id = ?1",
                params![run_pk, deadline_at, state, forecast_at],
            )?;
            Ok(old.as_deref() != Some(state))
        })
    }

    pub fn deadline(&self, run_pk: i64) -> Result<DeadlineRow> {
        self.read(|c| {
            c.query_row(
                "SELECT deadline_at, deadline_state, forecast_at FROM pipeline_runs WHERE id = ?1",
                [run_pk],
                |r| {
                    Ok(DeadlineRow {
                        deadline_at: r.get(0)?,
                        state: r.get(1)?,
                        forecast_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
        })
    }

    pub fn deadlines_of(&self, run_pks: &[i64]) -> Result<HashMap<i64, DeadlineRow>> {
        if run_pks.is_empty() {
            return Ok(HashMap::new());
        }
        self.read(|c| {
            let list = run_pks.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let mut s = c.prepare(&format!(
                "SELECT id, deadline_at, deadline_state, forecast_at FROM pipeline_runs WHERE id IN ({list})"
            ))?;
            s.query_map([], |r| {
                Ok((r.get(0)?, DeadlineRow { deadline_at: r.get(1)?, state: r.get(2)?, forecast_at: r.get(3)? }))
            })?
            .collect()
        })
    }

    pub fn live_task_counts(&self) -> Result<Vec<(String, String, i64)>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT pipeline, state, COUNT(*) FROM task_instances WHERE state IN ('QUEUED', 'RUNNING', 'UP_FOR_RETRY')
                 GROUP BY pipeline, state ORDER BY pipeline, state",
            )?;
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
        })
    }

    pub fn prune(&self, cutoff: i64, batch: u32) -> Result<Pruned> {
        let mut out = Pruned::default();
        loop {
            let (runs, tries, logs) = self.write(|tx| {
                let pks: Vec<i64> = {
                    let mut s = tx.prepare_cached(
                        "SELECT id FROM pipeline_runs WHERE data_interval_end < ?1 AND status IN ('SUCCESS', 'FAILED', 'CANCELLED') LIMIT ?2",
                    )?;
                    s.query_map(params![cutoff, batch], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
                };
                if pks.is_empty() {
                    return Ok((0, 0, vec![]));
                }
                let list = pks.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                let logs: Vec<String> = {
                    let mut s = tx.prepare(&format!("SELECT log_path FROM task_tries WHERE run IN ({list}) AND log_path IS NOT NULL"))?;
                    s.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
                };
                tx.execute(&format!("DELETE FROM dbt_nodes WHERE run IN ({list})"), [])?;
                tx.execute(&format!("DELETE FROM log_chunks WHERE ti IN (SELECT id FROM task_instances WHERE run IN ({list}))"), [])?;
                tx.execute(&format!("DELETE FROM task_events WHERE run IN ({list})"), [])?;
                let tries = tx.execute(&format!("DELETE FROM task_tries WHERE run IN ({list})"), [])?;
                tx.execute(&format!("DELETE FROM task_instances WHERE run IN ({list})"), [])?;
                tx.execute(
                    &format!(
                        "DELETE FROM alerts WHERE status != 'pending' AND (pipeline, run_id) IN (SELECT pipeline, run_id FROM pipeline_runs WHERE id IN ({list}))"
                    ),
                    [],
                )?;
                let runs = tx.execute(&format!("DELETE FROM pipeline_runs WHERE id IN ({list})"), [])?;
                Ok((runs as u64, tries as u64, logs))
            })?;
            out.runs += runs;
            out.tries += tries;
            out.log_paths.extend(logs);
            if runs < u64::from(batch) {
                return Ok(out);
            }
        }
    }
}

impl SqliteStore {
    pub fn events(&self, run_pk: i64) -> Result<Vec<EventRecord>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT at, task_id, try_number, state, detail FROM task_events WHERE run = ?1 ORDER BY at, id",
            )?;
            s.query_map([run_pk], |r| {
                Ok(EventRecord { at: r.get(0)?, task_id: r.get(1)?, try_number: r.get(2)?, state: r.get(3)?, detail: r.get(4)? })
            })?
            .collect()
        })
    }
}
