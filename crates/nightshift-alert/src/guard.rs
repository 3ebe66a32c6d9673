//! Where a webhook may go. A destination that resolves to a loopback, private, link-local
//! or cloud-metadata address is refused before any connection is made, unless the channel
//! sets `allow_private = true`; the same check runs again inside the HTTP client's
//! resolver, so a name that resolves differently the second time (DNS rebinding) is caught
//! too. Redirects are not followed (see the channel).

use std::net::{IpAddr, ToSocketAddrs};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Why an address is refused as a webhook's destination, if it is.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
                Some("a cloud metadata address")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("private")
            } else if v4.is_unspecified() || v4.is_broadcast() || o[0] == 0 {
                Some("not a host address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[0] == 0xfd00 && s[1] == 0x0ec2 {
                Some("a cloud metadata address")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("not a host address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private")
            } else {
                None
            }
        }
    }
}

/// Refuses a URL whose host resolves to an address [`forbidden`] names (an address written
/// in the URL is judged without any lookup).
pub fn check_destination(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("not a valid URL: {}", crate::redact(url)))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("the URL has no host: {}", crate::redact(url)))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", crate::redact(url)))?
            .map(|a| a.ip())
            .collect(),
    };
    for ip in addrs {
        if let Some(why) = forbidden(ip) {
            return Err(refusal(url, ip, why));
        }
    }
    Ok(())
}

fn refusal(url: &str, ip: IpAddr, why: &str) -> String {
    format!(
        "refused to send to {} ({ip} is {why}); set `allow_private = true` on the channel if this destination is intended",
        crate::redact(url)
    )
}

/// The client's resolver, refusing what [`check_destination`] refuses.
#[derive(Debug)]
pub struct GuardedResolver {
    inner: DefaultResolver,
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        GuardedResolver {
            inner: DefaultResolver::default(),
            allow_private,
        }
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if !self.allow_private
            && let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|w| (a.ip(), w)))
        {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                refusal(&uri.to_string(), ip, why),
            )));
        }
        Ok(addrs)
    }
}

/// An error message about `url` without the URL's secrets: its user and password, its path
/// and its query, in case the HTTP client quoted any of them.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &crate::redact(url));
    if let Some((_, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let mut parts: Vec<&str> = vec![tail];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            parts.push(userinfo);
            parts.extend(userinfo.split(':'));
        }
        if let Some((path, query)) = tail.split_once('?') {
            parts.push(path);
            parts.push(query);
            parts.extend(
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(_, v)| v),
            );
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in parts.into_iter().filter(|p| p.len() >= 3) {
            out = out.replace(p, "/…");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_private_and_loopback_destinations_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.1.2.3/hook",
            "http://192.168.0.9/",
            "http://127.0.0.1:9/x",
            "http://[::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://localhost:9/",
        ] {
            let e = check_destination(url, false).unwrap_err();
            assert!(e.contains("refused"), "{url}: {e}");
            assert!(check_destination(url, true).is_ok());
        }
        assert!(check_destination("http://93.184.215.14/hook", false).is_ok());
    }

    #[test]
    fn errors_lose_the_urls_secrets() {
        let url = "http://user:pa55word@hooks.example/services/T0?token=s3cret";
        let e = scrub(
            &format!("http status: 404 for {url}; token=s3cret user:pa55word"),
            url,
        );
        for secret in ["pa55word", "s3cret", "services/T0"] {
            assert!(!e.contains(secret), "{e}");
        }
    }
}
