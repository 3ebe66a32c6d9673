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
    /// Which channels get alerts, and for which events.
    pub alerts: AlertSettings,
    /// The web UI and API served by `up`.
    pub web: WebSettings,
    /// How long finished runs are kept (`None`: forever).
    pub retention: Option<Duration>,
    /// A try's log keeps its head and tail within about this many bytes (default 100 MiB).
    pub log_max_bytes: u64,
}

/// Something that happened that a channel may be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// A task failed after its last try.
    TaskFailed,
    /// A task failed and will be tried again.
    TaskRetrying,
    RunFailed,
    RunSucceeded,
    DeadlineAtRisk,
    DeadlineMissed,
    /// A pipeline whose failure was alerted has a successful run again.
    Recovered,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::TaskFailed,
        AlertKind::TaskRetrying,
        AlertKind::RunFailed,
        AlertKind::RunSucceeded,
        AlertKind::DeadlineAtRisk,
        AlertKind::DeadlineMissed,
        AlertKind::Recovered,
    ];
    /// What a channel hears about unless it says otherwise: one alert per failure (the
    /// failed task), deadlines, and recovery.
    pub const DEFAULT: [AlertKind; 4] = [
        AlertKind::TaskFailed,
        AlertKind::DeadlineAtRisk,
        AlertKind::DeadlineMissed,
        AlertKind::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::TaskFailed => "task_failed",
            AlertKind::TaskRetrying => "task_retrying",
            AlertKind::RunFailed => "run_failed",
            AlertKind::RunSucceeded => "run_succeeded",
            AlertKind::DeadlineAtRisk => "deadline_at_risk",
            AlertKind::DeadlineMissed => "deadline_missed",
            AlertKind::Recovered => "recovered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `[alerts]` and the alert keys of each channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertSettings {
    /// Channels that get alerts, by name.
    pub channels: Vec<String>,
    /// Base of the links in alerts (the UI's address as people reach it).
    pub base_url: Option<String>,
    /// Per channel: the events it wants and after how many consecutive failed runs.
    pub subscriptions: BTreeMap<String, Subscription>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub events: Vec<AlertKind>,
    /// Failure alerts only once this many runs in a row have failed (1: every failure).
    pub after_failures: u32,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            events: AlertKind::DEFAULT.to_vec(),
            after_failures: 1,
        }
    }
}

/// `[web]`: where `up` serves the UI and API, and the token actions need.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    pub bind: String,
    /// A token written in the file (prefer `token_env`).
    pub token: Option<String>,
    /// The environment variable holding the token.
    pub token_env: String,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            bind: "127.0.0.1:8080".into(),
            token: None,
            token_env: "NIGHTSHIFT_TOKEN".into(),
        }
    }
}

impl WebSettings {
    /// The token actions need, if one is configured.
    pub fn resolve_token(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.token
            .clone()
            .or_else(|| env(&self.token_env))
            .filter(|t| !t.is_empty())
    }
}

