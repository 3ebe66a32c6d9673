//! The scheduler lease (one scheduler per store, whichever host) and pipeline flags.

use super::PgStore;
use crate::{LeaseHolder, Result};

const HOLDER: &str = "SELECT owner, host, pid, heartbeat_at, expires_at FROM scheduler_lease WHERE name = 'scheduler'";

fn holder(r: &postgres::Row) -> std::result::Result<LeaseHolder, postgres::Error> {
    Ok(LeaseHolder {
        owner: r.try_get(0)?,
        host: r.try_get(1)?,
        pid: r.try_get(2)?,
        heartbeat_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
    })
}

impl PgStore {
    pub fn acquire_scheduler_lease(
        &self,
        owner: &str,
        host: &str,
        pid: u32,
        now: i64,
        ttl_us: i64,
    ) -> Result<Option<LeaseHolder>> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO scheduler_lease (name, owner, host, pid, heartbeat_at, expires_at) VALUES ('scheduler', $1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
                     heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
                 WHERE scheduler_lease.expires_at < $4 OR scheduler_lease.owner = excluded.owner",
                &[&owner, &host, &i64::from(pid), &now, &(now + ttl_us)],
            )?;
            let h = holder(&tx.query_one(HOLDER, &[])?)?;
            Ok((h.owner != owner).then_some(h))
        })
    }

    pub fn scheduler_lease(&self) -> Result<Option<LeaseHolder>> {
        self.read(|c| Ok(c.query_opt(HOLDER, &[])?.as_ref().map(holder).transpose()?))
    }

    pub fn break_scheduler_lease(&self, dead_owner: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = $1",
                &[&dead_owner],
            )? == 1)
        })
    }

    pub fn renew_scheduler_lease(&self, owner: &str, now: i64, ttl_us: i64) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE scheduler_lease SET heartbeat_at = $2, expires_at = $3 WHERE name = 'scheduler' AND owner = $1",
                &[&owner, &now, &(now + ttl_us)],
            )? == 1)
        })
    }

    pub fn release_scheduler_lease(&self, owner: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = $1",
                &[&owner],
            )?;
            Ok(())
        })
    }

    pub fn set_paused(&self, pipeline: &str, paused: bool, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pipeline_flags (pipeline, paused, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                &[&pipeline, &paused, &now],
            )?;
            Ok(())
        })
    }

    pub fn paused_pipelines(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.query("SELECT pipeline FROM pipeline_flags WHERE paused", &[])?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
        })
    }
}

impl PgStore {
    pub fn beat(&self, e: &crate::EngineRow) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO engines (owner, host, pid, role, pools, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (owner) DO UPDATE SET role = excluded.role, pools = excluded.pools, heartbeat_at = excluded.heartbeat_at",
                &[&e.owner, &e.host, &e.pid, &e.role, &e.pools, &e.started_at, &e.heartbeat_at],
            )?;
            Ok(())
        })
    }

    pub fn engines(&self) -> Result<Vec<crate::EngineRow>> {
        self.read(|c| {
            c.query(
                "SELECT e.owner, e.host, e.pid, e.role, e.pools, e.started_at, e.heartbeat_at,
                        (SELECT COUNT(*) FROM task_instances t WHERE t.state = 'RUNNING' AND t.owner = e.owner)
                 FROM engines e ORDER BY e.heartbeat_at DESC, e.owner",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(crate::EngineRow {
                    owner: r.try_get(0)?,
                    host: r.try_get(1)?,
                    pid: r.try_get(2)?,
                    role: r.try_get(3)?,
                    pools: r.try_get(4)?,
                    started_at: r.try_get(5)?,
                    heartbeat_at: r.try_get(6)?,
                    running: r.try_get(7)?,
                })
            })
            .collect()
        })
    }

    pub fn forget_engine(&self, owner: &str, stale_before: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM engines WHERE owner = $1 OR heartbeat_at < $2",
                &[&owner, &stale_before],
            )?;
            Ok(())
        })
    }
}
