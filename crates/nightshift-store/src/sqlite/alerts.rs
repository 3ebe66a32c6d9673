//! The alert outbox: alerts are written here before they are sent, so none is sent twice
//! and none is lost when a process dies between deciding and delivering.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::{AlertRow, AuditRow, NewAlert, Result};

const ALERT_COLS: &str = "id, event_key, channel, kind, pipeline, run_id, task_id, try_number, payload, status, attempts, error, created_at, sent_at";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        event_key: r.get(1)?,
        channel: r.get(2)?,
        kind: r.get(3)?,
        pipeline: r.get(4)?,
        run_id: r.get(5)?,
        task_id: r.get(6)?,
        try_number: r.get(7)?,
        payload: r.get(8)?,
        status: r.get(9)?,
        attempts: r.get(10)?,
        error: r.get(11)?,
        created_at: r.get(12)?,
        sent_at: r.get(13)?,
    })
}

impl SqliteStore {
    pub fn record_audit(&self, e: &AuditRow) -> Result<i64> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit_log (at, actor, action, target, client, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.at, e.actor, e.action, e.target, e.client, e.outcome],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id, at, actor, action, target, client, outcome FROM audit_log
                 WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            s.query_map(params![before, limit], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    client: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })?
            .collect()
        })
    }

    pub fn enqueue_alert(&self, a: &NewAlert<'_>) -> Result<Option<i64>> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO alerts (event_key, channel, kind, pipeline, run_id, task_id, try_number, payload, status, created_at, claimed_by, claimed_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11) ON CONFLICT DO NOTHING",
                params![a.event_key, a.channel, a.kind, a.pipeline, a.run_id, a.task_id, a.try_number, a.payload, a.now, a.owner, a.claim_until],
            )?;
            Ok((n == 1).then(|| tx.last_insert_rowid()))
        })
    }

    pub fn claim_stale_alerts(&self, owner: &str, now: i64, claim_until: i64) -> Result<Vec<i64>> {
        self.write(|tx| {
            let mut s = tx.prepare_cached(
                "UPDATE alerts SET claimed_by = ?1, claimed_until = ?3
                 WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until < ?2) RETURNING id",
            )?;
            s.query_map(params![owner, now, claim_until], |r| r.get(0))?.collect()
        })
    }

    pub fn alert(&self, id: i64) -> Result<Option<AlertRow>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1"),
                [id],
                alert_row,
            )
            .optional()
        })
    }

    pub fn finish_alert(
        &self,
        id: i64,
        sent: bool,
        attempts: u32,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE alerts SET status = ?2, attempts = ?3, error = ?4, sent_at = ?5,
                     claimed_by = NULL, claimed_until = NULL
                 WHERE id = ?1",
                params![
                    id,
                    if sent { "sent" } else { "failed" },
                    attempts,
                    error,
                    now
                ],
            )
        })?;
        Ok(())
    }

    pub fn alerts(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<AlertRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {ALERT_COLS} FROM alerts WHERE (?1 IS NULL OR pipeline = ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            s.query_map(params![pipeline, limit], alert_row)?.collect()
        })
    }

    pub fn open_incident(&self, channel: &str, pipeline: &str) -> Result<bool> {
        self.read(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM alerts WHERE channel = ?1 AND pipeline = ?2 AND status = 'sent'
                     AND kind IN ('task_failed', 'run_failed')
                     AND id > COALESCE((SELECT MAX(id) FROM alerts WHERE channel = ?1 AND pipeline = ?2 AND kind = 'recovered'), 0))",
                params![channel, pipeline],
                |r| r.get(0),
            )
        })
    }

    pub fn consecutive_failed_runs(&self, pipeline: &str, up_to: i64) -> Result<u32> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT status FROM pipeline_runs WHERE pipeline = ?1 AND data_interval_start <= ?2
                   AND status IN ('SUCCESS', 'FAILED') ORDER BY data_interval_start DESC LIMIT 1000",
            )?;
            let mut n = 0;
            let mut rows = s.query(params![pipeline, up_to])?;
            while let Some(r) = rows.next()? {
                let status: String = r.get(0)?;
                if status != "FAILED" {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }
}
