//! URLs that depend on a connection: `https://{metadata.subdomain}.zendesk.com/api/v2`,
//! `{metadata.instance_url}/services/data`, and the fixed [`BaseUrl`] every upstream URL is
//! built on.
//!
//! Owns where a metadata value may go and what it may contain. A value is checked for the
//! place its placeholder stands in (a host label is `[A-Za-z0-9-]`, a port is digits, a path
//! segment is percent-encoded, a whole origin is parsed), and the filled URL must be https
//! (unless the integration allows http for local tests) on a host its allow-list names, so
//! connection metadata can never send a token or the client secret elsewhere.
//! It must not know about connections, rules or HTTP clients: it maps text to checked URLs.

mod base;
mod hosts;

pub use base::BaseUrl;
use hosts::{host_name, port_number, valid_label};
pub use hosts::{under_prefix, Hosts};

/// Where a placeholder stands, which decides what its value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The template starts with it: a whole `https://host[:port]` (Salesforce `instance_url`).
    Origin,
    /// The whole authority: `host[:port]`, dotted labels.
    Authority,
    /// The whole host, with a literal port after it.
    Host,
    /// One label of a host (`{metadata.subdomain}.zendesk.com`).
    Label,
    Port,
    /// Percent-encoded as one path segment.
    Path,
    /// Form-encoded as a query value.
    Query,
}

impl Place {
    fn in_authority(self) -> bool {
        matches!(
            self,
            Place::Origin | Place::Authority | Place::Host | Place::Label | Place::Port
        )
    }
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Slot { key: String, place: Place },
}

