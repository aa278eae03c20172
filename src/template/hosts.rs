//! Where URLs may point: the host allow-list of a templated integration (`*.zendesk.com`,
//! `host:8443`, `host:*`), and the URL-prefix allow-list of the connect flow's `return_to`.
//!
//! Owns matching only; it never builds a URL.

use super::base::BaseUrl;

/// The hosts a templated URL may resolve to, and whether plain http is allowed.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    patterns: Vec<HostPattern>,
    allow_http: bool,
}

#[derive(Debug, Clone)]
struct HostPattern {
    /// Lower case; `*.example.com` matches any host below example.com (not example.com).
    host: String,
    port: PortRule,
}

#[derive(Debug, Clone, Copy)]
enum PortRule {
    /// The scheme's default port only.
    Default,
    Any,
    Exact(u16),
}

impl Hosts {
    /// `patterns` like `*.zendesk.com`, `login.example.com:8443`, `127.0.0.1:*`.
    pub fn new(patterns: &[String], allow_http: bool) -> Result<Hosts, String> {
        let patterns = patterns
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(Hosts {
            patterns,
            allow_http,
        })
    }

    /// The filled URL is https (or http where allowed) on an allowed host; both URL parsers
    /// grantd uses must agree on the host, so no parser difference can smuggle another one in.
    pub(super) fn check(&self, filled: &str) -> Result<(), String> {
        let url = url::Url::parse(filled).map_err(|_| "does not make a valid URL".to_string())?;
        let base = BaseUrl::parse(filled)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err("the URL must be https".into()),
        }
        let seen = base.host().to_ascii_lowercase();
        if url.host_str().map(str::to_ascii_lowercase).as_deref() != Some(seen.as_str()) {
            return Err("does not make an unambiguous host".into());
        }
        if !self.allows(&url) {
            return Err("the host is not in the integration's allowed_hosts".into());
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub(super) fn allows(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        self.patterns.iter().any(|p| p.matches(&host, url.port()))
    }
}

impl HostPattern {
    fn parse(p: &str) -> Result<HostPattern, String> {
        let (host, port) = match p.rsplit_once(':') {
            Some((h, "*")) => (h, PortRule::Any),
            Some((h, n)) => (
                h,
                PortRule::Exact(
                    n.parse()
                        .map_err(|_| format!("allowed host `{p}`: `{n}` is not a port"))?,
                ),
            ),
            None => (p, PortRule::Default),
        };
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty() || !bare.split('.').all(valid_label) {
            return Err(format!(
                "allowed host `{p}`: use a host name, `*.example.com` or `host:port`"
            ));
        }
        Ok(HostPattern {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => host == self.host,
        };
        let port_ok = match self.port {
            PortRule::Default => port.is_none(),
            PortRule::Any => true,
            PortRule::Exact(n) => port == Some(n),
        };
        host_ok && port_ok
    }
}

pub(super) fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

pub(super) fn host_name(h: &str) -> bool {
    h.len() <= 253 && h.split('.').all(valid_label)
}

pub(super) fn port_number(p: &str) -> bool {
    p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
}

/// Whether `return_to` (the connect flow's) is under one of the allowed prefixes: same scheme, host and port, and
/// a path that is the prefix's or continues it at a `/`. URLs are parsed (WHATWG), so
/// `https://app.example@evil.example/` or `//evil.example` do not pass for `app.example`.
pub fn under_prefix(return_to: &str, allow: &[String]) -> bool {
    let Ok(u) = url::Url::parse(return_to) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return false;
    }
    allow
        .iter()
        .filter_map(|a| url::Url::parse(a).ok())
        .any(|a| {
            a.scheme() == u.scheme()
                && a.host_str() == u.host_str()
                && a.port_or_known_default() == u.port_or_known_default()
                && path_under(a.path(), u.path())
        })
}

fn path_under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_must_be_under_an_allowed_prefix() {
        let allow = vec![
            "https://app.example/settings".to_string(),
            "http://localhost:3000/".to_string(),
        ];
        for ok in [
            "https://app.example/settings",
            "https://app.example/settings/integrations?tab=1",
            "https://APP.example/settings#x",
            "https://app.example:443/settings/",
            "http://localhost:3000/anything",
        ] {
            assert!(under_prefix(ok, &allow), "{ok} should pass");
        }
        for bad in [
            "https://app.example/settingsx",
            "https://app.example/other",
            "https://app.example.evil.example/settings",
            "https://app.example@evil.example/settings",
            "https://user@app.example/settings",
            "http://app.example/settings",
            "https://app.example:8443/settings",
            "//evil.example/settings",
            "javascript:alert(1)",
            "https://app.example/settings/../admin",
            "http://localhost:3001/",
        ] {
            assert!(!under_prefix(bad, &allow), "{bad} must not pass");
        }
        assert!(!under_prefix("https://app.example/settings", &[]));
    }

    #[test]
    fn wildcards_match_below_the_domain_only() {
        let p = HostPattern::parse("*.zendesk.com").unwrap();
        assert!(p.matches("acme.zendesk.com", None));
        assert!(p.matches("a.b.zendesk.com", None));
        assert!(!p.matches("zendesk.com", None));
        assert!(!p.matches("evilzendesk.com", None));
        assert!(!p.matches("acme.zendesk.com", Some(8443)));
    }
}
