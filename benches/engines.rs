//! JSONata engines side by side: time and heap growth per evaluation, same rules, same input.
//!
//! `cargo bench --bench engines` (add `-- --quick` for a short run). Prints one row per engine and
//! expression, then the cost of grantd's own rule path and of moving evaluation to the blocking
//! pool. Heap growth is live bytes (counting allocator) after N evaluations minus before, over N:
//! an engine that leaks shows a steady positive number.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use grantd::rules::engine::{Cancel, Document, Limits, Program, RequestFacts};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Expressions from the shipped rules, written so both engines parse them.
const EXPRESSIONS: &[(&str, &str)] = &[
    (
        "slack token-expired",
        r#"body.ok = false and body.error = "token_expired" ? { "status": 401, "action": "refresh", "error": body.error }"#,
    ),
    (
        "slack token-dead (in)",
        r#"body.ok = false and body.error in ["invalid_auth", "not_authed", "account_inactive", "token_revoked"] ? { "status": 401, "action": "reauth", "error": body.error }"#,
    ),
    (
        "github graphql filter",
        r#"$count(body.errors[type in ["RATE_LIMITED", "RATE_LIMIT"] or code = "graphql_rate_limit"]) > 0 ? { "status": 429, "action": "retry" }"#,
    ),
    (
        "slack firing",
        r#"body.message.text ? { "status": 401, "action": "refresh", "error": "token_expired" }"#,
    ),
];

fn body_1k() -> String {
    let mut text = String::new();
    while text.len() < 900 {
        text.push_str("lorem ipsum ");
    }
    serde_json::json!({"ok": true, "channel": "C123", "ts": "1700000000.000100", "message": {"text": text}}).to_string()
}

fn document_json(body: &str) -> String {
    format!(
        r#"{{"status":200,"headers":{{"content-type":"application/json"}},"body":{body},"request":{{"method":"POST","path":"/chat.postMessage"}}}}"#
    )
}

struct ConnectionRow {
    us_per_eval: f64,
    bytes_per_eval: f64,
    result: Result<Option<serde_json::Value>, String>,
}

fn measure(
    n: usize,
    mut f: impl FnMut() -> Result<Option<serde_json::Value>, String>,
) -> ConnectionRow {
    let result = f(); // warm up; also the value compared across engines
    let live = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..n {
        let _ = black_box(f());
    }
    let elapsed = start.elapsed();
    let grown = LIVE.load(Ordering::Relaxed) - live;
    ConnectionRow {
        us_per_eval: elapsed.as_secs_f64() * 1e6 / n as f64,
        bytes_per_eval: grown as f64 / n as f64,
        result,
    }
}

fn core_row(expr: &str, body: &str, n: usize) -> ConnectionRow {
    let program = Program::compile(expr).expect("jsonata-core compiles");
    let cancel = Cancel::default();
    let req = RequestFacts {
        method: "POST",
        path: "/chat.postMessage",
    };
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    measure(n, || {
        // Like the proxy: build the document from the body bytes every time.
        let doc = Document::new(200, &headers, body.as_bytes(), &req);
        let limits = Limits {
            deadline: Instant::now() + Duration::from_secs(1),
            max_depth: 200,
            max_sequence_length: 100_000,
        };
        program.eval(&doc, &limits, &cancel)
    })
}

fn rs_row(expr: &str, body: &str, n: usize) -> ConnectionRow {
    let arena = bumpalo::Bump::new();
    let input = document_json(body);
    let compiled = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jsonata_rs::JsonAta::new(expr, &arena)
    })) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return ConnectionRow {
                us_per_eval: f64::NAN,
                bytes_per_eval: f64::NAN,
                result: Err(format!("compile: {e}")),
            }
        }
        Err(_) => {
            return ConnectionRow {
                us_per_eval: f64::NAN,
                bytes_per_eval: f64::NAN,
                result: Err("compile panicked".into()),
            }
        }
    };
    measure(n, || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            compiled.evaluate(Some(&input), None)
        }));
        match out {
            Ok(Ok(v)) if v.is_undefined() => Ok(None),
            Ok(Ok(v)) => serde_json::from_str(&v.serialize(false))
                .map(Some)
                .map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("panicked".into()),
        }
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 5_000 } else { 50_000 };
    let body = body_1k();
    println!("JSONata engines, 1 KiB JSON body, {n} evaluations each (release build; trust ratios over absolute µs)\n");
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>12}  agree",
        "expression", "core µs", "rs µs", "core B/eval", "rs B/eval"
    );
    for (name, expr) in EXPRESSIONS {
        let core = core_row(expr, &body, n);
        let rs = rs_row(expr, &body, n);
        let agree = match (&core.result, &rs.result) {
            (Ok(a), Ok(b)) if a == b => "same".to_string(),
            (a, b) => format!("DIFFER core={a:?} rs={b:?}"),
        };
        println!(
            "{:<24} {:>12.2} {:>12.2} {:>12.1} {:>12.1}  {}",
            name, core.us_per_eval, rs.us_per_eval, core.bytes_per_eval, rs.bytes_per_eval, agree
        );
    }
    rule_path(&body, n);
}

/// grantd's whole rule path for one response (parse body, run every Slack rule), inline and
/// through `spawn_blocking` as the proxy does, to price the isolation from runaway rules.
fn rule_path(body: &str, n: usize) {
    use grantd::rules::{Endpoint, Facts};
    let sets = grantd::rules::load_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .as_path(),
    )
    .unwrap();
    let slack = std::sync::Arc::new(sets["slack"].clone());
    let eval = grantd::rules::default_budget();
    let facts = Facts {
        endpoint: Endpoint::Api,
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        method: "POST".into(),
        path: "/chat.postMessage".into(),
    };
    let body = bytes::Bytes::from(body.to_string());
    let cancel = Cancel::default();
    let inline = measure(n, || {
        black_box(slack.evaluate(&facts, &body, &eval, &cancel));
        Ok(None)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let (slack, facts, body, eval, cancel) = (
                slack.clone(),
                facts.clone(),
                body.clone(),
                eval.clone(),
                cancel.clone(),
            );
            let out =
                tokio::task::spawn_blocking(move || slack.evaluate(&facts, &body, &eval, &cancel))
                    .await
                    .unwrap();
            black_box(out);
        }
    });
    let blocking_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "\ngrantd rule path, all {} Slack rules on a 1 KiB success body:",
        slack.rules.len()
    );
    println!(
        "  inline:              {:>8.2} µs per response, {:>6.1} B heap growth",
        inline.us_per_eval, inline.bytes_per_eval
    );
    println!(
        "  via spawn_blocking:  {:>8.2} µs per response (isolation costs {:.2} µs, {:.0}%)",
        blocking_us,
        blocking_us - inline.us_per_eval,
        (blocking_us / inline.us_per_eval - 1.0) * 100.0
    );
}
