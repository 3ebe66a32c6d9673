use std::path::Path;

use anyhow::{Context as _, Result};

use crate::output;
use crate::scaffold;

pub fn exec(dir: &Path, force: bool) -> Result<i32> {
    let written = scaffold::write_example(dir, force)?;
    if written.is_empty() {
        output::note(format!(
            "`{}` already holds the example project; nothing written (use --force to overwrite)",
            dir.display()
        ));
    } else {
        for f in &written {
            output::line(format!("created {}", f.display()));
        }
    }
    let shown = dir
        .canonicalize()
        .with_context(|| format!("reading `{}`", dir.display()))?;
    output::note(format!(
        "\nNext:\n  nightshift --project {0} validate\n  nightshift --project {0} run nightly --date 2024-06-01\n  nightshift --project {0} up",
        shown.display()
    ));
    Ok(0)
}
