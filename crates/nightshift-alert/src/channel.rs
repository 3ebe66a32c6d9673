//! Delivery of one message to one channel, with the channel's timeout and retries. Used by
//! alerts and by `notify` tasks alike.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nightshift_core::project::{Channel, SmtpTls, WebhookFormat};
use serde_json::{Value, json};

/// What a channel is told.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// One line: the email subject, the first line of a chat message.
    pub subject: String,
    /// Plain text for people.
    pub text: String,
    /// The structured form (webhook body, command stdin).
    pub data: Value,
    /// The page this message is about, if any.
    pub link: Option<String>,
}

/// How a delivery went: attempts made and, on failure, the last error.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub attempts: u32,
    pub error: Option<String>,
}

/// Reads an environment variable (a seam so tests of the parsing need no process env).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    #[allow(clippy::disallowed_methods)]
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub use nightshift_core::redact::redact_url as redact;

fn retries_of(ch: &Channel) -> u32 {
    match ch {
        Channel::Log => 0,
        Channel::Webhook { retries, .. }
        | Channel::Smtp { retries, .. }
        | Channel::Command { retries, .. } => *retries,
    }
}

/// Delivers with the channel's retries (backoff 0.5 s, 1 s, 2 s, … capped at 16 s).
pub fn deliver(
    name: &str,
    ch: &Channel,
    msg: &Message,
    project_dir: &Path,
    env: Env<'_>,
) -> Outcome {
    deliver_reporting(name, ch, msg, project_dir, env, &mut |attempt, e| {
        tracing::warn!(channel = name, attempt, error = %e, "delivery failed");
    })
}

/// Where a channel delivers, safe to print (webhook URLs as scheme and host only).
pub fn describe(ch: &Channel, env: Env<'_>) -> String {
    match ch {
        Channel::Log => ".nightshift/notifications.jsonl".into(),
        Channel::Webhook { url, url_env, .. } => url
            .clone()
            .or_else(|| url_env.as_deref().and_then(env))
            .map(|u| redact(&u))
            .unwrap_or_else(|| "an unset URL".into()),
        Channel::Smtp { host, port, to, .. } => {
            format!("{} via SMTP {host}:{port}", to.join(", "))
        }
        Channel::Command { command, .. } => {
            format!("`{}`", command.first().map(String::as_str).unwrap_or(""))
        }
    }
}

/// [`deliver`], telling `failed` about each failed attempt (1-based) as it happens.
pub fn deliver_reporting(
    name: &str,
    ch: &Channel,
    msg: &Message,
    project_dir: &Path,
    env: Env<'_>,
    failed: &mut dyn FnMut(u32, &str),
) -> Outcome {
    let mut last = None;
    let retries = retries_of(ch);
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << (attempt - 1).min(5)));
        }
        match deliver_once(name, ch, msg, project_dir, env) {
            Ok(()) => {
                return Outcome {
                    attempts: attempt + 1,
                    error: None,
                };
            }
            Err(e) => {
                failed(attempt + 1, &e);
                last = Some(e);
            }
        }
    }
    Outcome {
        attempts: retries + 1,
        error: last,
    }
}

/// One attempt. Errors never quote secrets (webhook URLs are redacted).
pub fn deliver_once(
    name: &str,
    ch: &Channel,
    msg: &Message,
    project_dir: &Path,
    env: Env<'_>,
) -> Result<(), String> {
    match ch {
        Channel::Log => {
            let path = project_dir.join(".nightshift/notifications.jsonl");
            let line = json!({"channel": name, "subject": msg.subject, "summary": msg.data, "link": msg.link}).to_string();
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{line}"))
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            tracing::info!(channel = name, "{}", msg.subject);
            Ok(())
        }
        Channel::Webhook {
            url,
            url_env,
            timeout_ms,
            format,
            allow_private,
            ..
        } => {
            let url = match (url, url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => {
                    env(var).ok_or_else(|| format!("environment variable `{var}` is not set"))?
                }
                (None, None) => return Err("no url".into()),
            };
            let body = match format {
                WebhookFormat::Json => {
                    let mut d = msg.data.clone();
                    if let Value::Object(m) = &mut d {
                        m.insert("subject".into(), json!(msg.subject));
                        m.insert("text".into(), json!(msg.text));
                        m.insert("link".into(), json!(msg.link));
                    }
                    d
                }
                WebhookFormat::Slack => slack_body(msg),
            };
            crate::guard::check_destination(&url, *allow_private)?;
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(*timeout_ms)))
                .http_status_as_error(true)
                // A redirect could lead to an address the check above refuses.
                .max_redirects(0)
                .build();
            let agent = ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                crate::guard::GuardedResolver::new(*allow_private),
            );
            let answer = agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string())
                .map_err(|e| {
                    format!(
                        "{} ({})",
                        crate::guard::scrub(&e.to_string(), &url),
                        redact(&url)
                    )
                })?;
            // Not followed: a redirect could lead where the destination check refuses.
            if answer.status().is_redirection() {
                return Err(format!(
                    "{} answered with a redirect ({}), which is not followed; configure the final URL",
                    redact(&url),
                    answer.status()
                ));
            }
            Ok(())
        }
        Channel::Smtp {
            host,
            port,
            from,
            to,
            tls,
            username_env,
            password_env,
            timeout_ms,
            ..
        } => send_mail(
            host,
            *port,
            from,
            to,
            *tls,
            username_env.as_deref(),
            password_env.as_deref(),
            *timeout_ms,
            msg,
            env,
        ),
        Channel::Command {
            command,
            timeout_ms,
            ..
        } => run_command(command, *timeout_ms, msg, project_dir),
    }
}

