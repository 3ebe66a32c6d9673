use std::path::Path;

use anyhow::Result;
use nightshift_engine::{Clock, SystemClock};

use crate::commands::{load_project, parse_ts_flag, require_pipeline};
use crate::output;

pub fn exec(dir: &Path, name: &str, n: u32, after: Option<&str>, as_json: bool) -> Result<i32> {
    let project = load_project(dir)?;
    let lp = require_pipeline(&project, name)?;
    let p = &lp.pipeline;
    let mut t = match after {
        Some(a) => parse_ts_flag("--after", a)?,
        None => SystemClock.now(),
    };
    let mut rows = vec![];
    let mut docs = vec![];
    for _ in 0..n {
        let fire = p.schedule.next_fire(t)?;
        let iv = p.schedule.interval_ending_at(fire)?;
        let local = p.schedule.local(fire);
        let note = match p.schedule.dst_note(fire) {
            Some("skipped") => {
                "DST: the scheduled local time does not exist; fires at the first valid instant after it"
            }
            Some(_) => "DST: this local time occurs twice; fires once, at the first",
            None => "",
        };
        docs.push(serde_json::json!({
            "fire_at": fire.to_string(), "fire_local": local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            "run_id": p.schedule.run_id(&iv), "ds": p.schedule.ds(&iv).to_string(),
            "data_interval_start": iv.start.to_string(), "data_interval_end": iv.end.to_string(),
            "dst_note": p.schedule.dst_note(fire),
        }));
        rows.push(vec![
            local.strftime("%Y-%m-%d %H:%M %Z").to_string(),
            p.schedule.run_id(&iv),
            p.schedule.ds(&iv).to_string(),
            format!("[{}, {})", iv.start, iv.end),
            note.to_owned(),
        ]);
        t = fire;
    }
    if as_json {
        output::line(serde_json::to_string_pretty(&docs)?);
        return Ok(0);
    }
    output::table(
        &["FIRES (LOCAL)", "RUN_ID", "DS", "DATA INTERVAL (UTC)", ""],
        &rows,
    );
    Ok(0)
}
