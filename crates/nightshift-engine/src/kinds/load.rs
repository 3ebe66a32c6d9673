//! `load`: `nightshift __load REQUEST`; the connection's URL and password stay in the
//! environment, named.

use nightshift_core::kinds::{LoadRequest, LoadSpec};
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths, internal_argv, resolve_connection};
use crate::attempt::TryCtx;

impl Runner for LoadSpec {
    fn prepare(&self, c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let request = LoadRequest {
            spec: self.clone(),
            connection: resolve_connection(c, &self.connection)?,
            project_dir: c.project_dir.to_string_lossy().into_owned(),
            keys: p.ctx.keys.clone(),
        };
        internal_argv("__load", &request, p)
    }
}