/// A URL with `{metadata.KEY}` placeholders, parsed once at load.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses and places every placeholder. Errors say what is wrong with the text.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut so_far = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let literal = &rest[..start];
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{text}`"))?
                + start;
            let key = rest[start + 1..end]
                .strip_prefix("metadata.")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    format!("only {{metadata.KEY}} placeholders are allowed in `{text}`")
                })?;
            so_far.push_str(literal);
            let after = &rest[end + 1..];
            let place = place_of(&so_far, after)
                .map_err(|e| format!("`{text}`: {{metadata.{key}}} {e}"))?;
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_string()));
            }
            so_far.push_str(probe(place));
            parts.push(Part::Slot {
                key: key.to_string(),
                place,
            });
            rest = after;
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        so_far.push_str(rest);
        BaseUrl::parse(&so_far)?;
        Ok(Template { parts })
    }

    /// True when the template has no placeholder: it is a plain [`BaseUrl`].
    pub fn is_fixed(&self) -> bool {
        self.slots().next().is_none()
    }

    /// True when connection metadata decides the host: such a template needs an allow-list.
    pub fn host_from_metadata(&self) -> bool {
        self.slots().any(|(_, place)| place.in_authority())
    }

    /// The metadata keys the template reads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.slots().map(|(key, _)| key)
    }

    /// The first key the template reads that `metadata` lacks (or holds as neither a string
    /// nor a number).
    pub fn missing(&self, metadata: &serde_json::Value) -> Option<&str> {
        self.keys()
            .find(|k| !matches!(metadata.get(*k), Some(v) if v.is_string() || v.is_number()))
    }

    fn slots(&self) -> impl Iterator<Item = (&str, Place)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Slot { key, place } => Some((key.as_str(), *place)),
            Part::Text(_) => None,
        })
    }

    /// Fills the template from `metadata` and checks the result against `hosts`. The error
    /// names the metadata key at fault (never its value: it may be attacker-chosen text).
    pub fn fill(&self, metadata: &serde_json::Value, hosts: &Hosts) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot { key, place } => {
                    let value = match metadata.get(key) {
                        Some(serde_json::Value::String(v)) => v.clone(),
                        Some(serde_json::Value::Number(n)) => n.to_string(),
                        _ => return Err(format!("the connection has no metadata `{key}`")),
                    };
                    let placed = place_value(*place, &value)
                        .map_err(|why| format!("metadata `{key}`: {why}"))?;
                    out.push_str(&placed);
                }
            }
        }
        if self.host_from_metadata() {
            hosts.check(&out).map_err(|why| {
                let keys: Vec<&str> = self.keys().collect();
                format!("metadata `{}`: {why}", keys.join("`, `"))
            })?;
        }
        Ok(out)
    }

    /// Checks the metadata an app is about to store: every value this template would read
    /// must fit its place, and once all are present the filled URL must pass `hosts`.
    pub fn check(
        &self,
        metadata: &serde_json::Map<String, serde_json::Value>,
        hosts: &Hosts,
    ) -> Result<(), String> {
        for (key, place) in self.slots() {
            match metadata.get(key) {
                None => {}
                Some(serde_json::Value::String(v)) => {
                    place_value(place, v).map_err(|why| format!("metadata `{key}`: {why}"))?;
                }
                Some(serde_json::Value::Number(_)) => {}
                Some(_) => return Err(format!("metadata `{key}`: must be a string")),
            }
        }
        if self.keys().all(|k| metadata.contains_key(k)) {
            self.fill(&serde_json::Value::Object(metadata.clone()), hosts)?;
        }
        Ok(())
    }
}

/// One integration's URLs (the API base and, with OAuth, the token endpoint) and where
/// their templates may point: everything connection metadata must fit.
#[derive(Debug, Clone)]
pub struct Urls {
    pub base: Template,
    pub token: Option<Template>,
    /// A second token endpoint for refresh-token grants (default: `token`).
    pub refresh: Option<Template>,
    /// RFC 7009 token revocation.
    pub revocation: Option<Template>,
    /// Where client-credentials tokens are minted, when not at `token`.
    pub mint: Option<Template>,
    pub hosts: Hosts,
}

impl Urls {
    /// Parses the templates; one that takes its host from metadata needs an allow-list.
    pub fn new(base: &str, token: Option<&str>, hosts: Hosts) -> Result<Urls, String> {
        Ok(Urls {
            base: parse_for("base_url", base, &hosts)?,
            token: token
                .map(|t| parse_for("token_url", t, &hosts))
                .transpose()?,
            refresh: None,
            revocation: None,
            mint: None,
            hosts,
        })
    }

    /// Adds the optional token-side endpoints (refresh, revocation), checked like the others.
    pub fn with_endpoints(
        mut self,
        refresh: Option<&str>,
        revocation: Option<&str>,
        mint: Option<&str>,
    ) -> Result<Urls, String> {
        let hosts = &self.hosts;
        self.mint = mint.map(|u| parse_for("token_url", u, hosts)).transpose()?;
        self.refresh = refresh
            .map(|u| parse_for("refresh_url", u, hosts))
            .transpose()?;
        self.revocation = revocation
            .map(|u| parse_for("revocation_url", u, hosts))
            .transpose()?;
        Ok(self)
    }

    /// Checks metadata before it is stored; the error names the key at fault.
    pub fn check(
        &self,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        let endpoints = [&self.token, &self.refresh, &self.revocation, &self.mint];
        for t in std::iter::once(&self.base).chain(endpoints.into_iter().flatten()) {
            t.check(metadata, &self.hosts)?;
        }
        Ok(())
    }
}

/// Parses one of an integration's URLs; one that takes its host from metadata needs an
/// allow-list.
fn parse_for(key: &str, url: &str, hosts: &Hosts) -> Result<Template, String> {
    let t = Template::parse(url).map_err(|e| format!("{key}: {e}"))?;
    if t.host_from_metadata() && hosts.is_empty() {
        return Err(format!("{key}: connection metadata decides the host, so allowed_hosts must list where it may point"));
    }
    Ok(t)
}

/// Decides a placeholder's place from the text before it (`so_far`, with earlier
/// placeholders probed) and the literal text right after it.
fn place_of(so_far: &str, after: &str) -> Result<Place, &'static str> {
    if so_far.is_empty() {
        return Ok(Place::Origin);
    }
    let Some((_, authority_on)) = so_far.split_once("://") else {
        return Err("must come after `scheme://` or start the URL");
    };
    if let Some(i) = authority_on.find(['/', '?', '#']) {
        return match authority_on[i..].find(['?', '#']) {
            None => Ok(Place::Path),
            Some(j) if authority_on.as_bytes()[i + j] == b'?' => Ok(Place::Query),
            Some(_) => Err("cannot be in a fragment"),
        };
    }
    if authority_on.contains('@') {
        return Err("cannot be in a URL with credentials");
    }
    if authority_on.contains(':') {
        return Ok(Place::Port);
    }
    let next = after.chars().next();
    Ok(match (authority_on.is_empty(), next) {
        (true, None | Some('/' | '?')) => Place::Authority,
        (true, Some(':')) => Place::Host,
        _ => Place::Label,
    })
}

