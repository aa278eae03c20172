//! Putting a connection's credential where its provider expects it: an OAuth or minted access
//! token (`auth.inject`, default `Authorization: Bearer`), an API key (`credentials.api_key`:
//! a header format or a query parameter), or a Basic login (`credentials.basic`).
//!
//! Owns the placing only; which grant is used is [`super::connection`]'s. Header values it
//! makes are marked sensitive (never indexed by HPACK), and its errors never contain them.

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::connections::credential::Held;
use crate::connections::Connection;
use crate::rules::file::Inject;
use crate::rules::RuleSet;

/// Where a credential goes: a header with this value, or a query parameter.
enum Place<'a> {
    Header(&'a str, String),
    Query(&'a str, &'a str),
}

pub(super) fn inject(
    rules: &RuleSet,
    grant: &Connection,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
) -> Result<(), String> {
    let default = Inject::default();
    let place = match (&grant.held, &grant.access_token) {
        (Some(Held::ApiKey { api_key }), _) => {
            let spec = rules
                .credentials
                .api_key
                .as_ref()
                .ok_or("api_key is not accepted")?;
            match (&spec.query, &spec.basic) {
                (Some(param), _) => Place::Query(param, api_key),
                (None, Some(pair)) => {
                    basic(&fill(pair, &[("{api_key}", api_key)], &grant.metadata))
                }
                (None, None) => Place::Header(
                    &spec.header,
                    fill(&spec.format, &[("{api_key}", api_key)], &grant.metadata),
                ),
            }
        }
        (Some(Held::Basic { username, password }), _) => {
            let spec = rules
                .credentials
                .basic
                .as_ref()
                .ok_or("basic is not accepted")?;
            let parts = [
                ("{username}", username.as_str()),
                ("{password}", password.as_str()),
            ];
            let user = fill(&spec.username, &parts, &grant.metadata);
            let pass = fill(&spec.password, &parts, &grant.metadata);
            basic(&format!("{user}:{pass}"))
        }
        (_, Some(token)) => {
            let inject = rules.auth.as_ref().map_or(&default, |a| &a.inject);
            match &inject.query {
                Some(param) => Place::Query(param, token.expose()),
                None => Place::Header(
                    &inject.header,
                    inject.format.replace("{access_token}", token.expose()),
                ),
            }
        }
        // Nothing to send yet (a token that was never minted): the provider will say so.
        (_, None) => return Ok(()),
    };
    match place {
        Place::Query(param, value) => {
            let pair: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(param, value)
                .finish();
            *query = Some(match query.take() {
                Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                _ => pair,
            });
        }
        Place::Header(name, value) => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| "bad inject header".to_string())?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                format!(
                    "connection `{}` has a credential that is not a valid header value",
                    grant.id
                )
            })?;
            // Keeps HTTP/2 HPACK from indexing it.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
    Ok(())
}

/// RFC 7617 HTTP Basic.
fn basic(user_password: &str) -> Place<'static> {
    let pair = base64::engine::general_purpose::STANDARD.encode(user_password);
    Place::Header(header::AUTHORIZATION.as_str(), format!("Basic {pair}"))
}

/// `format` with each `(placeholder, value)` and `{metadata.KEY}` filled in.
fn fill(format: &str, parts: &[(&str, &str)], metadata: &serde_json::Value) -> String {
    let mut out = format.to_string();
    for (placeholder, value) in parts {
        out = out.replace(placeholder, value);
    }
    if !out.contains("{metadata.") {
        return out;
    }
    if let Some(m) = metadata.as_object() {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out = out.replace(&format!("{{metadata.{k}}}"), s);
            }
        }
    }
    out
}
