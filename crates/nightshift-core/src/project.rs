//! Project-wide settings from `nightshift.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::Diagnostic;
use crate::time;
use crate::toml_reader::{TableReader, parse_document};

/// Settings shared by every pipeline of a project. Every field has a default, so the file
/// is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings {
    /// Metadata store file, relative to the project folder.
    pub store_path: String,
    /// Task processes one scheduler runs at once.
    pub parallelism: u32,
    /// Default zone for pipelines that name none.
    pub timezone: String,
    /// Named slot pools: at most `slots` tasks of a pool run at once, across processes.
    pub pools: BTreeMap<String, u32>,
    /// How long `up` waits for running tasks when told to stop.
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when a task is killed (timeout, shutdown).
    pub kill_grace: Duration,
    pub default_retries: u32,
    pub default_timeout: Duration,
    /// Named connections to source systems.
    pub connections: BTreeMap<String, Connection>,
    /// Named notification channels.
    pub channels: BTreeMap<String, Channel>,
    /// Environment variables whose values are secrets: masked as `***` in every try log.
    /// Webhook `url_env` variables are secrets too, without being listed.
    pub secrets: Vec<String>,
}

/// Where a `notify` task sends run summaries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// The summary in the try's log and one JSON line in `.nightshift/notifications.jsonl`.
    Log,
    /// A JSON POST. The URL may come from an environment variable (it often holds a token).
    Webhook {
        url: Option<String>,
        url_env: Option<String>,
        timeout_ms: u64,
        retries: u32,
    },
}

/// A source system a task reads from. Secrets never live here: a connection names the
/// environment variable that holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Connection {
    /// A SQLite file, relative to the project folder.
    Sqlite { path: String },
}