/// A stand-in that keeps the template's shape parseable at load.
fn probe(place: Place) -> &'static str {
    match place {
        Place::Origin => "https://placeholder.invalid",
        Place::Authority | Place::Host => "placeholder.invalid",
        Place::Port => "1",
        Place::Label | Place::Path | Place::Query => "placeholder",
    }
}

/// The value as it goes into its place, or why it cannot.
fn place_value(place: Place, v: &str) -> Result<String, String> {
    match place {
        Place::Origin => origin(v),
        Place::Authority => {
            let (host, port) = v.rsplit_once(':').unwrap_or((v, ""));
            if host_name(host) && (port.is_empty() || port_number(port)) {
                Ok(v.to_string())
            } else {
                Err("must be a host name, optionally with `:port`".into())
            }
        }
        Place::Host if host_name(v) => Ok(v.to_string()),
        Place::Host => Err("must be a host name".into()),
        Place::Label if valid_label(v) => Ok(v.to_string()),
        Place::Label => Err("must be one host label: letters, digits and `-`".into()),
        Place::Port if port_number(v) => Ok(v.to_string()),
        Place::Port => Err("must be a port number".into()),
        Place::Path if v.is_empty() || v == "." || v == ".." => {
            Err("must be a non-empty path segment other than `.` or `..`".into())
        }
        Place::Path => Ok(percent_encode_segment(v)),
        Place::Query => Ok(form_urlencoded::byte_serialize(v.as_bytes()).collect()),
    }
}

/// A whole origin (`https://acme.my.salesforce.com`, a trailing `/` allowed), normalized.
fn origin(v: &str) -> Result<String, String> {
    let url = url::Url::parse(v).map_err(|_| "must be an absolute URL".to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be an origin only (no path, query or fragment)".into());
    }
    Ok(url.origin().ascii_serialization())
}

