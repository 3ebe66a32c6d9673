//! Reading `[channels.*]`: where alerts and notifications go (log, file, command, webhook,
//! SMTP), each kind with its own keys and checks.

use toml::de::DeTable;

use super::reading::{CHANNEL_KEYS, COMMAND_KEYS, SMTP_KEYS, WEBHOOK_KEYS};
use super::*;
use crate::diag::Diagnostic;
use crate::time;
use crate::toml_reader::{Span, TableReader};

pub(super) fn read_channels(
    t: &DeTable<'_>,
    _span: Span,
    s: &mut ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    for (name, v) in t.iter() {
        let label = format!("channel `{}`", name.get_ref());
        let toml::de::DeValue::Table(ct) = v.get_ref() else {
            diags.push(
                Diagnostic::error(format!("{label} must be a table"), Some(v.span())).with_help(
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
        let kind = r.string("kind", diags);
        let timeout_ms = r
            .string("timeout", diags)
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
            .uint("retries", 20, diags)
            .map(|v| v.value as u32)
            .unwrap_or(3);
        let mut sub = Subscription::default();
        if let Some(list) = r.string_list("events", false, diags) {
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
        if let Some(n) = r.uint("after_failures", 1000, diags) {
            sub.after_failures = (n.value as u32).max(1);
        }
        let channel = match kind.as_ref().map(|k| k.value.as_str()) {
            Some("log") => Some(Channel::Log),
            Some("webhook") => {
                let url = r.string("url", diags);
                let url_env = r.string("url_env", diags);
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
                let format = match r.string("format", diags) {
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
                    allow_private: r.bool("allow_private", diags).is_some_and(|b| b.value),
                })
            }
            Some("smtp") => {
                let host = r.string("host", diags);
                let from = r.string("from", diags);
                let to = r.string_list("to", false, diags).unwrap_or_default();
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
                let port = r.uint("port", 65_535, diags).map(|p| p.value as u16);
                let tls = match (r.string("tls", diags), r.bool("starttls", diags)) {
                    (Some(t), _) => match t.value.as_str() {
                        "starttls" => SmtpTls::Starttls,
                        "implicit" => SmtpTls::Implicit,
                        "none" => SmtpTls::None,
                        other => {
                            diags.push(
                                Diagnostic::error(
                                    format!("unknown tls `{other}` in {label}"),
                                    Some(t.span),
                                )
                                .with_help("use `starttls`, `implicit` (port 465) or `none`"),
                            );
                            SmtpTls::Starttls
                        }
                    },
                    // The older switch: `starttls = false` meant no TLS.
                    (None, Some(b)) if b.value => SmtpTls::Starttls,
                    (None, Some(_)) => SmtpTls::None,
                    (None, None) if port == Some(465) => SmtpTls::Implicit,
                    (None, None) => SmtpTls::Starttls,
                };
                let username_env = r.string("username_env", diags);
                let password_env = r.string("password_env", diags);
                let plaintext_ok = r
                    .bool("allow_plaintext_auth", diags)
                    .is_some_and(|b| b.value);
                if tls == SmtpTls::None
                    && !plaintext_ok
                    && let Some(cred) = username_env.as_ref().or(password_env.as_ref())
                {
                    diags.push(
                        Diagnostic::error(
                            format!("{label} would send its credentials in cleartext (`tls = \"none\"`)"),
                            Some(cred.span.clone()),
                        )
                        .with_help("use `tls = \"starttls\"` or `\"implicit\"`; on a trusted network, `allow_plaintext_auth = true` accepts the risk"),
                    );
                }
                Some(Channel::Smtp {
                    host: host.map(|h| h.value).unwrap_or_default(),
                    port: port.unwrap_or(25),
                    from: from.map(|f| f.value).unwrap_or_default(),
                    to: to.into_iter().map(|t| t.value).collect(),
                    tls,
                    username_env: username_env.map(|u| u.value),
                    password_env: password_env.map(|u| u.value),
                    timeout_ms,
                    retries,
                })
            }
            Some("command") => {
                let command = r.string_list("command", false, diags).unwrap_or_default();
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
                        .with_help("`kind = \"log\"`, `\"webhook\"`, `\"smtp\"` or `\"command\"`"),
                );
                None
            }
        };
        s.alerts
            .subscriptions
            .insert(name.get_ref().to_string(), sub);
        r.finish(diags);
        if let Some(c) = channel {
            s.channels.insert(name.get_ref().to_string(), c);
        }
    }
}
