//! How a URL is shown: `scheme://host[:port]/…`, and nothing else. Its user, password,
//! path and query can each be a credential (a webhook's path is often its secret; a query
//! may carry `token=` or libpq's `password=`).

/// The URL as it may be shown anywhere: in messages, logs, the API and the UI.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".to_owned();
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let scheme: String = scheme
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .collect();
    if end == rest.len() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn only_scheme_host_and_port_show() {
        assert_eq!(
            redact_url("http://user:pass@hooks.example:8443/services/T0/B1/xyz?token=abc#f"),
            "http://hooks.example:8443/…"
        );
        assert_eq!(
            redact_url("https://hooks.example?token=abc"),
            "https://hooks.example/…"
        );
        assert_eq!(
            redact_url("postgresql://ns:s3cret@db.example:5433/ns?password=x"),
            "postgresql://db.example:5433/…"
        );
        assert_eq!(
            redact_url("postgresql://localhost"),
            "postgresql://localhost"
        );
        assert_eq!(redact_url("not a url with secret"), "…");
    }
}
