//! The JSONata engine behind rules: compile once, evaluate with limits, never panic outward.
//!
//! This is the only module that names `jsonata_core`, so the engine can be swapped. It owns
//! turning a response into the engine's input value and the engine's result back into plain
//! `serde_json`. It must not decide what a result *means* (that is `rules`), and it must not
//! block an async worker: callers run [`Program::eval`] on a blocking thread.
//!
//! The engine's values are `Rc`-based (not `Send`), so a [`Document`] is built on the thread
//! that evaluates it; only the compiled AST (`Arc<AstNode>`) is shared between threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use jsonata_core::ast::AstNode;
use jsonata_core::evaluator::{CancelToken, Context, Evaluator, EvaluatorOptions};
use jsonata_core::parser;
use jsonata_core::value::JValue;

/// A compiled expression, shareable across threads.
#[derive(Clone)]
pub struct Program {
    ast: Arc<AstNode>,
    bounded: bool,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Program")
    }
}

/// Limits applied to one evaluation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub deadline: Instant,
    pub max_depth: usize,
    pub max_sequence_length: usize,
}

/// Stops evaluations from another thread (used when the caller's budget runs out).
#[derive(Clone, Default)]
pub struct Cancel(CancelToken);

impl Cancel {
    pub fn cancel(&self) {
        self.0.cancel()
    }
}

/// The request/response an expression sees, built once per response and reused by every rule.
pub struct Document(JValue);

/// What the expression sees of the request that caused the response.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

impl Program {
    /// Parses an expression. The engine has one known compile-time panic (non-ASCII text in a
    /// function signature); it becomes an error here like any other.
    pub fn compile(source: &str) -> Result<Program, String> {
        match catch_unwind(|| parser::parse(source)) {
            Ok(Ok(ast)) => Ok(Program {
                bounded: is_bounded(&ast),
                ast: Arc::new(ast),
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!(
                "engine panicked while compiling: {}",
                panic_text(&panic)
            )),
        }
    }

    /// True when the engine's own time limit is enough to stop this expression: it calls only
    /// builtins that are linear in their input and uses no regex or user function. The engine's
    /// limits do not reach inside a builtin (measured: `$distinct` quadratic, `$match` on a big
    /// string, `$pad` allocating gigabytes), so anything else must run where it cannot hold an
    /// async worker.
    pub fn is_bounded(&self) -> bool {
        self.bounded
    }

    /// Evaluates against a document. `Ok(None)` means the expression had no result
    /// (undefined). Engine errors, limit hits and panics all come back as `Err`.
    pub fn eval(
        &self,
        doc: &Document,
        limits: &Limits,
        cancel: &Cancel,
    ) -> Result<Option<serde_json::Value>, String> {
        let remaining = limits.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("evaluation time budget exhausted".into());
        }
        let options = EvaluatorOptions {
            // Round up so a sub-millisecond remainder still gets a chance to run.
            timeout_ms: Some(remaining.as_millis() as u64 + 1),
            cancel: Some(cancel.0.clone()),
            max_stack_depth: Some(limits.max_depth),
            max_sequence_length: Some(limits.max_sequence_length),
        };
        let run = || {
            let mut evaluator = Evaluator::with_options(Context::new(), options);
            let value = evaluator
                .evaluate(&self.ast, &doc.0)
                .map_err(|e| e.to_string())?;
            to_json(&value)
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(panic) => Err(format!("engine panicked: {}", panic_text(&panic))),
        }
    }
}

impl Document {
    /// Builds `{"status", "headers", "body", "request"}`. The body is parsed as JSON with
    /// serde_json's nesting limit (128); anything that is not JSON becomes a string (lossy
    /// for non-UTF-8 bytes) and an empty body becomes `null`. Body text is never executed.
    pub fn new(
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        request: &RequestFacts<'_>,
    ) -> Document {
        let mut header_map = IndexMap::with_capacity(headers.len());
        for (name, value) in headers {
            header_map.insert(name.clone(), JValue::string(value.as_str()));
        }
        let mut req = IndexMap::with_capacity(2);
        req.insert("method".to_string(), JValue::string(request.method));
        req.insert("path".to_string(), JValue::string(request.path));
        let mut root = IndexMap::with_capacity(4);
        root.insert("status".to_string(), JValue::from(status as i64));
        root.insert("headers".to_string(), JValue::object(header_map));
        root.insert("body".to_string(), parse_body(body));
        root.insert("request".to_string(), JValue::object(req));
        Document(JValue::object(root))
    }
}

/// Builtins that run in time linear in their input (or constant), so the evaluator's per-step
/// time checks bound any expression built from them.
const LINEAR_BUILTINS: &[&str] = &[
    "exists",
    "count",
    "contains",
    "string",
    "number",
    "boolean",
    "not",
    "type",
    "length",
    "lowercase",
    "uppercase",
    "trim",
    "substring",
    "substringBefore",
    "substringAfter",
    "join",
    "split",
    "keys",
    "lookup",
    "sum",
    "max",
    "min",
    "average",
    "floor",
    "ceil",
    "round",
    "abs",
    "millis",
    "now",
    "error",
    "append",
    "merge",
    "replace",
    "startsWith",
    "endsWith",
];

