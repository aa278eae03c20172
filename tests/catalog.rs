//! The shipped rule files against the provider catalog in `../shared/providers/catalog.json`:
//! every catalog case of a shipped provider is a test in its rule file, and evaluating the
//! catalog payload itself gives the documented status and action.

mod common;

use std::collections::BTreeMap;

use grantd::rules::check::evaluate_captured;
use grantd::rules::file::{CapturedResponse, RequestSpec};
use grantd::rules::{self, Endpoint, Outcome};

fn catalog() -> Option<Vec<serde_json::Value>> {
    let path = common::repo_path("../shared/providers/catalog.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("catalog.json parses")),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CI must run the catalog test, but {} is unreadable: {e}",
                path.display()
            )
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED: catalog conformance needs {} ({e}).\n*** Check out shared/ beside this repository to run it.\n",
                path.display()
            );
            None
        }
    }
}

/// The catalog's action vocabulary in grantd's terms; `None` means "no rule should fire".
fn expected(case: &serde_json::Value) -> Option<(u16, &'static str)> {
    let status = case["normalized_status"].as_u64().unwrap() as u16;
    let action = match case["action"].as_str().unwrap() {
        "refresh_and_retry" => "refresh",
        "retry_later" => "retry",
        "reauth" => "reauth",
        "fix_config" => "fix_config",
        "pass_through" if case["http_status"].as_u64() == Some(status as u64) => return None,
        "pass_through" => "none",
        other => panic!("unknown catalog action {other}"),
    };
    Some((status, action))
}

#[test]
fn every_catalog_case_of_a_shipped_provider_is_tested_and_classified() {
    let Some(cases) = catalog() else { return };
    let sets = rules::load_dir(&common::repo_path("rules")).expect("shipped rules load");
    let eval = rules::default_budget();
    let mut checked = BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for case in &cases {
        let integration = case["integration"].as_str().unwrap();
        let Some(set) = sets.get(integration) else {
            continue;
        };
        let id = case["id"].as_str().unwrap();
        let test = set.tests.iter().find(|t| t.source.as_deref() == Some(id));
        if test.is_none() {
            failures.push(format!("{id}: no test in {} has `source: {id}`", set.file));
        }
        let on = if case["endpoint_kind"] == "token" {
            Endpoint::Token
        } else {
            Endpoint::Api
        };
        // Some cases record no HTTP status (a SOAP fault, a message quoted without its
        // response); the file's test for the case says which status it assumed, and why.
        let status = case["http_status"].as_u64().map(|s| s as u16);
        let Some(status) = status.or_else(|| test.map(|t| t.response.status)) else {
            failures.push(format!(
                "{id}: the catalog has no status and no test gives one"
            ));
            continue;
        };
        let response = CapturedResponse {
            status,
            headers: serde_json::from_value(case["headers"].clone()).unwrap(),
            body: case["body"].clone(),
        };
        // A case scoped to a path (e.g. Salesforce's identity URL) carries it in its test.
        let request = test.map(|t| t.request.clone()).unwrap_or(RequestSpec {
            method: "GET".into(),
            path: "/".into(),
        });
        let outcome = evaluate_captured(set, on, &request, &response, &eval);
        let got = match &outcome {
            Outcome::Unchanged => None,
            Outcome::Verdict(v) => Some((v.status, v.action.as_str())),
            Outcome::RuleError { rule, message } => {
                failures.push(format!("{id}: rule {rule} failed: {message}"));
                continue;
            }
        };
        if got != expected(case) {
            failures.push(format!("{id}: expected {:?}, got {got:?}", expected(case)));
        }
        *checked.entry(integration.to_string()).or_default() += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for shipped in common::SHIPPED {
        assert!(
            checked.get(*shipped).copied().unwrap_or(0) > 0,
            "no catalog case checked for {shipped}"
        );
    }
}

#[test]
fn every_shipped_rule_set_runs_inline_within_the_engine_budget() {
    // A rule with a builtin that escapes the engine's time limit (regex, $sort, lambdas, ...)
    // moves its whole set (and, through the base, every set) to the blocking pool.
    let sets = rules::load_dir(&common::repo_path("rules")).expect("shipped rules load");
    let slow: Vec<&str> = sets
        .iter()
        .filter(|(_, s)| !s.is_bounded())
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(slow.is_empty(), "not bounded: {slow:?}");
    assert!(sets.len() > 40, "{} rule files", sets.len());
}
