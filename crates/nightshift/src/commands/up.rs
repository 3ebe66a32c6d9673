use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nightshift_engine::{Clock, Mode, SimClock, SystemClock};

use crate::commands::{
    drive, event_line, load_project, new_engine, open_store, parse_ts_flag, usage,
};
use crate::output;

pub async fn exec(dir: &Path, from: Option<&str>, until: Option<&str>) -> Result<i32> {
    let project = load_project(dir)?;
    let (clock, until): (Arc<dyn Clock>, _) = match (from, until) {
        (Some(f), Some(u)) => {
            let f = parse_ts_flag("--simulate-from", f)?;
            let u = parse_ts_flag("--simulate-until", u)?;
            if u <= f {
                return Err(usage("--simulate-until must be after --simulate-from"));
            }
            (Arc::new(SimClock::new(f)), Some(u))
        }
        _ => (Arc::new(SystemClock), None),
    };
    if project.pipelines.is_empty() && project.broken.is_empty() {
        output::note(format!(
            "warning: no pipelines in `{}`; waiting for files to appear",
            project.dir.join("pipelines").display()
        ));
    }
    let store = open_store(&project)?;
    let mut engine = new_engine(project, store, clock, Mode::Scheduler { until })?;
    engine
        .acquire_scheduler_lease()
        .map_err(|e| usage(e.to_string()))?;
    drive(engine, |e| {
        if let Some(line) = event_line(&e) {
            output::line(line);
        }
    })
    .await?;
    Ok(0)
}