/// RFC 3986 unreserved characters stay; everything else (`/`, `?`, `#`, `%`, `\\`, ...) is
/// percent-encoded, so a value is always exactly one segment.
fn percent_encode_segment(v: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hosts(p: &[&str], http: bool) -> Hosts {
        Hosts::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), http).unwrap()
    }

    #[test]
    fn metadata_in_a_host_label_cannot_leave_the_allowed_domain() {
        let t = Template::parse("https://{metadata.subdomain}.zendesk.com/api/v2").unwrap();
        assert!(t.host_from_metadata());
        let h = hosts(&["*.zendesk.com"], false);
        assert_eq!(
            t.fill(&json!({"subdomain": "acme"}), &h).unwrap(),
            "https://acme.zendesk.com/api/v2"
        );
        // The reviewed attack: a subdomain that ends the host early.
        for bad in ["127.0.0.1:9/#", "evil.com/", "a.b", "x@evil.com", "", "a b"] {
            let e = t.fill(&json!({ "subdomain": bad }), &h).unwrap_err();
            assert!(e.starts_with("metadata `subdomain`"), "{bad}: {e}");
            assert!(
                !e.contains(bad) || bad.is_empty(),
                "never echo the value: {e}"
            );
        }
    }

    #[test]
    fn a_whole_origin_must_be_https_on_an_allowed_host() {
        let t = Template::parse("{metadata.instance_url}/services/data").unwrap();
        let h = hosts(&["*.my.salesforce.com"], false);
        let ok = json!({"instance_url": "https://acme.my.salesforce.com"});
        assert_eq!(
            t.fill(&ok, &h).unwrap(),
            "https://acme.my.salesforce.com/services/data"
        );
        for bad in [
            "http://acme.my.salesforce.com",
            "https://127.0.0.1:5432",
            "https://evil.example",
            "https://my.salesforce.com",
            "https://acme.my.salesforce.com:444",
            "https://u:p@acme.my.salesforce.com",
            "https://acme.my.salesforce.com/x",
            "https://evil.example#.my.salesforce.com",
            "https://evil.example\\.my.salesforce.com",
        ] {
            assert!(
                t.fill(&json!({ "instance_url": bad }), &h).is_err(),
                "{bad}"
            );
        }
        let local = hosts(&["127.0.0.1:*"], true);
        assert!(t
            .fill(&json!({"instance_url": "http://127.0.0.1:8080"}), &local)
            .is_ok());
    }

    #[test]
    fn path_values_are_one_encoded_segment() {
        let t = Template::parse("https://api.example.com/orgs/{metadata.org}/v1").unwrap();
        assert!(!t.host_from_metadata());
        let h = Hosts::default();
        assert_eq!(
            t.fill(&json!({"org": "a/../b?c#d"}), &h).unwrap(),
            "https://api.example.com/orgs/a%2F..%2Fb%3Fc%23d/v1"
        );
        assert!(t.fill(&json!({"org": ".."}), &h).is_err());
        assert_eq!(
            t.fill(&json!({"org": 42}), &h).unwrap(),
            "https://api.example.com/orgs/42/v1"
        );
    }

    #[test]
    fn authority_and_port_slots_take_only_hosts_and_digits() {
        let t = Template::parse("http://{metadata.host}/tenant").unwrap();
        let h = hosts(&["127.0.0.1:*"], true);
        assert!(t.fill(&json!({"host": "127.0.0.1:8080"}), &h).is_ok());
        assert!(t.fill(&json!({"host": "127.0.0.1:8080/x"}), &h).is_err());
        assert!(t.fill(&json!({"host": "10.0.0.1:80"}), &h).is_err());
        let p = Template::parse("https://{metadata.host}:{metadata.port}/").unwrap();
        let h = hosts(&["*.example.com:*"], false);
        assert!(p
            .fill(&json!({"host": "a.example.com", "port": "8443"}), &h)
            .is_ok());
        assert!(p
            .fill(&json!({"host": "a.example.com", "port": "80@x"}), &h)
            .is_err());
    }

    #[test]
    fn check_names_the_key_before_anything_is_stored() {
        let t = Template::parse("https://{metadata.subdomain}.zendesk.com").unwrap();
        let h = hosts(&["*.zendesk.com"], false);
        let mut m = serde_json::Map::new();
        assert!(t.check(&m, &h).is_ok(), "absent keys are checked at use");
        assert_eq!(t.missing(&json!({})), Some("subdomain"));
        assert_eq!(t.missing(&json!({"subdomain": "a"})), None);
        m.insert("subdomain".into(), json!("127.0.0.1:1/#"));
        assert!(t.check(&m, &h).unwrap_err().contains("`subdomain`"));
        m.insert("subdomain".into(), json!({"nested": 1}));
        assert!(t.check(&m, &h).is_err());
    }

    #[test]
    fn bad_templates_and_patterns_fail_at_load() {
        assert!(Template::parse("https://x.com/{secret}").is_err());
        assert!(Template::parse("https://x.com/{metadata.a").is_err());
        assert!(Template::parse("https://x.com/#{metadata.a}").is_err());
        assert!(Template::parse("x{metadata.a}").is_err());
        assert!(Hosts::new(&["*.".into()], false).is_err());
        assert!(Hosts::new(&["a.com:http".into()], false).is_err());
        assert!(Hosts::new(&["a/b".into()], false).is_err());
    }
}
