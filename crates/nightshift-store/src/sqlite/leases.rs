//! The scheduler lease (one scheduler per store) and pipeline flags (paused).

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::{LeaseHolder, Result};

impl SqliteStore {
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
                "INSERT INTO scheduler_lease (name, owner, host, pid, heartbeat_at, expires_at) VALUES ('scheduler', ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
                     heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
                 WHERE scheduler_lease.expires_at < ?4 OR scheduler_lease.owner = excluded.owner",
                params![owner, host, pid, now, now + ttl_us],
            )?;
            let holder = tx.query_row(
                "SELECT owner, host, pid, heartbeat_at, expires_at FROM scheduler_lease WHERE name = 'scheduler'",
                [],
                |r| Ok(LeaseHolder { owner: r.get(0)?, host: r.get(1)?, pid: r.get(2)?, heartbeat_at: r.get(3)?, expires_at: r.get(4)? }),
            )?;
            Ok((holder.owner != owner).then_some(holder))
        })
    }

    pub fn scheduler_lease(&self) -> Result<Option<LeaseHolder>> {
        self.read(|c| {
            c.query_row("SELECT owner, host, pid, heartbeat_at, expires_at FROM scheduler_lease WHERE name = 'scheduler'", [], |r| {
                Ok(LeaseHolder { owner: r.get(0)?, host: r.get(1)?, pid: r.get(2)?, heartbeat_at: r.get(3)?, expires_at: r.get(4)? })
            })
            .optional()
        })
    }

    pub fn break_scheduler_lease(&self, dead_owner: &str) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = ?1",
                [dead_owner],
            )
            .map(|n| n == 1)
        })
    }

    pub fn renew_scheduler_lease(&self, owner: &str, now: i64, ttl_us: i64) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "UPDATE scheduler_lease SET heartbeat_at = ?2, expires_at = ?3 WHERE name = 'scheduler' AND owner = ?1",
                params![owner, now, now + ttl_us],
            )
            .map(|n| n == 1)
        })
    }

    pub fn release_scheduler_lease(&self, owner: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM scheduler_lease WHERE name = 'scheduler' AND owner = ?1",
                [owner],
            )
        })?;
        Ok(())
    }

    pub fn set_paused(&self, pipeline: &str, paused: bool, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pipeline_flags (pipeline, paused, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                params![pipeline, paused, now],
            )
        })?;
        Ok(())
    }

    pub fn paused_pipelines(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached("SELECT pipeline FROM pipeline_flags WHERE paused = 1")?;
            s.query_map([], |r| r.get(0))?.collect()
        })
    }
}

impl SqliteStore {
    pub fn beat(&self, e: &crate::EngineRow) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO engines (owner, host, pid, role, pools, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (owner) DO UPDATE SET role = excluded.role, pools = excluded.pools, heartbeat_at = excluded.heartbeat_at",
                params![e.owner, e.host, e.pid, e.role, e.pools, e.started_at, e.heartbeat_at],
            )
        })?;
        Ok(())
    }

    pub fn engines(&self) -> Result<Vec<crate::EngineRow>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT e.owner, e.host, e.pid, e.role, e.pools, e.started_at, e.heartbeat_at,
                        (SELECT COUNT(*) FROM task_instances t WHERE t.state = 'RUNNING' AND t.owner = e.owner)
                 FROM engines e ORDER BY e.heartbeat_at DESC, e.owner",
            )?;
            s.query_map([], |r| {
                Ok(crate::EngineRow {
                    owner: r.get(0)?,
                    host: r.get(1)?,
                    pid: r.get(2)?,
                    role: r.get(3)?,
                    pools: r.get(4)?,
                    started_at: r.get(5)?,
                    heartbeat_at: r.get(6)?,
                    running: r.get(7)?,
                })
            })?
            .collect()
        })
    }

    pub fn forget_engine(&self, owner: &str, stale_before: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM engines WHERE owner = ?1 OR heartbeat_at < ?2",
                params![owner, stale_before],
            )
        })?;
        Ok(())
    }
}
