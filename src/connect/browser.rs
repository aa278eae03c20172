//! Binding an authorization request to the browser that started it (RFC 9700 §2.1 and §4.7.1:
//! CSRF and login injection). When a connect link is used on grantd's public listener, that
//! browser gets a random 256-bit cookie and the `state` records the cookie's SHA-256; the
//! callback is refused unless the browser that delivers it sends the cookie back.
//!
//! Owns the cookie: its name (one per flow, so flows started in two tabs do not evict each
//! other's), its attributes, and reading it from a request. Whether a flow is bound, and the
//! check itself, belong to [`super::Connect`] and the store.

use std::time::Duration;

/// Cookie names are this plus the start of the state's hash (which the callback knows).
const NAME: &str = "grantd_connect_";

/// How this deployment's binding cookies are scoped, from `connect.public_url`: `Secure` and
/// `__Host-` (so a sibling subdomain cannot plant one) when it is https.
#[derive(Debug, Clone)]
pub struct CookieScope {
    origin: url::Origin,
    secure: bool,
}

impl CookieScope {
    pub fn new(public_url: &str) -> Option<CookieScope> {
        let u = url::Url::parse(public_url).ok()?;
        Some(CookieScope {
            origin: u.origin(),
            secure: u.scheme() == "https",
        })
    }

    /// Whether a browser sent to `redirect_uri` brings back the cookies this listener sets:
    /// only when that URI is on `public_url`'s origin. (An app that hosts the redirect URI
    /// relays the callback itself, and must bind the flow to its user's session.)
    pub fn covers(&self, redirect_uri: &str) -> bool {
        url::Url::parse(redirect_uri).is_ok_and(|u| u.origin() == self.origin)
    }

    /// The cookie's name for the state whose (hex SHA-256) hash is `state_hash`.
    pub fn name(&self, state_hash: &str) -> String {
        let prefix = if self.secure { "__Host-" } else { "" };
        format!("{prefix}{NAME}{}", &state_hash[..16.min(state_hash.len())])
    }

    /// `__Host-` requires `Path=/`; otherwise only the callback's own path gets the cookie.
    fn attributes(&self, redirect_uri: &str) -> String {
        let path = if self.secure {
            "/".to_string()
        } else {
            url::Url::parse(redirect_uri).map_or("/".into(), |u| u.path().to_string())
        };
        let secure = if self.secure { "; Secure" } else { "" };
        format!("Path={path}; HttpOnly; SameSite=Lax{secure}")
    }

    /// The `Set-Cookie` value binding the browser: `SameSite=Lax`, so it comes back on the
    /// provider's top-level redirect; it lives as long as the state.
    pub fn set(&self, state_hash: &str, secret: &str, redirect_uri: &str, ttl: Duration) -> String {
        format!(
            "{}={secret}; {}; Max-Age={}",
            self.name(state_hash),
            self.attributes(redirect_uri),
            ttl.as_secs().max(1)
        )
    }

    /// The `Set-Cookie` value that removes it (same name, path and flags).
    pub fn clear(&self, state_hash: &str, redirect_uri: &str) -> String {
        format!(
            "{}=; {}; Max-Age=0",
            self.name(state_hash),
            self.attributes(redirect_uri)
        )
    }
}

/// The value of cookie `name` in a request's `Cookie` headers (RFC 6265 §5.4: `a=b; c=d`).
pub fn find<'a>(cookie_headers: &[&'a str], name: &str) -> Option<&'a str> {
    cookie_headers
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn over_https_the_cookie_is_secure_host_prefixed_and_site_wide() {
        let s = CookieScope::new("https://connect.example").unwrap();
        let cb = "https://connect.example/oauth/callback";
        assert!(s.covers(cb));
        assert!(s.covers("https://connect.example:443/elsewhere"));
        for other in [
            "http://connect.example/oauth/callback",
            "https://app.example/oauth/callback",
            "https://connect.example:8443/oauth/callback",
        ] {
            assert!(!s.covers(other), "{other}");
        }
        assert_eq!(
            s.set(HASH, "SECRET", cb, Duration::from_secs(600)),
            "__Host-grantd_connect_0123456789abcdef=SECRET; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=600"
        );
        assert_eq!(
            s.clear(HASH, cb),
            "__Host-grantd_connect_0123456789abcdef=; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0"
        );
    }

    #[test]
    fn over_http_the_cookie_is_scoped_to_the_callback_path() {
        let s = CookieScope::new("http://127.0.0.1:4182").unwrap();
        let cb = "http://127.0.0.1:4182/oauth/callback";
        assert!(s.covers(cb));
        assert_eq!(
            s.set(HASH, "S", cb, Duration::from_millis(1500)),
            "grantd_connect_0123456789abcdef=S; Path=/oauth/callback; HttpOnly; SameSite=Lax; Max-Age=1"
        );
        assert_eq!(
            s.clear(HASH, cb),
            "grantd_connect_0123456789abcdef=; Path=/oauth/callback; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }

    #[test]
    fn a_cookie_is_found_by_its_exact_name_in_any_cookie_header() {
        let headers = [
            "a=1; grantd_connect_x=no",
            "grantd_connect_0123=yes; b=\"2\"",
        ];
        assert_eq!(find(&headers, "grantd_connect_0123"), Some("yes"));
        assert_eq!(find(&headers, "b"), Some("2"));
        assert_eq!(find(&headers, "grantd_connect_"), None);
        assert_eq!(find(&[], "a"), None);
    }
}