/// Slack's incoming-webhook shape: `text` as the fallback, a section block with a link.
fn slack_body(msg: &Message) -> Value {
    let mut text = format!("*{}*\n{}", msg.subject, msg.text);
    if let Some(l) = &msg.link {
        text.push_str(&format!("\n<{l}|Open in nightshift>"));
    }
    json!({
        "text": msg.subject,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    })
}

#[allow(clippy::too_many_arguments)]
fn send_mail(
    host: &str,
    port: u16,
    from: &str,
    to: &[String],
    tls: SmtpTls,
    username_env: Option<&str>,
    password_env: Option<&str>,
    timeout_ms: u64,
    msg: &Message,
    env: Env<'_>,
) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{SmtpTransport, Transport};
    let mut b = lettre::Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("invalid from address `{from}`: {e}"))?,
        )
        .subject(msg.subject.clone());
    for t in to {
        b = b.to(t
            .parse()
            .map_err(|e| format!("invalid to address `{t}`: {e}"))?);
    }
    let mut body = msg.text.clone();
    if let Some(l) = &msg.link {
        body.push_str(&format!("\n\n{l}\n"));
    }
    let email = b
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("building the email: {e}"))?;
    let mut t = match tls {
        SmtpTls::Starttls => {
            SmtpTransport::starttls_relay(host).map_err(|e| format!("SMTP `{host}`: {e}"))?
        }
        SmtpTls::Implicit => {
            SmtpTransport::relay(host).map_err(|e| format!("SMTP `{host}`: {e}"))?
        }
        SmtpTls::None => SmtpTransport::builder_dangerous(host),
    }
    .port(port)
    .timeout(Some(Duration::from_millis(timeout_ms)));
    if let (Some(u), Some(p)) = (username_env, password_env) {
        let user = env(u).ok_or_else(|| format!("environment variable `{u}` is not set"))?;
        let pass = env(p).ok_or_else(|| format!("environment variable `{p}` is not set"))?;
        t = t.credentials(Credentials::new(user, pass));
    }
    t.build()
        .send(&email)
        .map(|_| ())
        .map_err(|e| format!("SMTP {host}:{port}: {e}"))
}

/// Runs the channel's argv in the project folder with the message as JSON on stdin; fails on
/// a non-zero exit or when it outlives the timeout (then its process is killed).
fn run_command(argv: &[String], timeout_ms: u64, msg: &Message, dir: &Path) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env("NIGHTSHIFT_ALERT_SUBJECT", &msg.subject)
        .env("NIGHTSHIFT_ALERT_LINK", msg.link.as_deref().unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut body = msg.data.clone();
        if let Value::Object(m) = &mut body {
            m.insert("subject".into(), json!(msg.subject));
            m.insert("text".into(), json!(msg.text));
            m.insert("link".into(), json!(msg.link));
        }
        // A program that does not read its stdin is fine.
        let _ = stdin.write_all(body.to_string().as_bytes());
    }
    let until = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = (&mut e).take(2000).read_to_string(&mut err);
                }
                return Err(format!("`{prog}` exited with {status}: {}", err.trim()));
            }
            Ok(None) if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{prog}` timed out after {timeout_ms} ms"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{prog}`: {e}")),
        }
    }
}
