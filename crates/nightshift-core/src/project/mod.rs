//! Project-wide settings from `nightshift.toml`: the model here, the reading of the file
//! in [`reading`] (channels in `channels`).

use std::collections::BTreeMap;
use std::time::Duration;

mod channels;
mod reading;
mod web;

pub use reading::{parse_settings, url_has_password};

/// Settings shared by every pipeline of a project. Every field has a default, so the file
/// is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings {
    /// Metadata store file, relative to the project folder (the SQLite store).
    pub store_path: String,
    /// A PostgreSQL store shared by several hosts, instead of the file (`[store] url`).
    pub store_url: Option<String>,
    /// The environment variable holding the PostgreSQL password (else `PGPASSWORD`).
    pub store_password_env: Option<String>,
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
    /// The dbt target folders (artifacts) kept per task: those of its latest tries.
    pub dbt_artifacts_kept: u32,
    /// How dbt tasks run dbt unless they say otherwise (`[dbt] runner`).
    pub dbt_runner: crate::kinds::DbtRunner,
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
    /// A token written in the file (prefer `token_env`); it has the `admin` role.
    pub token: Option<String>,
    /// The environment variable holding the `admin` token.
    pub token_env: String,
    /// Named tokens, each with a role (`[web.tokens.NAME]`).
    pub tokens: Vec<NamedToken>,
    /// The name people reach the server by (besides localhost names on a loopback
    /// binding): accepted as Host and Origin.
    pub public_name: Option<String>,
    /// PEM files: HTTPS with these (and `Secure` cookies).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// A UI session ends after this long without a request…
    pub session_idle: Duration,
    /// …and this long after login in any case.
    pub session_max: Duration,
    /// A backfill from the UI or API over more runs than this is refused.
    pub max_backfill_runs: u32,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            bind: "127.0.0.1:8080".into(),
            token: None,
            token_env: "NIGHTSHIFT_TOKEN".into(),
            tokens: vec![],
            public_name: None,
            tls_cert: None,
            tls_key: None,
            session_idle: Duration::from_secs(12 * 3600),
            session_max: Duration::from_secs(7 * 86_400),
            max_backfill_runs: 1000,
        }
    }
}

/// Who may do what through the UI and API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Also trigger, backfill, clear, rerun, cancel, pause.
    Operator,
    /// Also mark tasks.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// `[web.tokens.NAME]`: a token read from `token_env`, with a role, optionally limited to
/// some pipelines.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedToken {
    pub name: String,
    pub role: Role,
    pub token_env: String,
    pub pipelines: Option<Vec<String>>,
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
        /// Private, loopback and link-local destinations are refused unless this is set.
        #[serde(default)]
        allow_private: bool,
    },
    /// Email through an SMTP server, over TLS unless `tls = "none"`.
    Smtp {
        host: String,
        port: u16,
        from: String,
        to: Vec<String>,
        tls: SmtpTls,
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

/// How an SMTP channel secures its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required: a server without it fails).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only for a relay on a trusted network, and never with credentials unless
    /// `allow_plaintext_auth = true`.
    None,
}

/// A source system a task reads from. Secrets never live here: a connection names the
/// environment variable that holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Connection {
    /// A SQLite file, relative to the project folder.
    Sqlite { path: String },
    /// A PostgreSQL database: its URL (`sslmode` and `sslrootcert` as libpq reads them)
    /// written in the file or read from `url_env`, and its password from `password_env`
    /// or else `PGPASSWORD`.
    Postgres {
        url: Option<String>,
        url_env: Option<String>,
        password_env: Option<String>,
    },
}

impl Default for ProjectSettings {
    fn default() -> Self {
        ProjectSettings {
            store_path: ".nightshift/nightshift.db".into(),
            store_url: None,
            store_password_env: None,
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
            dbt_artifacts_kept: 5,
            dbt_runner: crate::kinds::DbtRunner::Cli,
            log_max_bytes: 100 * 1024 * 1024,
        }
    }
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
    fn reads_a_postgres_store_and_refuses_passwords_in_files() {
        let (s, d) = parse_settings(
            "[store]\nurl = \"postgresql://ns@db:5432/ns?sslmode=verify-full\"\npassword_env = \"NS_PG\"\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            s.store_url.as_deref(),
            Some("postgresql://ns@db:5432/ns?sslmode=verify-full")
        );
        assert_eq!(s.store_password_env.as_deref(), Some("NS_PG"));
        for bad in [
            "url = \"postgresql://ns:hunter2@db/ns\"",
            "url = \"postgresql://ns@db/ns?password=hunter2\"",
            "url = \"mysql://db/ns\"",
            "path = \"x.db\"\nurl = \"postgresql://db/ns\"",
        ] {
            let (s, d) = parse_settings(&format!("[store]\n{bad}\n"));
            assert_eq!(d.len(), 1, "{bad}: {d:?}");
            assert!(s.store_url.is_none());
        }
    }

    #[test]
    fn reads_postgres_connections_without_passwords() {
        let (s, d) = parse_settings(
            "[connections.oltp]\nkind = \"postgres\"\nurl = \"postgresql://reader@db:5432/shop?sslmode=require\"\npassword_env = \"SHOP_PW\"\n[connections.wh]\nkind = \"postgres\"\nurl_env = \"WAREHOUSE_URL\"\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            s.connections["oltp"],
            Connection::Postgres {
                url: Some("postgresql://reader@db:5432/shop?sslmode=require".into()),
                url_env: None,
                password_env: Some("SHOP_PW".into()),
            }
        );
        assert_eq!(
            s.connections["wh"],
            Connection::Postgres {
                url: None,
                url_env: Some("WAREHOUSE_URL".into()),
                password_env: None,
            }
        );
        for (bad, says) in [
            (
                "url = \"postgresql://r:hunter2@db/shop\"",
                "holds a password",
            ),
            (
                "url = \"postgresql://db/shop?password=x\"",
                "holds a password",
            ),
            ("url = \"mysql://db/shop\"", "is not a PostgreSQL URL"),
            (
                "url = \"postgresql://db/shop\"\nurl_env = \"U\"",
                "both `url` and `url_env`",
            ),
            ("password_env = \"P\"", "needs a `url` or a `url_env`"),
            (
                "url = \"postgresql://db/shop\"\npath = \"x.db\"",
                "`path` does not apply to a `postgres` connection",
            ),
        ] {
            let (s, d) = parse_settings(&format!("[connections.x]\nkind = \"postgres\"\n{bad}\n"));
            assert_eq!(d.len(), 1, "{bad}: {d:?}");
            assert!(d[0].message.contains(says), "{bad}: {}", d[0].message);
            assert!(s.connections.is_empty());
        }
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
                tls: SmtpTls::Starttls,
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
