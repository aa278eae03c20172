//! The provider library at a glance, for people: one row per integration with the name end users
//! see on the connect pages, its auth style, the connection metadata it needs, and how many rules
//! and tests it has. `grantd providers`
//! prints it, and the README's provider table is this output (a test fails when they drift).
//!
//! Reads loaded rule sets only; it must not load files or touch the config.

use std::collections::BTreeMap;

use super::{Endpoint, RuleSet};
use crate::template::Template;

/// The markdown table of every integration, ordered by name.
pub fn table(sets: &BTreeMap<String, RuleSet>) -> String {
    let mut out = String::from(
        "| integration | shown as | what | auth | connection metadata | API rules | token rules | tests |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (name, set) in sets.iter().filter(|(n, _)| *n != super::file::BASE) {
        // The file's own rules; the inherited base is the same for every file.
        let own = |r: &&super::Rule| !r.name.starts_with(&format!("{}.", super::file::BASE));
        let rules = |e: Endpoint| {
            set.rules
                .iter()
                .filter(own)
                .filter(|r| r.matcher.endpoint == e)
                .count()
        };
        let c = &set.credentials;
        let mut kinds: Vec<String> = set
            .auth
            .iter()
            .map(|a| format!("OAuth 2.0 ({})", a.client_auth.as_str()))
            .collect();
        for (accepted, name) in [
            (c.api_key.is_some(), "API key"),
            (c.basic.is_some(), "Basic"),
            (c.oauth2_client_credentials.is_some(), "client credentials"),
            (c.jwt_bearer.is_some(), "JWT bearer"),
        ] {
            if accepted {
                kinds.push(name.into());
            }
        }
        let auth = match kinds.is_empty() {
            true => "none (proxy only)".to_string(),
            false => kinds.join(", "),
        };
        out.push_str(&format!(
            "| `{name}` | {} | {} | {auth} | {} | {} | {} | {} |\n",
            set.display_name.replace('|', "/"),
            set.description.as_deref().unwrap_or("").replace('|', "/"),
            metadata_keys(set),
            rules(Endpoint::Api),
            rules(Endpoint::Token),
            set.tests.len(),
        ));
    }
    out
}

/// The metadata keys the rule file's URL templates read, as `` `a`, `b` `` (or `-`).
fn metadata_keys(set: &RuleSet) -> String {
    let urls = std::iter::once(set.base_url.as_str()).chain(set.auth.iter().flat_map(|a| {
        std::iter::once(a.token_url.as_str())
            .chain(a.refresh_url.as_deref())
            .chain(a.revocation_url.as_deref())
    }));
    let mint = set.credentials.oauth2_client_credentials.iter();
    let urls = urls.chain(mint.filter_map(|m| m.token_url.as_deref()));
    let mut keys: Vec<String> = urls
        .filter_map(|u| Template::parse(u).ok())
        .flat_map(|t| t.keys().map(str::to_string).collect::<Vec<_>>())
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return "-".into();
    }
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_auth_metadata_and_counts() {
        let text = "integration: zd\ndisplay_name: Zendesk\ndescription: Zendesk | Support\nbase_url: \"https://{metadata.subdomain}.zendesk.com/api/v2\"\nallowed_hosts: [\"*.zendesk.com\"]\nauth:\n  token_url: \"https://{metadata.subdomain}.zendesk.com/oauth/tokens\"\n  client_auth: basic\nrules:\n  - name: r\n    expr: '1'\n  - name: t\n    on: token\n    expr: '1'\n";
        let set = crate::rules::file::parse("zd.yaml", text, Some("zd")).unwrap();
        let sets = BTreeMap::from([("zd".to_string(), set)]);
        let row = table(&sets).lines().nth(2).unwrap().to_string();
        assert_eq!(
            row,
            "| `zd` | Zendesk | Zendesk / Support | OAuth 2.0 (basic) | `subdomain` | 1 | 1 | 0 |"
        );
    }
}
