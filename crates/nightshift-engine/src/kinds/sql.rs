//! `sql`: `nightshift __sql REQUEST`, the connection's path made absolute.

use nightshift_core::kinds::{SqlRequest, SqlSpec};
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths, internal_argv, resolve_connection};
use crate::attempt::TryCtx;

impl Runner for SqlSpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let request = SqlRequest {
            spec: self.clone(),
            connection: resolve_connection(c, &self.connection)?,
            keys: p.ctx.keys.clone(),
        };
        internal_argv("__sql", &request, p)
    }
}