/// Walks the serialized AST (the engine derives `Serialize`, so this needs no knowledge of its
/// variants): any regex, lambda, call of a computed function, or builtin outside
/// [`LINEAR_BUILTINS`] makes the expression unbounded.
fn is_bounded(ast: &AstNode) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(map) => map.iter().all(|(key, child)| match key.as_str() {
                "Regex" | "Lambda" | "Call" => false,
                "Function" => {
                    let name = child.get("name").and_then(|n| n.as_str()).unwrap_or("");
                    let args_regex = child
                        .get("args")
                        .is_some_and(|a| a.to_string().contains("\"Regex\""));
                    LINEAR_BUILTINS.contains(&name.trim_start_matches('$'))
                        && !args_regex
                        && walk(child)
                }
                _ => walk(child),
            }),
            serde_json::Value::Array(items) => items.iter().all(walk),
            _ => true,
        }
    }
    serde_json::to_value(ast).map(|v| walk(&v)).unwrap_or(false)
}

fn parse_body(body: &[u8]) -> JValue {
    if body.iter().all(u8::is_ascii_whitespace) {
        return JValue::Null;
    }
    match serde_json::from_slice::<JValue>(body) {
        Ok(v) => v,
        Err(_) => JValue::string(String::from_utf8_lossy(body).as_ref()),
    }
}

/// Converts a result through text: the engine's own serializer is safe at any depth, and
/// serde_json's parser then enforces its nesting limit instead of overflowing the stack.
fn to_json(value: &JValue) -> Result<Option<serde_json::Value>, String> {
    if value.is_undefined() {
        return Ok(None);
    }
    if value.is_function() {
        return Err("expression returned a function, not a value".into());
    }
    let text = value
        .to_json_string()
        .map_err(|e| format!("result is not JSON: {e}"))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("result is not usable JSON: {e}"))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(ms: u64) -> Limits {
        Limits {
            deadline: Instant::now() + Duration::from_millis(ms),
            max_depth: 200,
            max_sequence_length: 10_000,
        }
    }

    fn doc(body: &[u8]) -> Document {
        let req = RequestFacts {
            method: "GET",
            path: "/chat.postMessage",
        };
        Document::new(
            200,
            &[("content-type".into(), "application/json".into())],
            body,
            &req,
        )
    }

    fn eval(expr: &str, body: &[u8]) -> Result<Option<serde_json::Value>, String> {
        Program::compile(expr)
            .unwrap()
            .eval(&doc(body), &limits(1000), &Cancel::default())
    }

    #[test]
    fn sees_status_headers_body_and_request() {
        let v = eval(
            r#"{"s": status, "ct": headers."content-type", "e": body.error, "p": request.path}"#,
            br#"{"ok":false,"error":"token_expired"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"s": 200, "ct": "application/json", "e": "token_expired", "p": "/chat.postMessage"})
        );
    }

    #[test]
    fn body_that_is_not_json_is_a_string_never_code() {
        // If the body were parsed as JSONata, `1+1` would become 2.
        assert_eq!(
            eval("body", b"1+1 garbage").unwrap(),
            Some("1+1 garbage".into())
        );
        assert_eq!(eval("body", b"").unwrap(), Some(serde_json::Value::Null));
        let lossy = eval("body", b"\xff\xfeok").unwrap().unwrap();
        assert!(lossy.as_str().unwrap().ends_with("ok"));
    }

    #[test]
    fn deep_body_is_text_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
        let v = eval("$length(body)", deep.as_bytes()).unwrap().unwrap();
        assert_eq!(v, serde_json::json!(100_000));
    }

    #[test]
    fn undefined_is_none_and_errors_are_errors() {
        assert_eq!(eval("body.nope", b"{}").unwrap(), None);
        let e = eval(r#"$error("boom")"#, b"{}").unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }

    #[test]
    fn expressions_are_classified_bounded_or_not() {
        for bounded in [
            r#"body.ok = false and body.error in ["a", "b"] ? {"status": 401}"#,
            r#"$contains($string(body), "X") ? {"status": 429, "retry_after": $number(headers.`x-r`) - $floor($millis() / 1000)}"#,
            r#"($e := body.error; $count(body.errors[type = "RATE"]) > 0)"#,
        ] {
            assert!(Program::compile(bounded).unwrap().is_bounded(), "{bounded}");
        }
        for unbounded in [
            "$distinct(body.items)",
            "$sort(body.items)",
            r#"$match(body.text, /a+/)"#,
            r#"$contains(body.text, /a+$/)"#,
            "$pad(body.x, 1000000000)",
            "(function($x){ $x })(1)",
            r#"body.items.$string($)"#.replace("$string", "$formatInteger").as_str(),
        ] {
            assert!(
                !Program::compile(unbounded).unwrap().is_bounded(),
                "{unbounded}"
            );
        }
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(Program::compile("body.ok = ").is_err());
        assert!(Program::compile("{").is_err());
    }

    #[test]
    fn sequence_limit_stops_huge_ranges() {
        let e = eval("$count([1..100000000])", b"{}").unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn cancel_stops_a_long_evaluation() {
        let cancel = Cancel::default();
        cancel.cancel();
        let p = Program::compile("$sum([1..5000].($x := $; $x * 2))").unwrap();
        assert!(p.eval(&doc(b"{}"), &limits(10_000), &cancel).is_err());
    }
}
