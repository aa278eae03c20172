//! Running rule files' `tests:` and evaluating captured responses (`grantd check`,
//! `grantd rules eval`). Uses exactly the evaluation path the proxy uses.

use serde_json::json;

use super::engine::Cancel;
use super::file::{CapturedResponse, Expect, RequestSpec, TestCase};
use super::{Endpoint, Facts, Outcome, RuleSet};
use crate::config::EvaluationConfig;

/// One test's result; `failure` says what differed.
#[derive(Debug)]
pub struct TestResult {
    pub file: String,
    pub line: usize,
    pub name: String,
    pub failure: Option<String>,
}

/// Evaluates a captured response against an integration's rules.
///
/// ```
/// use grantd::rules::{check::evaluate_captured, file, Endpoint, Outcome};
/// let set = file::parse("slack.yaml", r#"
/// integration: slack
/// base_url: https://slack.com/api
/// rules:
///   - name: token-expired
///     match: { status: [200], content_type: json }
///     expr: 'body.error = "token_expired" ? { "status": 401, "action": "refresh" }'
/// "#, Some("slack")).unwrap();
/// let response: file::CapturedResponse =
///     serde_json::from_str(r#"{"status": 200, "body": {"ok": false, "error": "token_expired"}}"#).unwrap();
/// let request = file::RequestSpec { method: "POST".into(), path: "/chat.postMessage".into() };
/// let budget = grantd::rules::default_budget();
/// match evaluate_captured(&set, Endpoint::Api, &request, &response, &budget) {
///     Outcome::Verdict(v) => assert_eq!((v.rule.as_str(), v.status), ("token-expired", 401)),
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn evaluate_captured(
    set: &RuleSet,
    on: Endpoint,
    request: &RequestSpec,
    response: &CapturedResponse,
    eval: &EvaluationConfig,
) -> Outcome {
    let facts = Facts {
        endpoint: on,
        status: response.status,
        headers: response.rule_headers(),
        method: request.method.clone(),
        path: request.path.clone(),
    };
    set.evaluate(&facts, &response.body_bytes(), eval, &Cancel::default())
}

/// Runs every test of a rule set.
pub fn run_tests(set: &RuleSet, eval: &EvaluationConfig) -> Vec<TestResult> {
    set.tests
        .iter()
        .map(|t| TestResult {
            file: set.file.clone(),
            line: t.line,
            name: t.name.clone(),
            failure: compare(
                set,
                t,
                &evaluate_captured(set, t.on, &t.request, &t.response, eval),
            ),
        })
        .collect()
}

fn compare(set: &RuleSet, test: &TestCase, outcome: &Outcome) -> Option<String> {
    let e: &Expect = &test.expect;
    let fired_at = |rule: &str| {
        set.rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| format!("rule `{rule}` ({}:{})", set.file, r.line))
            .unwrap_or_else(|| format!("rule `{rule}`"))
    };
    match outcome {
        Outcome::RuleError { rule, message } => {
            Some(format!("{} failed: {message}", fired_at(rule)))
        }
        Outcome::Unchanged if e.unchanged => None,
        Outcome::Unchanged => {
            Some("expected a verdict, but no rule fired (response unchanged)".into())
        }
        Outcome::Verdict(v) if e.unchanged => Some(format!(
            "expected unchanged, but {} returned status {} action {}",
            fired_at(&v.rule),
            v.status,
            v.action.as_str()
        )),
        Outcome::Verdict(v) => {
            let mut diffs = Vec::new();
            let mut check = |what: &str, want: Option<String>, got: Option<String>| {
                if let Some(want) = want {
                    if Some(&want) != got.as_ref() {
                        diffs.push(format!(
                            "expected {what} {want}, got {}",
                            got.unwrap_or_else(|| "none".into())
                        ));
                    }
                }
            };
            check("rule", e.rule.clone(), Some(v.rule.clone()));
            check(
                "status",
                e.status.map(|s| s.to_string()),
                Some(v.status.to_string()),
            );
            check(
                "action",
                e.action.map(|a| a.as_str().to_string()),
                Some(v.action.as_str().to_string()),
            );
            check("error", e.error.clone(), v.error.clone());
            check("detail", e.detail.clone(), v.detail.clone());
            check(
                "retry_after",
                e.retry_after.map(|s| s.to_string()),
                v.retry_after.map(|s| s.to_string()),
            );
            if diffs.is_empty() {
                None
            } else {
                Some(format!("{} (from {})", diffs.join("; "), fired_at(&v.rule)))
            }
        }
    }
}

/// The `grantd rules eval` output contract: the verdict object, `{"unchanged": true}`, or
/// `{"unchanged": true, "rule_error": {...}}`.
pub fn outcome_json(integration: &str, outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Unchanged => json!({"unchanged": true}),
        Outcome::Verdict(v) => {
            let mut out = serde_json::to_value(v).unwrap_or_else(|_| json!({}));
            out["integration"] = json!(integration);
            out
        }
        Outcome::RuleError { rule, message } => json!({
            "unchanged": true,
            "rule_error": {"integration": integration, "rule": rule, "message": message}
        }),
    }
}
