//! The fixed base URL every upstream URL is built on, and how a request path is joined to it.
//!
//! Owns the scheme/authority/path split only; which host is allowed is [`super::hosts`]'s.

use http::Uri;

/// A parsed base URL: requests are only ever sent to this scheme and authority, below this path.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path: String,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no scheme"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("`{s}`: scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{s}`: credentials do not belong in a base URL"));
        }
        if uri.query().is_some() {
            return Err(format!("`{s}`: a base URL cannot have a query"));
        }
        Ok(BaseUrl {
            scheme,
            authority,
            path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn host(&self) -> &str {
        self.authority.host()
    }

    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }

    /// `{base}/{rest}?{query}`; `rest` has been checked for dot segments by the caller.
    pub fn join(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(
            self.path.len() + rest.len() + 1 + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// Scheme and host, safe to show in errors (no path or query, which may carry secrets).
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_stays_on_the_base_host_and_path() {
        let base = BaseUrl::parse("https://slack.com/api/").unwrap();
        assert_eq!(
            base.join("/chat.postMessage", Some("a=1"))
                .unwrap()
                .to_string(),
            "https://slack.com/api/chat.postMessage?a=1"
        );
        // A rest that looks like a host is still a path on the base host.
        assert_eq!(
            base.join("//evil.example/x", None).unwrap().to_string(),
            "https://slack.com/api//evil.example/x"
        );
        let root = BaseUrl::parse("https://api.github.com").unwrap();
        assert_eq!(
            root.join("", None).unwrap().to_string(),
            "https://api.github.com/"
        );
    }

    #[test]
    fn base_urls_must_be_plain_http_origins() {
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("/relative").is_err());
        assert!(BaseUrl::parse("https://user:pw@x.com").is_err());
        assert!(BaseUrl::parse("https://x.com/api?key=1").is_err());
    }
}
