//! `store copy`: a project's SQLite history into an empty PostgreSQL store.

use std::path::Path;

use anyhow::{Context, Result};
use nightshift_store::{Location, PgLocation, Store};

use crate::commands::{load_project, usage};
use crate::output;

pub fn copy(dir: &Path, to: &str, password_env: Option<String>) -> Result<i32> {
    let project = load_project(dir)?;
    let from = match project.store_location() {
        Location::Sqlite(path) => path,
        Location::Postgres(_) => {
            return Err(usage(
                "this project's store is PostgreSQL already; `store copy` moves a SQLite store's history into PostgreSQL",
            ));
        }
    };
    if !from.exists() {
        return Err(usage(format!(
            "there is no store at `{}` to copy (nothing has run in this project yet)",
            from.display()
        )));
    }
    let source = Store::open_file(&from)
        .with_context(|| format!("opening the metadata store `{}`", from.display()))?;
    let now = source.now_us()?;
    if let Some(h) = source.scheduler_lease()?.filter(|l| l.expires_at > now) {
        return Err(usage(format!(
            "`nightshift up` (pid {} on `{}`) is using this store; stop it first, so the copy is the whole history",
            h.pid, h.host
        )));
    }
    let dest_location = Location::Postgres(PgLocation {
        url: to.to_owned(),
        password_env,
    });
    let dest = Store::open(&dest_location)
        .with_context(|| format!("opening the PostgreSQL store `{dest_location}`"))?;
    let (Some(sqlite), Some(pg)) = (source.sqlite(), dest.postgres()) else {
        return Err(usage(
            "`store copy` copies a SQLite store into a PostgreSQL one",
        ));
    };
    let copied = nightshift_store::copy::sqlite_to_postgres(sqlite, pg)
        .with_context(|| format!("copying into `{dest_location}`"))?;
    for (table, n) in &copied {
        output::line(format!("{table}: {n} rows"));
    }
    output::line(format!(
        "copied `{}` into `{dest_location}`; point the project at it with `[store] url = \"{}\"` in nightshift.toml (try logs stay in .nightshift/logs on this host)",
        from.display(),
        nightshift_store::redact_url(to)
    ));
    Ok(0)
}
