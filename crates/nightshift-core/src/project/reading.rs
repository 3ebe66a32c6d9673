//! Reading `nightshift.toml`: each table by its own function, every problem collected
//! with its location.

use toml::de::DeTable;

use super::*;
use crate::diag::Diagnostic;
use crate::time;
use crate::toml_reader::{Span, TableReader, parse_document};

const ROOT_KEYS: &[&str] = &[
    "timezone",
    "parallelism",
    "store",
    "pools",
    "shutdown_grace",
    "kill_grace",
    "defaults",
    "connections",
    "channels",
    "secrets",
    "alerts",
    "web",
    "retention",
    "log_max_bytes",
    "dbt",
];
pub(super) const CHANNEL_KEYS: &[&str] =
    &["kind", "timeout", "retries", "events", "after_failures"];
pub(super) const WEBHOOK_KEYS: &[&str] = &["url", "url_env", "format", "allow_private"];
pub(super) const SMTP_KEYS: &[&str] = &[
    "host",
    "port",
    "from",
    "to",
    "starttls",
    "tls",
    "allow_plaintext_auth",
    "username_env",
    "password_env",
];
pub(super) const COMMAND_KEYS: &[&str] = &["command"];
const ALERTS_KEYS: &[&str] = &["channels", "base_url"];
const RETENTION_KEYS: &[&str] = &["max_age", "dbt_artifacts"];
const DBT_KEYS: &[&str] = &["runner"];
const CONNECTION_KEYS: &[&str] = &["kind", "path", "url", "url_env", "password_env"];
const STORE_KEYS: &[&str] = &["path", "url", "password_env"];
const POOL_KEYS: &[&str] = &["slots", "description"];
const DEFAULT_KEYS: &[&str] = &["retries", "timeout"];

