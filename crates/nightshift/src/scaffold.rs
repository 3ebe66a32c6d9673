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

/// The reference project on PostgreSQL: the files that differ from [`REFERENCE`].
const REFERENCE_POSTGRES: &[(&str, &str)] = &[
    (
        "nightshift.toml",
        include_str!("scaffold/reference/postgres/nightshift.toml"),
    ),
    (
        "pipelines/nightly.toml",
        include_str!("scaffold/reference/postgres/nightly.toml"),
    ),
];

/// Writes the reference project into `dir` unless it is there already.
pub fn write_reference(dir: &Path) -> Result<Vec<PathBuf>> {
    write_files(
        dir,
        REFERENCE.iter().map(|(rel, text)| (*rel, text.to_string())),
    )
}

/// Writes the reference project on PostgreSQL into `dir` unless it is there already: the
/// shop and the warehouse in the database at `url`, dbt through dbt-postgres (a `postgres`
/// target written from the URL; the password from PGPASSWORD).
pub fn write_reference_postgres(dir: &Path, url: &str) -> Result<Vec<PathBuf>> {
    let config: postgres::Config = url.parse().with_context(|| {
        format!(
            "reading the PostgreSQL URL `{}`",
            nightshift_store::redact_url(url)
        )
    })?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let dbname = config.get_dbname().unwrap_or(&user).to_owned();
    let sslmode = url
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("sslmode=")))
        .map(|m| format!("      sslmode: {m}\n"))
        .unwrap_or_default();
    let profile = format!(
        "    postgres:\n      type: postgres\n      host: \"{host}\"\n      port: {port}\n      user: \"{user}\"\n      password: \"{{{{ env_var('PGPASSWORD', '') }}}}\"\n      dbname: \"{dbname}\"\n      schema: analytics\n      threads: 2\n{sslmode}"
    );
    let files = REFERENCE.iter().map(|(rel, text)| {
        let text = match REFERENCE_POSTGRES.iter().find(|(r, _)| r == rel) {
            Some((_, pg)) => pg.replace("@URL@", url),
            None if *rel == "dbt/profiles.yml" => format!("{text}{profile}"),
            None => text.to_string(),
        };
        (*rel, text)
    });
    write_files(dir, files)
}

fn write_files<'a>(
    dir: &Path,
    files: impl Iterator<Item = (&'a str, String)>,
) -> Result<Vec<PathBuf>> {
    if dir.join("pipelines/nightly.toml").exists() {
        return Ok(vec![]);
    }
    let mut written = vec![];
    for (rel, text) in files {
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
