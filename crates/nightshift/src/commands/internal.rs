//! Built-in task kinds run as child processes of the engine (`nightshift __<kind>`), so
//! timeouts, kills, logs and recovery work for them exactly as for shell tasks.

use anyhow::{Context as _, Result};
use nightshift_core::pipeline::ExtractRequest;

use crate::output;

pub fn extract(request: &str) -> Result<i32> {
    let req: ExtractRequest =
        serde_json::from_str(request).context("reading the extract request")?;
    #[allow(clippy::disallowed_methods)]
    let metrics = std::env::var_os("NIGHTSHIFT_METRICS").map(std::path::PathBuf::from);
    let mut log = std::io::stdout();
    match nightshift_extract::run(&req, metrics.as_deref(), &mut log) {
        Ok(summary) => {
            output::line(format!(
                "extracted {} rows in {} table(s)",
                summary.rows_loaded(),
                summary.tables.len()
            ));
            Ok(0)
        }
        Err(e) => {
            output::note(format!("error: {e}"));
            Ok(1)
        }
    }
}
