//! `shell`: the task's argv, each element templated; with `shell = true`, its one script
//! run by `sh -c` (templates are refused there, values come from the environment).

use nightshift_core::kinds::ShellSpec;
use nightshift_core::pipeline::Task;

use super::{Prepared, Runner, TryPaths};
use crate::attempt::TryCtx;

impl Runner for ShellSpec {
    fn prepare(&self, _c: &TryCtx, _task: &Task, p: &TryPaths<'_>) -> Result<Prepared, String> {
        let argv = if self.shell {
            vec![
                "sh".to_owned(),
                "-c".to_owned(),
                self.command.first().cloned().unwrap_or_default(),
            ]
        } else {
            self.command.iter().map(|a| p.ctx.render(a)).collect()
        };
        Ok(Prepared { argv, env: vec![] })
    }

    fn says_why(&self) -> bool {
        false
    }

    fn keeps_env(&self, _c: &TryCtx) -> Vec<String> {
        vec![]
    }
}