/// Reads `nightshift.toml`. Returns defaults for what is missing, and every problem found.
pub fn parse_settings(source: &str) -> (ProjectSettings, Vec<Diagnostic>) {
    let mut s = ProjectSettings::default();
    let mut diags = vec![];
    let doc = match parse_document(source) {
        Ok(d) => d,
        Err(d) => return (s, vec![d]),
    };
    let root = TableReader::new(doc.get_ref(), doc.span(), "nightshift.toml", &[ROOT_KEYS]);
    if let Some(tz) = root.string("timezone", &mut diags) {
        if time::parse_zone(&tz.value).is_err() {
            diags.push(
                Diagnostic::error(format!("unknown time zone `{}`", tz.value), Some(tz.span))
                    .with_help("use an IANA zone name such as `UTC` or `Europe/Berlin`"),
            );
        } else {
            s.timezone = tz.value;
        }
    }
    if let Some(p) = root.uint("parallelism", 10_000, &mut diags) {
        if p.value == 0 {
            diags.push(Diagnostic::error(
                "`parallelism` must be at least 1",
                Some(p.span),
            ));
        } else {
            s.parallelism = p.value as u32;
        }
    }
    for (key, slot) in [
        ("shutdown_grace", &mut s.shutdown_grace),
        ("kill_grace", &mut s.kill_grace),
    ] {
        if let Some(v) = root.string(key, &mut diags) {
            match time::parse_duration(&v.value) {
                Ok(d) => *slot = d,
                Err(_) => diags.push(
                    Diagnostic::error(
                        format!("invalid duration `{}` for `{key}`", v.value),
                        Some(v.span),
                    )
                    .with_help("write e.g. `30s` or `2m`"),
                ),
            }
        }
    }
    if let Some(v) = root.uint("log_max_bytes", 1 << 40, &mut diags) {
        if v.value < 4096 {
            diags.push(
                Diagnostic::error("`log_max_bytes` must be at least 4096", Some(v.span))
                    .with_help("the default is 104857600 (100 MiB)"),
            );
        } else {
            s.log_max_bytes = v.value;
        }
    }
    if let Some((t, span)) = root.table("store", &mut diags) {
        read_store(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("defaults", &mut diags) {
        read_defaults(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("pools", &mut diags) {
        read_pools(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("connections", &mut diags) {
        read_connections(t, span, &mut s, &mut diags);
    }
    if let Some(list) = root.string_list("secrets", false, &mut diags) {
        for v in list {
            if v.value.is_empty() || v.value.contains('=') {
                diags.push(Diagnostic::error(
                    format!(
                        "invalid environment variable name `{}` in `secrets`",
                        v.value
                    ),
                    Some(v.span),
                ));
            } else {
                s.secrets.push(v.value);
            }
        }
    }
    if let Some((t, span)) = root.table("channels", &mut diags) {
        super::channels::read_channels(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("alerts", &mut diags) {
        read_alerts(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("web", &mut diags) {
        super::web::read_web(t, span, &mut s, &mut diags);
    }
    if let Some((t, span)) = root.table("dbt", &mut diags) {
        let r = TableReader::new(t, span, "`[dbt]`", &[DBT_KEYS]);
        if let Some(runner) = crate::kinds::read_dbt_runner(&r, &mut diags) {
            s.dbt_runner = runner;
        }
        r.finish(&mut diags);
    }
    if let Some((t, span)) = root.table("retention", &mut diags) {
        read_retention(t, span, &mut s, &mut diags);
    }
    root.finish(&mut diags);
    (s, diags)
}

fn read_store(t: &DeTable<'_>, span: Span, s: &mut ProjectSettings, diags: &mut Vec<Diagnostic>) {
    let r = TableReader::new(t, span, "`[store]`", &[STORE_KEYS]);
    let path = r.string("path", diags);
    if let Some(p) = &path {
        if p.value.trim().is_empty() {
            diags.push(Diagnostic::error(
                "`path` in `[store]` is empty",
                Some(p.span.clone()),
            ));
        } else {
            s.store_path = p.value.clone();
        }
    }
    if let Some(u) = r.string("url", diags) {
        let url = u.value.trim();
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            diags.push(
                Diagnostic::error(
                    format!("`url` in `[store]` is not a PostgreSQL URL: `{url}`"),
                    Some(u.span),
                )
                .with_help("write it as `postgresql://user@host:5432/database`; for a SQLite file use `path`"),
            );
        } else if url_has_password(url) {
            diags.push(
                Diagnostic::error("`url` in `[store]` holds a password", Some(u.span)).with_help(
                    "passwords never go in project files: remove it from the URL and export PGPASSWORD, or name a variable with `password_env`",
                ),
            );
        } else if path.is_some() {
            diags.push(
                Diagnostic::error("`[store]` has both `path` and `url`", Some(u.span))
                    .with_help("use `path` for a SQLite file or `url` for PostgreSQL, not both"),
            );
        } else {
            s.store_url = Some(url.to_owned());
        }
    }
    if let Some(v) = r.string("password_env", diags) {
        if v.value.trim().is_empty() {
            diags.push(Diagnostic::error(
                "`password_env` in `[store]` is empty",
                Some(v.span),
            ));
        } else {
            s.store_password_env = Some(v.value);
        }
    }
    r.finish(diags);
}

/// Whether a URL carries a password: in its user info, or as `password=` in its query.
pub fn url_has_password(url: &str) -> bool {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    in_userinfo || query.split('&').any(|p| p.starts_with("password="))
}

fn read_defaults(
    t: &DeTable<'_>,
    span: Span,
    s: &mut ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    let r = TableReader::new(t, span, "`[defaults]`", &[DEFAULT_KEYS]);
    if let Some(v) = r.uint("retries", 100, diags) {
        s.default_retries = v.value as u32;
    }
    if let Some(v) = r.string("timeout", diags) {
        match time::parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => s.default_timeout = d,
            _ => diags.push(Diagnostic::error(
                format!("invalid duration `{}` for `timeout`", v.value),
                Some(v.span),
            )),
        }
    }
    r.finish(diags);
}

fn read_pools(t: &DeTable<'_>, _span: Span, s: &mut ProjectSettings, diags: &mut Vec<Diagnostic>) {
    for (name, v) in t.iter() {
        let label = format!("pool `{}`", name.get_ref());
        let slots = match v.get_ref() {
            toml::de::DeValue::Table(pt) => {
                let r = TableReader::new(pt, v.span(), label, &[POOL_KEYS]);
                let slots = r.uint("slots", 100_000, diags);
                if slots.is_none() && !r.has("slots") {
                    diags.push(
                        Diagnostic::error(
                            format!("pool `{}` has no `slots`", name.get_ref()),
                            Some(v.span()),
                        )
                        .with_help("write `{ slots = 1 }`"),
                    );
                }
                r.string("description", diags);
                r.finish(diags);
                slots.map(|s| s.value)
            }
            _ => {
                diags.push(
                    Diagnostic::error(
                        format!("pool `{}` must be a table", name.get_ref()),
                        Some(v.span()),
                    )
                    .with_help("write `{ slots = 1 }`"),
                );
                None
            }
        };
        if let Some(n) = slots {
            if n == 0 {
                diags.push(Diagnostic::error(
                    format!("pool `{}` must have at least 1 slot", name.get_ref()),
                    Some(v.span()),
                ));
            } else {
                s.pools.insert(name.get_ref().to_string(), n as u32);
            }
        }
    }
}

fn read_connections(
    t: &DeTable<'_>,
    _span: Span,
    s: &mut ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    for (name, v) in t.iter() {
        let label = format!("connection `{}`", name.get_ref());
        let toml::de::DeValue::Table(ct) = v.get_ref() else {
            diags.push(
                Diagnostic::error(format!("{label} must be a table"), Some(v.span()))
                    .with_help("write `[connections.shop]` with `kind = \"sqlite\"` and `path = \"source/shop.db\"`"),
            );
            continue;
        };
        let r = TableReader::new(ct, v.span(), label.clone(), &[CONNECTION_KEYS]);
        let kind = r.string("kind", diags);
        // Keys of the other kind are mistakes, not options.
        let foreign: &[&str] = match kind.as_ref().map(|k| k.value.as_str()) {
            Some("sqlite") => &["url", "url_env", "password_env"],
            Some("postgres") => &["path"],
            _ => &[],
        };
        let before = diags.len();
        for key in foreign {
            if let Some(v) = r.raw(key) {
                diags.push(
                    Diagnostic::error(
                        format!("`{key}` does not apply to a `{}` connection ({label})", kind.as_ref().map(|k| k.value.as_str()).unwrap_or_default()),
                        Some(v.span()),
                    )
                    .with_help("a `sqlite` connection takes `path`; a `postgres` one takes `url` or `url_env`, and `password_env`"),
                );
            }
        }
        if diags.len() > before {
            r.finish(diags);
            continue;
        }
        match kind.as_ref().map(|k| k.value.as_str()) {
            Some("sqlite") => match r.string("path", diags) {
                Some(p) if !p.value.trim().is_empty() => {
                    s.connections.insert(
                        name.get_ref().to_string(),
                        Connection::Sqlite { path: p.value },
                    );
                }
                _ => diags.push(Diagnostic::error(
                    format!("{label} needs a `path`"),
                    Some(v.span()),
                )),
            },
            Some("postgres") => {
                if let Some(c) = read_postgres_connection(&r, &label, v.span(), diags) {
                    s.connections.insert(name.get_ref().to_string(), c);
                }
            }
            Some(other) => diags.push(
                Diagnostic::error(
                    format!("unknown connection kind `{other}` in {label}"),
                    kind.map(|k| k.span),
                )
                .with_help("use `sqlite` or `postgres`"),
            ),
            None => diags.push(
                Diagnostic::error(format!("{label} needs a `kind`"), Some(v.span()))
                    .with_help("write `kind = \"sqlite\"`"),
            ),
        }
        r.finish(diags);
    }
}

/// `url` or `url_env`, and `password_env`; a password never comes from the file.
fn read_postgres_connection(
    r: &TableReader<'_, '_>,
    label: &str,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) -> Option<Connection> {
    let url = r.string("url", diags);
    let url_env = r.string("url_env", diags);
    let password_env = r.string("password_env", diags);
    let before = diags.len();
    if let Some(u) = &url {
        let text = u.value.trim();
        if !(text.starts_with("postgresql://") || text.starts_with("postgres://")) {
            diags.push(
                Diagnostic::error(
                    format!("`url` of {label} is not a PostgreSQL URL: `{text}`"),
                    Some(u.span.clone()),
                )
                .with_help("write it as `postgresql://user@host:5432/database`"),
            );
        } else if url_has_password(text) {
            diags.push(
                Diagnostic::error(format!("`url` of {label} holds a password"), Some(u.span.clone())).with_help(
                    "passwords never go in project files: remove it from the URL and name a variable with `password_env` (or export PGPASSWORD)",
                ),
            );
        }
    }
    for v in [&url_env, &password_env].into_iter().flatten() {
        if v.value.trim().is_empty() {
            diags.push(Diagnostic::error(
                format!("an empty variable name in {label}"),
                Some(v.span.clone()),
            ));
        }
    }
    match (&url, &url_env) {
        (Some(_), Some(e)) => diags.push(
            Diagnostic::error(format!("{label} has both `url` and `url_env`"), Some(e.span.clone()))
                .with_help("keep one: `url` in the file, or `url_env` naming the variable that holds it"),
        ),
        (None, None) => diags.push(
            Diagnostic::error(format!("{label} needs a `url` or a `url_env`"), Some(span))
                .with_help("e.g. `url = \"postgresql://reader@db:5432/shop?sslmode=require\"` and `password_env = \"SHOP_PASSWORD\"`"),
        ),
        _ => {}
    }
    (diags.len() == before).then(|| Connection::Postgres {
        url: url.map(|u| u.value.trim().to_owned()),
        url_env: url_env.map(|v| v.value),
        password_env: password_env.map(|v| v.value),
    })
}

fn read_alerts(t: &DeTable<'_>, span: Span, s: &mut ProjectSettings, diags: &mut Vec<Diagnostic>) {
    let r = TableReader::new(t, span, "`[alerts]`", &[ALERTS_KEYS]);
    if let Some(list) = r.string_list("channels", false, diags) {
        for c in list {
            if s.channels.contains_key(&c.value) {
                s.alerts.channels.push(c.value);
            } else {
                let known: Vec<&str> = s.channels.keys().map(String::as_str).collect();
                diags.push(
                    Diagnostic::error(
                        format!(
                            "`[alerts]` names channel `{}`, which is not defined",
                            c.value
                        ),
                        Some(c.span),
                    )
                    .with_help(if known.is_empty() {
                        "define it under `[channels.NAME]`".to_owned()
                    } else {
                        format!("defined channels: {}", known.join(", "))
                    }),
                );
            }
        }
    }
    if let Some(u) = r.string("base_url", diags) {
        if u.value.starts_with("http://") || u.value.starts_with("https://") {
            s.alerts.base_url = Some(u.value.trim_end_matches('/').to_owned());
        } else {
            diags.push(Diagnostic::error(
                "`base_url` must start with http:// or https://",
                Some(u.span),
            ));
        }
    }
    r.finish(diags);
}

fn read_retention(
    t: &DeTable<'_>,
    span: Span,
    s: &mut ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    let r = TableReader::new(t, span, "`[retention]`", &[RETENTION_KEYS]);
    if let Some(v) = r.uint("dbt_artifacts", 10_000, diags) {
        if v.value == 0 {
            diags.push(
                Diagnostic::error("`dbt_artifacts` must be at least 1", Some(v.span)).with_help(
                    "a retry reads its predecessor's artifacts; keep at least the latest",
                ),
            );
        } else {
            s.dbt_artifacts_kept = v.value as u32;
        }
    }
    if let Some(v) = r.string("max_age", diags) {
        match time::parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => s.retention = Some(d),
            _ => diags.push(
                Diagnostic::error(
                    format!("invalid duration `{}` for `max_age`", v.value),
                    Some(v.span),
                )
                .with_help("write e.g. `90d`"),
            ),
        }
    }
    r.finish(diags);
}
