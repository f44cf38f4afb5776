//! Which network addresses waas may be pointed at, and how URLs are shown.
//!
//! - Webhooks may point at loopback and private receivers (self-hosters run them), but
//!   never at link-local or cloud-metadata addresses (`169.254.169.254`, `fe80::/10`,
//!   their IPv4-mapped forms), and never at waas itself (an endless loop). The check runs
//!   on the configured URL and again on every address its name resolves to.
//! - URLs inside send requests (`file.url`, `link.thumbnail_url`) are fetched by the
//!   gateway on a caller's behalf: http(s) only, and not at loopback, private or
//!   link-local addresses unless `send.allow_private_urls`.
//! - URLs shown through the API lose their passwords and query values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Names that reach a cloud provider's instance metadata service.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata", "instance-data"];

/// Why an address is never a target, if it is one of those.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    let ip = canonical(ip);
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() {
                Some("a link-local address (169.254.0.0/16, where cloud metadata services live)")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("a cloud metadata address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address (fe80::/10)")
            } else if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
                Some("a cloud metadata address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
    }
}

/// Loopback, private (RFC 1918, CGNAT, unique-local) or forbidden.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    if forbidden_ip(ip).is_some() {
        return true;
    }
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host of a parsed URL as an IP, when it is one (the URL parser already turned
/// `0xA9FEA9FE`, `2852039166` and friends into dotted form).
fn host_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Why a webhook may not point at `url`, given where waas itself listens.
pub fn webhook_target_problem(url: &reqwest::Url, listen: SocketAddr) -> Option<String> {
    let host = url
        .host_str()?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    if METADATA_NAMES.contains(&host.as_str()) {
        return Some(format!("`{host}` is a cloud metadata service"));
    }
    if let Some(ip) = host_ip(url)
        && let Some(why) = forbidden_ip(ip)
    {
        return Some(format!("{ip} is {why}"));
    }
    // waas posting to itself: every event would make another (an endless loop).
    let port = url.port_or_known_default()?;
    let local = host == "localhost"
        || host_ip(url).is_some_and(|ip| {
            canonical(ip).is_loopback() || ip == listen.ip() || listen.ip().is_unspecified()
        });
    if port == listen.port() && local {
        return Some(format!(
            "it points at waas itself ({host}:{port} is server.listen), which would loop"
        ));
    }
    None
}

/// Why a URL in a send request may not be used, if it may not.
pub fn content_url_problem(raw: &str, allow_private: bool) -> Option<String> {
    let url = match reqwest::Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return Some(format!("`{raw}` is not a URL: {e}")),
    };
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Some("must be an http:// or https:// URL".into());
    }
    if allow_private {
        return host_ip(&url)
            .and_then(forbidden_ip)
            .map(|why| format!("points at {why}"));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host == "localhost"
        || host.ends_with(".localhost")
        || METADATA_NAMES.contains(&host.as_str())
        || host_ip(&url).is_some_and(is_internal_ip)
    {
        return Some(
            "points at a loopback, private or link-local address; set send.allow_private_urls = true to allow that"
                .into(),
        );
    }
    None
}

/// A URL as it may be shown: a password becomes `***`, and so does every query value.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(raw) else {
        return "(not a URL)".into();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_string()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Resolves webhook host names for the HTTP client, dropping link-local and metadata
/// addresses, so a name that resolves there is refused like the literal address.
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| forbidden_ip(a.ip()).is_none())
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = format!(
                    "`{host}` resolves only to link-local or metadata addresses, which waas never calls"
                )
                .into();
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolver, shared by the clients that call out.
pub fn resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_and_link_local_are_never_targets() {
        let listen: SocketAddr = "127.0.0.1:3010".parse().unwrap();
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://0xA9FEA9FE/",
            "http://2852039166/",
            "http://[fe80::1]/hook",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/",
            "http://127.0.0.1:3010/v1/webhooks/a/test",
            "http://localhost:3010/hook",
        ] {
            assert!(
                webhook_target_problem(&url(bad), listen).is_some(),
                "{bad} should be refused"
            );
        }
        for ok in [
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/hook",
            "https://example.com/hook",
            "http://[::1]:9000/",
        ] {
            assert_eq!(webhook_target_problem(&url(ok), listen), None, "{ok}");
        }
        let any: SocketAddr = "0.0.0.0:3010".parse().unwrap();
        assert!(webhook_target_problem(&url("http://127.0.0.1:3010/"), any).is_some());
    }

    #[test]
    fn content_urls_stay_outside_unless_allowed() {
        for bad in [
            "file:///etc/passwd",
            "gopher://example.com/",
            "http://127.0.0.1/x",
            "http://localhost/x",
            "http://10.0.0.1/x",
            "http://192.168.1.1/x",
            "http://[::1]/x",
            "http://169.254.169.254/",
            "not a url",
        ] {
            assert!(content_url_problem(bad, false).is_some(), "{bad}");
        }
        assert_eq!(
            content_url_problem("https://example.com/a.png", false),
            None
        );
        assert_eq!(content_url_problem("http://10.0.0.1/x", true), None);
        assert!(content_url_problem("http://169.254.169.254/", true).is_some());
        assert!(content_url_problem("file:///etc/passwd", true).is_some());
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            redact_url("https://user:hunter2@example.com/hook?token=abc&x=1"),
            "https://user:***@example.com/hook?token=***&x=***"
        );
        assert_eq!(
            redact_url("http://example.com/hook"),
            "http://example.com/hook"
        );
    }
}
