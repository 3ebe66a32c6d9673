//! Reading `[web]`: the server's address, its tokens and their roles, HTTPS, sessions and
//! limits.

use toml::de::DeTable;

use super::*;
use crate::diag::Diagnostic;
use crate::time;
use crate::toml_reader::{Span, TableReader};

const WEB_KEYS: &[&str] = &[
    "bind",
    "token",
    "token_env",
    "tokens",
    "public_name",
    "tls_cert",
    "tls_key",
    "session_idle",
    "session_max",
    "max_backfill_runs",
];
const TOKEN_KEYS: &[&str] = &["role", "token_env", "pipelines"];

pub(super) fn read_web(
    t: &DeTable<'_>,
    span: Span,
    s: &mut ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) {
    let r = TableReader::new(t, span, "`[web]`", &[WEB_KEYS]);
    if let Some(b) = r.string("bind", diags) {
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
    if let Some(tok) = r.string("token", diags) {
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
    if let Some(e) = r.string("token_env", diags) {
        s.web.token_env = e.value;
    }
    if let Some(n) = r.string("public_name", diags) {
        s.web.public_name = Some(n.value);
    }
    let cert = r.string("tls_cert", diags);
    let key = r.string("tls_key", diags);
    match (&cert, &key) {
        (Some(c), None) => diags.push(
            Diagnostic::error("`tls_cert` without `tls_key`", Some(c.span.clone()))
                .with_help("HTTPS needs both: `tls_key = \"key.pem\"`"),
        ),
        (None, Some(k)) => diags.push(
            Diagnostic::error("`tls_key` without `tls_cert`", Some(k.span.clone()))
                .with_help("HTTPS needs both: `tls_cert = \"cert.pem\"`"),
        ),
        _ => {}
    }
    s.web.tls_cert = cert.map(|c| c.value);
    s.web.tls_key = key.map(|k| k.value);
    for (key, slot) in [
        ("session_idle", &mut s.web.session_idle),
        ("session_max", &mut s.web.session_max),
    ] {
        if let Some(v) = r.string(key, diags) {
            match time::parse_duration(&v.value) {
                Ok(d) if !d.is_zero() => *slot = d,
                _ => diags.push(
                    Diagnostic::error(
                        format!("invalid duration `{}` for `{key}`", v.value),
                        Some(v.span),
                    )
                    .with_help("write e.g. `12h` or `7d`"),
                ),
            }
        }
    }
    if let Some(n) = r.uint("max_backfill_runs", 1_000_000, diags) {
        s.web.max_backfill_runs = (n.value as u32).max(1);
    }
    if let Some(v) = t.get("tokens") {
        match v.get_ref() {
            toml::de::DeValue::Table(tt) => read_tokens(tt, s, diags),
            _ => diags.push(
                Diagnostic::error("`tokens` in `[web]` must be a table", Some(v.span()))
                    .with_help("write `[web.tokens.ci]` with `role` and `token_env`"),
            ),
        }
    }
    r.finish(diags);
}

fn read_tokens(t: &DeTable<'_>, s: &mut ProjectSettings, diags: &mut Vec<Diagnostic>) {
    for (name, v) in t.iter() {
        let label = format!("token `{}`", name.get_ref());
        let toml::de::DeValue::Table(tt) = v.get_ref() else {
            diags.push(
                Diagnostic::error(format!("{label} must be a table"), Some(v.span()))
                    .with_help("write `[web.tokens.ci]` with `role` and `token_env`"),
            );
            continue;
        };
        let r = TableReader::new(tt, v.span(), label.clone(), &[TOKEN_KEYS]);
        let role = match r.string("role", diags) {
            Some(ro) => match Role::parse(&ro.value) {
                Some(role) => Some(role),
                None => {
                    diags.push(
                        Diagnostic::error(
                            format!("unknown role `{}` in {label}", ro.value),
                            Some(ro.span),
                        )
                        .with_help("use `viewer`, `operator` or `admin`"),
                    );
                    None
                }
            },
            None => {
                diags.push(
                    Diagnostic::error(format!("{label} needs a `role`"), Some(v.span()))
                        .with_help("`role = \"viewer\"`, `\"operator\"` or `\"admin\"`"),
                );
                None
            }
        };
        let env = r.string("token_env", diags);
        if env.is_none() {
            diags.push(
                Diagnostic::error(format!("{label} needs `token_env`"), Some(v.span())).with_help(
                    "tokens live in the environment: `token_env = \"NIGHTSHIFT_TOKEN_CI\"`",
                ),
            );
        }
        let pipelines = r
            .string_list("pipelines", false, diags)
            .map(|l| l.into_iter().map(|p| p.value).collect());
        r.finish(diags);
        if let (Some(role), Some(env)) = (role, env) {
            s.web.tokens.push(NamedToken {
                name: name.get_ref().to_string(),
                role,
                token_env: env.value,
                pipelines,
            });
        }
    }
}
