//! The example project that `init` and `demo` write.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

const FILES: &[(&str, &str, bool)] = &[
    (
        "nightshift.toml",
        include_str!("scaffold/nightshift.toml"),
        false,
    ),
    (
        "pipelines/nightly.toml",
        include_str!("scaffold/nightly.toml"),
        false,
    ),
    (
        "scripts/extract.sh",
        include_str!("scaffold/extract.sh"),
        true,
    ),
    (
        "scripts/dbt_run.sh",
        include_str!("scaffold/dbt_run.sh"),
        true,
    ),
    (
        "scripts/dbt_test.sh",
        include_str!("scaffold/dbt_test.sh"),
        true,
    ),
    (
        "scripts/notify.sh",
        include_str!("scaffold/notify.sh"),
        true,
    ),
    (".gitignore", ".nightshift/\ndata/\n", false),
];

/// Writes the example project into `dir`. Without `force`, an existing example is left
/// untouched and nothing is written; other existing files are never overwritten.
pub fn write_example(dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    if !force && dir.join("pipelines/nightly.toml").exists() {
        return Ok(vec![]);
    }
    let mut written = vec![];
    for (rel, text, exec) in FILES {
        let path = dir.join(rel);
        if path.exists() && !force {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating `{}`", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
        if *exec {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making `{}` executable", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}
