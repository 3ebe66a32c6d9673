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

/// The reference pipeline's project: a SQLite shop source, dbt on DuckDB, Parquet outputs.
const REFERENCE: &[(&str, &str)] = &[
    (
        "nightshift.toml",
        include_str!("scaffold/reference/nightshift.toml"),
    ),
    (
        "pipelines/nightly.toml",
        include_str!("scaffold/reference/nightly.toml"),
    ),
    (
        "dbt/dbt_project.yml",
        include_str!("scaffold/reference/dbt/dbt_project.yml"),
    ),
    (
        "dbt/profiles.yml",
        include_str!("scaffold/reference/dbt/profiles.yml"),
    ),
    (
        "dbt/models/sources.yml",
        include_str!("scaffold/reference/dbt/models/sources.yml"),
    ),
    (
        "dbt/models/staging/staging.yml",
        include_str!("scaffold/reference/dbt/models/staging/staging.yml"),
    ),
    (
        "dbt/models/staging/stg_orders.sql",
        include_str!("scaffold/reference/dbt/models/staging/stg_orders.sql"),
    ),
    (
        "dbt/models/staging/stg_order_items.sql",
        include_str!("scaffold/reference/dbt/models/staging/stg_order_items.sql"),
    ),
    (
        "dbt/models/staging/stg_payments.sql",
        include_str!("scaffold/reference/dbt/models/staging/stg_payments.sql"),
    ),
    (
        "dbt/models/staging/stg_customers.sql",
        include_str!("scaffold/reference/dbt/models/staging/stg_customers.sql"),
    ),
    (
        "dbt/models/marts/marts.yml",
        include_str!("scaffold/reference/dbt/models/marts/marts.yml"),
    ),
    (
        "dbt/models/marts/fct_orders.sql",
        include_str!("scaffold/reference/dbt/models/marts/fct_orders.sql"),
    ),
    (
        "dbt/models/marts/dim_customers.sql",
        include_str!("scaffold/reference/dbt/models/marts/dim_customers.sql"),
    ),
    (
        "dbt/models/marts/fct_daily_revenue.sql",
        include_str!("scaffold/reference/dbt/models/marts/fct_daily_revenue.sql"),
    ),
    (
        "dbt/tests/reconcile_fct_orders_with_raw.sql",
        include_str!("scaffold/reference/dbt/tests/reconcile_fct_orders_with_raw.sql"),
    ),
    (
        "dbt/macros/non_negative.sql",
        include_str!("scaffold/reference/dbt/macros/non_negative.sql"),
    ),
    (
        "dbt/macros/nightshift_export.sql",
        include_str!("scaffold/reference/dbt/macros/nightshift_export.sql"),
    ),
    (
        "requirements-dbt.txt",
        include_str!("../../../tools/dbt/requirements.lock"),
    ),
    ("warehouse/.gitignore", "*\n!.gitignore\n"),
    (
        ".gitignore",
        ".nightshift/\n.venv/\ndata/\npublished/\nsource/\n",
    ),
];

/// Writes the reference project into `dir` unless it is there already.
pub fn write_reference(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("pipelines/nightly.toml").exists() {
        return Ok(vec![]);
    }
    let mut written = vec![];
    for (rel, text) in REFERENCE {
        let path = dir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating `{}`", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

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
