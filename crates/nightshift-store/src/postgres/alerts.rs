//! The alert outbox: written before sending, so no alert goes out twice or is lost.

use super::{PgStore, u32_of};
use crate::{AlertRow, AuditRow, NewAlert, Result};

const ALERT_COLS: &str = "id, event_key, channel, kind, pipeline, run_id, task_id, try_number, payload, status, attempts, error, created_at, sent_at";

fn alert_row(r: &postgres::Row) -> std::result::Result<AlertRow, postgres::Error> {
    Ok(AlertRow {
        id: r.try_get(0)?,
        event_key: r.try_get(1)?,
        channel: r.try_get(2)?,
        kind: r.try_get(3)?,
        pipeline: r.try_get(4)?,
        run_id: r.try_get(5)?,
        task_id: r.try_get(6)?,
        try_number: r.try_get::<_, Option<i64>>(7)?.map(u32_of),
        payload: r.try_get(8)?,
        status: r.try_get(9)?,
        attempts: u32_of(r.try_get(10)?),
        error: r.try_get(11)?,
        created_at: r.try_get(12)?,
        sent_at: r.try_get(13)?,
    })
}

impl PgStore {
    pub fn record_audit(&self, e: &AuditRow) -> Result<i64> {
        self.write(|tx| {
            Ok(tx
                .query_one(
                    "INSERT INTO audit_log (at, actor, action, target, client, outcome) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[&e.at, &e.actor, &e.action, &e.target, &e.client, &e.outcome],
                )?
                .try_get(0)?)
        })
    }

    pub fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        self.read(|c| {
            c.query(
                "SELECT id, at, actor, action, target, client, outcome FROM audit_log
                 WHERE ($1::BIGINT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                &[&before, &i64::from(limit)],
            )?
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    client: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                })
            })
            .collect()
        })
    }

    pub fn enqueue_alert(&self, a: &NewAlert<'_>) -> Result<Option<i64>> {
        self.write(|tx| {
            let row = tx.query_opt(
                "INSERT INTO alerts (event_key, channel, kind, pipeline, run_id, task_id, try_number, payload, status, created_at, claimed_by, claimed_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11) ON CONFLICT DO NOTHING RETURNING id",
                &[&a.event_key, &a.channel, &a.kind, &a.pipeline, &a.run_id, &a.task_id, &a.try_number.map(i64::from), &a.payload, &a.now, &a.owner, &a.claim_until],
            )?;
            Ok(match row {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            })
        })
    }

    pub fn claim_stale_alerts(&self, owner: &str, now: i64, claim_until: i64) -> Result<Vec<i64>> {
        self.write(|tx| {
            tx.query(
                "UPDATE alerts SET claimed_by = $1, claimed_until = $3
                 WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until < $2) RETURNING id",
                &[&owner, &now, &claim_until],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    pub fn alert(&self, id: i64) -> Result<Option<AlertRow>> {
        self.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {ALERT_COLS} FROM alerts WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(alert_row)
            .transpose()?)
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
                "UPDATE alerts SET status = $2, attempts = $3, error = $4, sent_at = $5, claimed_by = NULL, claimed_until = NULL WHERE id = $1",
                &[&id, &if sent { "sent" } else { "failed" }, &i64::from(attempts), &error, &now],
            )?;
            Ok(())
        })
    }

    pub fn alerts(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<AlertRow>> {
        self.read(|c| {
            c.query(
                &format!("SELECT {ALERT_COLS} FROM alerts WHERE ($1::TEXT IS NULL OR pipeline = $1) ORDER BY id DESC LIMIT $2"),
                &[&pipeline, &i64::from(limit)],
            )?
            .iter()
            .map(|r| Ok(alert_row(r)?))
            .collect()
        })
    }

    pub fn open_incident(&self, channel: &str, pipeline: &str) -> Result<bool> {
        self.read(|c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM alerts WHERE channel = $1 AND pipeline = $2 AND status = 'sent'
                     AND kind IN ('task_failed', 'run_failed')
                     AND id > COALESCE((SELECT MAX(id) FROM alerts WHERE channel = $1 AND pipeline = $2 AND kind = 'recovered'), 0))",
                &[&channel, &pipeline],
            )?
            .try_get(0)?)
        })
    }

    pub fn consecutive_failed_runs(&self, pipeline: &str, up_to: i64) -> Result<u32> {
        self.read(|c| {
            let mut n = 0;
            for r in c.query(
                "SELECT status FROM pipeline_runs WHERE pipeline = $1 AND data_interval_start <= $2
                   AND status IN ('SUCCESS', 'FAILED') ORDER BY data_interval_start DESC LIMIT 1000",
                &[&pipeline, &up_to],
            )? {
                let status: String = r.try_get(0)?;
                if status != "FAILED" {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }
}