/// Body of a webhook call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// nightshift's JSON object.
    #[default]
    Json,
    /// Slack's incoming-webhook payload (`text` and `blocks`).
    Slack,
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
        #[serde(default)]
        format: WebhookFormat,
    },
    /// Email through an SMTP server; STARTTLS when asked for.
    Smtp {
        host: String,
        port: u16,
        from: String,
        to: Vec<String>,
        starttls: bool,
        username_env: Option<String>,
        password_env: Option<String>,
        timeout_ms: u64,
        retries: u32,
    },
    /// A program run with the message as JSON on stdin (argv, never a shell line).
    Command {
        command: Vec<String>,
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
            alerts: AlertSettings::default(),
            web: WebSettings::default(),
            retention: None,
            log_max_bytes: 100 * 1024 * 1024,
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
    "alerts",
    "web",
    "retention",
    "log_max_bytes",
];
const CHANNEL_KEYS: &[&str] = &["kind", "timeout", "retries", "events", "after_failures"];
const WEBHOOK_KEYS: &[&str] = &["url", "url_env", "format"];
const SMTP_KEYS: &[&str] = &[
    "host",
    "port",
    "from",
    "to",
    "starttls",
    "username_env",
    "password_env",
];
const COMMAND_KEYS: &[&str] = &["command"];
const ALERTS_KEYS: &[&str] = &["channels", "base_url"];
const WEB_KEYS: &[&str] = &["bind", "token", "token_env"];
const RETENTION_KEYS: &[&str] = &["max_age"];
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
            let kind_name = match ct.get("kind").map(|k| k.get_ref()) {
                Some(toml::de::DeValue::String(k)) => k.to_string(),
                _ => String::new(),
            };
            let extra: &[&str] = match kind_name.as_str() {
                "webhook" => WEBHOOK_KEYS,
                "smtp" => SMTP_KEYS,
                "command" => COMMAND_KEYS,
                _ => &[],
            };
            let r = TableReader::new(ct, v.span(), label.clone(), &[CHANNEL_KEYS, extra]);
            let kind = r.string("kind", &mut diags);
            let timeout_ms = r
                .string("timeout", &mut diags)
                .and_then(|t| match time::parse_duration(&t.value) {
                    Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
                    _ => {
                        diags.push(
                            Diagnostic::error(
                                format!("invalid duration `{}` for `timeout`", t.value),
                                Some(t.span),
                            )
                            .with_help("write e.g. `10s`"),
                        );
                        None
                    }
                })
                .unwrap_or(10_000);
            let retries = r
                .uint("retries", 20, &mut diags)
                .map(|v| v.value as u32)
                .unwrap_or(3);
            let mut sub = Subscription::default();
            if let Some(list) = r.string_list("events", false, &mut diags) {
                sub.events.clear();
                for e in list {
                    match AlertKind::parse(&e.value) {
                        Some(k) => sub.events.push(k),
                        None => diags.push(
                            Diagnostic::error(
                                format!("unknown alert event `{}` in {label}", e.value),
                                Some(e.span),
                            )
                            .with_help(format!(
                                "use one of {}",
                                AlertKind::ALL.map(AlertKind::as_str).join(", ")
                            )),
                        ),
                    }
                }
            }
            if let Some(n) = r.uint("after_failures", 1000, &mut diags) {
                sub.after_failures = (n.value as u32).max(1);
            }
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
                    let format = match r.string("format", &mut diags) {
                        None => WebhookFormat::Json,
                        Some(f) if f.value == "json" => WebhookFormat::Json,
                        Some(f) if f.value == "slack" => WebhookFormat::Slack,
                        Some(f) => {
                            diags.push(
                                Diagnostic::error(
                                    format!("unknown webhook format `{}` in {label}", f.value),
                                    Some(f.span),
                                )
                                .with_help("use `json` or `slack`"),
                            );
                            WebhookFormat::Json
                        }
                    };
                    Some(Channel::Webhook {
                        url: url.map(|u| u.value),
                        url_env: url_env.map(|u| u.value),
                        timeout_ms,
                        retries,
                        format,
                    })
                }
                Some("smtp") => {
                    let host = r.string("host", &mut diags);
                    let from = r.string("from", &mut diags);
                    let to = r.string_list("to", false, &mut diags).unwrap_or_default();
                    if host.is_none() || from.is_none() || to.is_empty() {
                        diags.push(
                            Diagnostic::error(
                                format!("{label} needs `host`, `from` and `to`"),
                                Some(v.span()),
                            )
                            .with_help("write `host = \"smtp.example.com\"`, `from = \"nightshift@example.com\"`, `to = [\"ops@example.com\"]`"),
                        );
                    }
                    for addr in from.iter().chain(to.iter()) {
                        if !addr.value.contains('@') {
                            diags.push(Diagnostic::error(
                                format!("`{}` in {label} is not an email address", addr.value),
                                Some(addr.span.clone()),
                            ));
                        }
                    }
                    let port = r.uint("port", 65_535, &mut diags).map(|p| p.value as u16);
                    Some(Channel::Smtp {
                        host: host.map(|h| h.value).unwrap_or_default(),
                        port: port.unwrap_or(25),
                        from: from.map(|f| f.value).unwrap_or_default(),
                        to: to.into_iter().map(|t| t.value).collect(),
                        starttls: r
                            .bool("starttls", &mut diags)
                            .map(|b| b.value)
                            .unwrap_or(false),
                        username_env: r.string("username_env", &mut diags).map(|u| u.value),
                        password_env: r.string("password_env", &mut diags).map(|u| u.value),
                        timeout_ms,
                        retries,
                    })
                }
                Some("command") => {
                    let command = r
                        .string_list("command", false, &mut diags)
                        .unwrap_or_default();
                    if command.is_empty() {
                        diags.push(
                            Diagnostic::error(format!("{label} needs a `command`"), Some(v.span()))
                                .with_help("an argv array: `command = [\"/usr/local/bin/page-oncall\", \"--team\", \"data\"]`"),
                        );
                    }
                    Some(Channel::Command {
                        command: command.into_iter().map(|c| c.value).collect(),
                        timeout_ms,
                        retries,
                    })
                }
                Some(other) => {
                    diags.push(
                        Diagnostic::error(
                            format!("unknown channel kind `{other}` in {label}"),
                            kind.map(|k| k.span),
                        )
                        .with_help("use `log`, `webhook`, `smtp` or `command`"),
                    );
                    None
                }
                None => {
                    diags.push(
                        Diagnostic::error(format!("{label} needs a `kind`"), Some(v.span()))
                            .with_help(
                                "`kind = \"log\"`, `\"webhook\"`, `\"smtp\"` or `\"command\"`",
                            ),
                    );
                    None
                }
            };
            s.alerts
                .subscriptions
                .insert(name.get_ref().to_string(), sub);
            r.finish(&mut diags);
            if let Some(c) = channel {
                s.channels.insert(name.get_ref().to_string(), c);
            }
        }
    }
    if let Some((t, span)) = root.table("alerts", &mut diags) {
        let r = TableReader::new(t, span, "`[alerts]`", &[ALERTS_KEYS]);
        if let Some(list) = r.string_list("channels", false, &mut diags) {
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
        if let Some(u) = r.string("base_url", &mut diags) {
            if u.value.starts_with("http://") || u.value.starts_with("https://") {
                s.alerts.base_url = Some(u.value.trim_end_matches('/').to_owned());
            } else {
                diags.push(Diagnostic::error(
                    "`base_url` must start with http:// or https://",
                    Some(u.span),
                ));
            }
        }
        r.finish(&mut diags);
    }
    if let Some((t, span)) = root.table("web", &mut diags) {
        let r = TableReader::new(t, span, "`[web]`", &[WEB_KEYS]);
        if let Some(b) = r.string("bind", &mut diags) {
            if b.value.parse::<std::net::SocketAddr>().is_ok() {
                s.web.bind = b.value;
            } else {
                diags.push(
                    Diagnostic::error(
                        format!("invalid `bind` address `{}`", b.value),
                        Some(b.span),
                    )
                    .with_help("write an IP address and port, e.g. \"127.0.0.1:8080\""),
                );
            }
        }
        if let Some(tok) = r.string("token", &mut diags) {
            if tok.value.len() < 16 {
                diags.push(
                    Diagnostic::error("`token` is shorter than 16 characters", Some(tok.span))
                        .with_help(
                            "use a long random token, better kept in the environment (`token_env`)",
                        ),
                );
            } else {
                s.web.token = Some(tok.value);
            }
        }
        if let Some(e) = r.string("token_env", &mut diags) {
            s.web.token_env = e.value;
        }
        r.finish(&mut diags);
    }
    if let Some((t, span)) = root.table("retention", &mut diags) {
        let r = TableReader::new(t, span, "`[retention]`", &[RETENTION_KEYS]);
        if let Some(v) = r.string("max_age", &mut diags) {
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
        r.finish(&mut diags);
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
    fn reads_alerts_web_and_retention() {
        let (s, d) = parse_settings(
            r#"[channels.mail]
kind = "smtp"
host = "smtp.example.com"
port = 587
starttls = true
from = "n@example.com"
to = ["ops@example.com"]
events = ["task_failed", "run_succeeded"]
after_failures = 2
[channels.pager]
kind = "command"
command = ["/bin/true", "--x"]
[channels.chat]
kind = "webhook"
url_env = "CHAT"
format = "slack"
[alerts]
channels = ["mail", "pager"]
base_url = "https://ns.example.com/"
[web]
bind = "0.0.0.0:9000"
token_env = "NS_TOKEN"
[retention]
max_age = "90d"
"#,
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.alerts.channels, ["mail", "pager"]);
        assert_eq!(s.alerts.base_url.as_deref(), Some("https://ns.example.com"));
        let sub = &s.alerts.subscriptions["mail"];
        assert_eq!(sub.events, [AlertKind::TaskFailed, AlertKind::RunSucceeded]);
        assert_eq!(sub.after_failures, 2);
        assert_eq!(s.alerts.subscriptions["pager"].events, AlertKind::DEFAULT);
        assert!(matches!(
            &s.channels["mail"],
            Channel::Smtp {
                port: 587,
                starttls: true,
                ..
            }
        ));
        assert!(matches!(
            &s.channels["chat"],
            Channel::Webhook {
                format: WebhookFormat::Slack,
                ..
            }
        ));
        assert_eq!(s.web.bind, "0.0.0.0:9000");
        assert_eq!(
            s.web
                .resolve_token(|k| (k == "NS_TOKEN").then(|| "t".repeat(20))),
            Some("t".repeat(20))
        );
        assert_eq!(s.retention, Some(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn bad_alert_settings_are_reported_where_they_are() {
        let src = "[channels.mail]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"nobody\"\nto = [\"a@b\"]\nevents = [\"task_faild\"]\n[channels.x]\nkind = \"command\"\n[alerts]\nchannels = [\"mial\"]\n[web]\nbind = \"localhost\"\ntoken = \"short\"\n[retention]\nmax_age = \"forever\"\n";
        let (_, d) = parse_settings(src);
        let msgs: Vec<&str> = d.iter().map(|x| x.message.as_str()).collect();
        for want in [
            "`nobody` in channel `mail` is not an email address",
            "unknown alert event `task_faild` in channel `mail`",
            "channel `x` needs a `command`",
            "`[alerts]` names channel `mial`, which is not defined",
            "invalid `bind` address `localhost`",
            "`token` is shorter than 16 characters",
            "invalid duration `forever` for `max_age`",
        ] {
            assert!(msgs.contains(&want), "{want}: {msgs:?}");
        }
        assert!(
            d.iter().all(|x| x.span.is_some()),
            "every problem has a place"
        );
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