impl Default for ProjectSettings {
    fn default() -> Self {
        ProjectSettings {
            store_path: ".nightshift/nightshift.db".into(),
            parallelism: 16,
            timezone: "UTC".into(),
            pools: BTreeMap::new(),
            shutdown_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(10),
            default_retries: 0,
            default_timeout: Duration::from_secs(6 * 3600),
            connections: BTreeMap::new(),
            channels: BTreeMap::new(),
            secrets: vec![],
        }
    }
}

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
];
const CHANNEL_KEYS: &[&str] = &["kind", "url", "url_env", "timeout", "retries"];
const CONNECTION_KEYS: &[&str] = &["kind", "path"];
const STORE_KEYS: &[&str] = &["path"];
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
    if let Some((t, span)) = root.table("store", &mut diags) {
        let r = TableReader::new(t, span, "`[store]`", &[STORE_KEYS]);
        if let Some(p) = r.string("path", &mut diags) {
            if p.value.trim().is_empty() {
                diags.push(Diagnostic::error(
                    "`path` in `[store]` is empty",
                    Some(p.span),
                ));
            } else {
                s.store_path = p.value;
            }
        }
        r.finish(&mut diags);
    }
    if let Some((t, span)) = root.table("defaults", &mut diags) {
        let r = TableReader::new(t, span, "`[defaults]`", &[DEFAULT_KEYS]);
        if let Some(v) = r.uint("retries", 100, &mut diags) {
            s.default_retries = v.value as u32;
        }
        if let Some(v) = r.string("timeout", &mut diags) {
            match time::parse_duration(&v.value) {
                Ok(d) if !d.is_zero() => s.default_timeout = d,
                _ => diags.push(Diagnostic::error(
                    format!("invalid duration `{}` for `timeout`", v.value),
                    Some(v.span),
                )),
            }
        }
        r.finish(&mut diags);
    }
    if let Some((t, _)) = root.table("pools", &mut diags) {
        for (name, v) in t.iter() {
            let label = format!("pool `{}`", name.get_ref());
            let slots = match v.get_ref() {
                toml::de::DeValue::Table(pt) => {
                    let r = TableReader::new(pt, v.span(), label, &[POOL_KEYS]);
                    let slots = r.uint("slots", 100_000, &mut diags);
                    if slots.is_none() && !r.has("slots") {
                        diags.push(
                            Diagnostic::error(
                                format!("pool `{}` has no `slots`", name.get_ref()),
                                Some(v.span()),
                            )
                            .with_help("write `{ slots = 1 }`"),
                        );
                    }
                    r.string("description", &mut diags);
                    r.finish(&mut diags);
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
    if let Some((t, _)) = root.table("connections", &mut diags) {
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
            let kind = r.string("kind", &mut diags);
            match kind.as_ref().map(|k| k.value.as_str()) {
                Some("sqlite") => match r.string("path", &mut diags) {
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
                Some(other) => diags.push(
                    Diagnostic::error(
                        format!("unknown connection kind `{other}` in {label}"),
                        kind.map(|k| k.span),
                    )
                    .with_help("use `sqlite`"),
                ),
                None => diags.push(
                    Diagnostic::error(format!("{label} needs a `kind`"), Some(v.span()))
                        .with_help("write `kind = \"sqlite\"`"),
                ),
            }
            r.finish(&mut diags);
        }
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
    if let Some((t, _)) = root.table("channels", &mut diags) {
        for (name, v) in t.iter() {
            let label = format!("channel `{}`", name.get_ref());
            let toml::de::DeValue::Table(ct) = v.get_ref() else {
                diags.push(
                    Diagnostic::error(format!("{label} must be a table"), Some(v.span()))
                        .with_help(
                            "write `[channels.ops]` with `kind = \"log\"` or `kind = \"webhook\"`",
                        ),
                );
                continue;
            };
            let r = TableReader::new(ct, v.span(), label.clone(), &[CHANNEL_KEYS]);
            let kind = r.string("kind", &mut diags);
            let channel = match kind.as_ref().map(|k| k.value.as_str()) {
                Some("log") => Some(Channel::Log),
                Some("webhook") => {
                    let url = r.string("url", &mut diags);
                    let url_env = r.string("url_env", &mut diags);
                    if let Some(u) = &url
                        && !(u.value.starts_with("http://") || u.value.starts_with("https://"))
                    {
                        diags.push(Diagnostic::error(
                            format!("`url` of {label} must start with http:// or https://"),
                            Some(u.span.clone()),
                        ));
                    }
                    if url.is_none() && url_env.is_none() {
                        diags.push(Diagnostic::error(format!("{label} needs `url` or `url_env`"), Some(v.span())).with_help("a URL with a token belongs in an environment variable: `url_env = \"OPS_WEBHOOK_URL\"`"));
                    }
                    let timeout = r.string("timeout", &mut diags).and_then(|t| {
                        match time::parse_duration(&t.value) {
                            Ok(d) if !d.is_zero() => Some(d),
                            _ => {
                                diags.push(Diagnostic::error(
                                    format!("invalid duration `{}` for `timeout`", t.value),
                                    Some(t.span),
                                ));
                                None
                            }
                        }
                    });
                    Some(Channel::Webhook {
                        url: url.map(|u| u.value),
                        url_env: url_env.map(|u| u.value),
                        timeout_ms: timeout.map(|d| d.as_millis() as u64).unwrap_or(10_000),
                        retries: r
                            .uint("retries", 20, &mut diags)
                            .map(|v| v.value as u32)
                            .unwrap_or(3),
                    })
                }
                Some(other) => {
                    diags.push(
                        Diagnostic::error(
                            format!("unknown channel kind `{other}` in {label}"),
                            kind.map(|k| k.span),
                        )
                        .with_help("use `log` or `webhook`"),
                    );
                    None
                }
                None => {
                    diags.push(
                        Diagnostic::error(format!("{label} needs a `kind`"), Some(v.span()))
                            .with_help("`kind = \"log\"` or `kind = \"webhook\"`"),
                    );
                    None
                }
            };
            r.finish(&mut diags);
            if let Some(c) = channel {
                s.channels.insert(name.get_ref().to_string(), c);
            }
        }
    }
    root.finish(&mut diags);
    (s, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings() {
        let (s, d) = parse_settings(
            "parallelism = 4\ntimezone = \"Europe/Berlin\"\n[pools]\nwarehouse = { slots = 1 }\n[store]\npath = \"x.db\"\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.parallelism, 4);
        assert_eq!(s.pools["warehouse"], 1);
        assert_eq!(s.store_path, "x.db");
    }

    #[test]
    fn reports_problems() {
        let (_, d) = parse_settings("paralelism = 4\n[pools]\nw = 3\n");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|x| x.message.contains("unknown key `paralelism`"))
        );
    }
}
