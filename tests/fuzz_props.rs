//! Property tests for the three parsers that read hand-written or provider-controlled input:
//! the rule-file loader (`rules::file::parse`/`load_file`), the rule input builder (a response's
//! status, headers and body → the JSONata document → an `Outcome`, along the proxy's own path:
//! `proxy::rule_headers`, `proxy::decode_for_rules`, `RuleSet::evaluate`) and the token-response
//! classifier (`connections::token::classify`, then `apply_tokens`).
//!
//! In CI each property runs a small number of cases (the whole file takes seconds). For a long
//! run, `GRANTD_FUZZ_CASES=200000 cargo test --release --test fuzz_props` raises every count;
//! `fuzz/run.sh` runs the libFuzzer targets over the same code for a fixed time.

mod props;

use std::io::Write as _;

use http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use grantd::rules::file::{self, CapturedResponse};
use grantd::rules::Endpoint;
use props::{header_map, Response, SHIPPED};

fn ok<T>(r: Result<T, String>) -> Result<T, TestCaseError> {
    r.map_err(TestCaseError::fail)
}

/// `GRANTD_FUZZ_CASES` overrides every property's case count (long runs).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("GRANTD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// Every double-quoted string in the shipped rule files (error codes, field names, header
/// names, messages), so generated bodies reach the rules' interesting branches.
fn dictionary() -> Vec<String> {
    let mut words: Vec<String> = [
        "ok",
        "error",
        "error_description",
        "error_subtype",
        "error_codes",
        "suberror",
        "message",
        "code",
        "status",
        "errors",
        "details",
        "reason",
        "domain",
        "needed",
        "category",
        "policyName",
        "context",
        "requiredScopes",
        "access_token",
        "refresh_token",
        "expires_in",
        "scope",
        "token_type",
        "instance_url",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (_, text) in SHIPPED {
        let mut rest = text;
        while let Some(start) = rest.find('"') {
            let tail = &rest[start + 1..];
            let Some(end) = tail.find('"') else { break };
            let word = &tail[..end];
            if !word.is_empty() && word.len() <= 60 && !word.contains('\\') {
                words.push(word.to_string());
            }
            rest = &tail[end + 1..];
        }
    }
    words.sort();
    words.dedup();
    words
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(dictionary()),
        1 => any::<String>(),
    ]
}

/// JSON values built from the dictionary: the shapes providers send and the rules inspect.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|n| json!(n)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Bodies that have broken parsers before: deep nesting, huge numbers, invalid UTF-8, text.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..600),
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (1usize..5000, any::<bool>(), any::<bool>()).prop_map(|(depth, objects, closed)| {
            let (open, close) = if objects { ("{\"error\":", "}") } else { ("[", "]") };
            let mut s = open.repeat(depth);
            s.push_str("\"token_expired\"");
            if closed {
                s.push_str(&close.repeat(depth));
            }
            s.into_bytes()
        }),
        1 => (
            prop::sample::select(vec![
                "1e999999", "-1e400", "123456789012345678901234567890123456789012345678901234567890",
                "1.7976931348623157e309", "-0", "4.9e-325", "18446744073709551616", "-9223372036854775809",
                "9007199254740993", "NaN", "Infinity", "0x10", "01",
            ]),
            prop::sample::select(dictionary()),
        )
            .prop_map(|(n, key)| format!("{{\"{key}\": {n}, \"error\": {n}, \"status\": {n}}}").into_bytes()),
        1 => (prop::sample::select(dictionary()), prop::collection::vec(128u8..=255, 1..8)).prop_map(
            |(key, bad)| {
                let mut b = format!("{{\"error\": \"{key}").into_bytes();
                b.extend_from_slice(&bad);
                b.extend_from_slice(b"\", \"ok\": false}");
                b
            }
        ),
        1 => prop::collection::vec(prop::sample::select(vec![b' ', b'\t', b'\n', b'\r', 0x0c]), 0..8),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "content-type", "content-encoding", "retry-after", "www-authenticate",
            "x-ratelimit-remaining", "x-ratelimit-reset", "x-ms-ags-diagnostic",
            "sforce-limit-info", "set-cookie",
        ]).prop_map(str::to_string),
        1 => "[a-z0-9-]{1,16}",
    ]
}

/// Any bytes a `HeaderValue` may hold, which includes non-UTF-8 (obs-text) bytes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "application/json", "application/json; charset=utf-8", "application/problem+json",
            "text/html", "text/plain", "application/x-www-form-urlencoded", "gzip", "x-gzip",
            "deflate", "identity", "br", " GZIP ", "0", "-1", "30", "1e400", "99999999999999999999999",
            "Bearer error=\"invalid_token\"", "", "Wed, 21 Oct 2015 07:28:00 GMT",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
            bytes
                .into_iter()
                .map(|b| if (b < 0x20 && b != b'\t') || b == 0x7f { b'x' } else { b })
                .collect()
        }),
        1 => prop::collection::vec(0x80u8..=0xff, 1..12),
    ]
}

/// How the body is (claimed to be) encoded: the proxy decodes gzip/deflate for rules.
#[derive(Debug, Clone)]
enum Coding {
    None,
    /// A `content-encoding` the bytes do not honour (or cannot: `br`, nonsense).
    Claim(&'static str),
    /// Really compressed; `cut` truncates the stream, `junk` appends garbage.
    Gzip {
        cut: Option<usize>,
        junk: Vec<u8>,
    },
    Deflate {
        cut: Option<usize>,
    },
}

fn coding() -> impl Strategy<Value = Coding> {
    prop_oneof![
        6 => Just(Coding::None),
        2 => prop::sample::select(vec!["gzip", "x-gzip", "deflate", "br", "compress", "gzip, gzip", ""])
            .prop_map(Coding::Claim),
        2 => (prop::option::of(any::<usize>()), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(cut, junk)| Coding::Gzip { cut, junk }),
        1 => prop::option::of(any::<usize>()).prop_map(|cut| Coding::Deflate { cut }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (
        prop_oneof![3 => Just(Endpoint::Api), 1 => Just(Endpoint::Token)],
        prop_oneof![
            3 => prop::sample::select(vec![200u16, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503]),
            1 => 100u16..1000,
        ],
        prop::collection::vec((header_name(), header_value()), 0..8),
        body_bytes(),
        coding(),
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "X-CUSTOM"]),
        prop_oneof![
            prop::sample::select(vec!["/", "/chat.postMessage", "/v1.0/me", "/services/data", "/oauth/token"])
                .prop_map(str::to_string),
            "/[ -~]{0,40}",
        ],
    )
        .prop_map(|(endpoint, status, mut headers, body, coding, method, path)| {
            let body = encode(body, &coding);
            let claim = match &coding {
                Coding::None => None,
                Coding::Claim(c) => Some(*c),
                Coding::Gzip { .. } => Some("gzip"),
                Coding::Deflate { .. } => Some("deflate"),
            };
            if let Some(c) = claim {
                headers.retain(|(n, _)| n != "content-encoding");
                headers.push(("content-encoding".into(), c.as_bytes().to_vec()));
            }
            Response {
                endpoint,
                status,
                headers,
                body,
                method: method.to_string(),
                path,
            }
        })
}

fn encode(body: Vec<u8>, coding: &Coding) -> Vec<u8> {
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    let cut = |mut b: Vec<u8>, at: &Option<usize>| {
        if let Some(at) = at {
            b.truncate(at % (b.len() + 1));
        }
        b
    };
    match coding {
        Coding::None | Coding::Claim(_) => body,
        Coding::Gzip { cut: at, junk } => {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(&body).unwrap();
            let mut b = cut(e.finish().unwrap(), at);
            b.extend_from_slice(junk);
            b
        }
        Coding::Deflate { cut: at } => {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
            e.write_all(&body).unwrap();
            cut(e.finish().unwrap(), at)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The rule-file loader

fn load(text: &str) -> Result<(), TestCaseError> {
    ok(props::check_rule_file(text))
}

/// YAML syntax and rule-file vocabulary to splice into real files.
const YAML_BITS: &[&str] = &[
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "|",
    "|-",
    ">",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "!!int ",
    "!!map ",
    "!!seq ",
    "!<tag:x> ",
    "? ",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "  ",
    "    ",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "%TAG ! x\n",
    "~",
    "null",
    ".inf",
    "-.nan",
    "0x1F",
    "1e309",
    "99999999999999999999",
    "-1",
    "70000",
    "é",
    "\u{feff}",
    "\u{0}",
    "\u{2028}",
    "\u{85}",
    "\\",
    "\\u",
    "on: token\n",
    "match: {status: [4xx]}\n",
    "status: [200]",
    "status: [éx]",
    "content_type: json",
    "content_type: ''",
    "path_prefix: /x",
    "path_prefix: x",
    "expr: ",
    "$pad(",
    "((",
    "))",
    "function($x<s-:n>)",
    "function($x<é>){1}",
    "/a+/",
    "$match(",
    "{ \"status\": 401 }",
    "rules:\n",
    "tests:\n",
    "- name: x\n  expr: body\n",
    "integration: fz\n",
    "auth:\n  token_url: x\n",
    "expect: { unchanged: true }",
    "response: { status: 200 }",
    "base_url: '{metadata.x'",
    "inject: { format: x }",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, String),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Mutation::Flip(at, x)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        4 => (any::<usize>(), prop_oneof![
            4 => prop::sample::select(YAML_BITS).prop_map(str::to_string),
            1 => any::<String>(),
        ]).prop_map(|(at, s)| Mutation::Insert(at, s)),
        1 => (any::<usize>(), 1usize..40).prop_map(|(at, n)| Mutation::Delete(at, n)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for m in mutations {
        let at = |i: usize| i % (b.len() + 1);
        match m {
            Mutation::Flip(i, x) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= x;
                }
            }
            Mutation::Truncate(i) => b.truncate(at(*i)),
            Mutation::Insert(i, s) => {
                let i = at(*i);
                b.splice(i..i, s.bytes());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
        }
    }
    b
}

/// JSONata-ish token soup: enough structure to get past the tokenizer.
fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        3 => prop::collection::vec(prop::sample::select(vec![
            "body", "status", "headers", "request.path", ".", "error", "`retry-after`", "$", "$e", ":=",
            ";", "(", ")", "[", "]", "{", "}", ",", ":", "?", "=", "!=", "and", "or", "in", "&", "+", "-",
            "*", "/", "%", "..", "\"token_expired\"", "'x'", "401", "1e308", "-0", "true", "null",
            "$string(", "$number(", "$contains(", "$substringAfter(", "$match(", "$pad(", "$distinct(",
            "$count(", "$lookup(", "$millis()", "function($x<s:n>)", "function($x<é>)", "/a+/i", "~>",
            "^(", "#$i", "@$v", "\"status\"", "\"action\"", "\"refresh\"",
        ]), 0..30).prop_map(|parts| parts.join(" ")),
        1 => Just(r#"{ "status": 401, "action": "refresh" }"#.to_string()),
    ]
}

/// A rule file assembled from arbitrary parts, so the checks after YAML parsing (match,
/// JSONata compilation, tests, auth) see arbitrary values too.
fn generated_rule_file() -> impl Strategy<Value = Value> {
    let status = prop_oneof![
        3 => prop::sample::select(vec![200i64, 401, 429, 503]).prop_map(|n| json!(n)),
        1 => any::<i64>().prop_map(|n| json!(n)),
        2 => prop::sample::select(vec!["4xx", "5XX", "7xx", "xx", "4x", "é", "éx", "4é", "", "x4xx"])
            .prop_map(|s| json!(s)),
        1 => ".{0,4}".prop_map(|s| json!(s)),
    ];
    let rule = (
        word(),
        prop::sample::select(vec!["api", "token", "both"]),
        prop::collection::vec(status, 0..4),
        prop::option::of(prop_oneof![
            prop::sample::select(vec!["json", "any", "*", "", " ", "form", "JSON"])
                .prop_map(str::to_string),
            any::<String>(),
        ]),
        prop::option::of(prop_oneof![Just("/v1".to_string()), any::<String>()]),
        expression(),
    )
        .prop_map(|(name, on, status, ct, prefix, expr)| {
            let mut m = serde_json::Map::new();
            m.insert("status".into(), json!(status));
            if let Some(ct) = ct {
                m.insert("content_type".into(), json!(ct));
            }
            if let Some(p) = prefix {
                m.insert("path_prefix".into(), json!(p));
            }
            json!({"name": name, "on": on, "match": m, "expr": expr})
        });
    let test = (
        word(),
        any::<i64>(),
        json_value(),
        prop::option::of(word()),
        any::<bool>(),
    )
        .prop_map(|(name, status, body, rule, unchanged)| {
            let mut expect = serde_json::Map::new();
            if unchanged {
                expect.insert("unchanged".into(), json!(true));
            }
            if let Some(r) = rule {
                expect.insert("rule".into(), json!(r));
            }
            json!({"name": name, "response": {"status": status, "body": body}, "expect": expect})
        });
    let auth = prop::option::of((
        prop::sample::select(vec![
            "https://x.test/token",
            "{metadata.u}/t",
            "ftp://x",
            "{",
            "",
        ]),
        prop::sample::select(vec!["Bearer {access_token}", "token", "{access_token}"]),
        prop_oneof![Just("authorization".to_string()), any::<String>()],
    ));
    (
        prop_oneof![3 => Just("fz".to_string()), 1 => any::<String>()],
        prop::sample::select(vec![
            "https://x.test/api", "{metadata.base}/v2", "https://{metadata.x}.test", "http://u@x.test",
            "https://x.test?q", "not a url", "", "{metadata.x",
        ]),
        auth,
        prop::collection::vec(rule, 0..5),
        prop::collection::vec(test, 0..3),
    )
        .prop_map(|(integration, base_url, auth, rules, tests)| {
            let mut doc = json!({"integration": integration, "base_url": base_url, "rules": rules, "tests": tests});
            if let Some((token_url, format, header)) = auth {
                doc["auth"] = json!({"token_url": token_url, "inject": {"format": format, "header": header}});
            }
            doc
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn loader_never_panics_on_arbitrary_text(text in any::<String>()) {
        load(&text)?;
    }

    #[test]
    fn loader_never_panics_on_mutated_shipped_files(
        seed in 0..SHIPPED.len(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let bytes = mutate(SHIPPED[seed].1, &mutations);
        load(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn loader_never_panics_on_generated_rule_files(doc in generated_rule_file(), block in any::<bool>()) {
        // Block YAML (what people write) or flow (JSON is YAML).
        let text = if block {
            serde_yaml_ng::to_string(&doc).unwrap()
        } else {
            serde_json::to_string_pretty(&doc).unwrap()
        };
        load(&text)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// `load_file` reads bytes from disk: text that is not UTF-8 is an error with a line too.
    #[test]
    fn load_file_names_a_line_for_any_bytes(
        seed in 0..SHIPPED.len(),
        mutations in prop::collection::vec(mutation(), 0..6),
    ) {
        let bytes = mutate(SHIPPED[seed].1, &mutations);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fz.yaml");
        std::fs::write(&path, &bytes).unwrap();
        let file = path.display().to_string();
        let lines = props::line_count(&String::from_utf8_lossy(&bytes));
        if let Err(errors) = file::load_file(&path) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                ok(props::names_file_and_line(&file, lines, e))?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The rule input builder and evaluation

proptest! {
    #![proptest_config(config(96))]

    /// Every shipped rule set, on any response, returns an outcome the proxy can apply (no
    /// panic, no engine panic, verdicts with valid statuses and headers).
    #[test]
    fn shipped_rules_always_return_an_outcome(r in response()) {
        ok(props::check_shipped_rules(&r))?;
    }

    /// The same through `evaluate_captured`, with the body as text and any status.
    #[test]
    fn captured_responses_always_return_an_outcome(
        status in any::<u16>(),
        headers in prop::collection::btree_map(header_name(), any::<String>(), 0..6),
        body in prop_oneof![json_value(), any::<String>().prop_map(Value::String)],
        endpoint in prop_oneof![Just(Endpoint::Api), Just(Endpoint::Token)],
        path in ".{0,20}",
    ) {
        let response = CapturedResponse { status, headers, body };
        ok(props::check_shipped_rules_captured(endpoint, &response, &path))?;
    }

    /// The document rules see is exactly the response (see `props::check_rules_see_the_response`).
    #[test]
    fn rules_see_exactly_the_response(
        r in response(),
        json_body in prop::option::of(json_value()),
    ) {
        let mut r = r;
        if let Some(v) = json_body {
            r.body = serde_json::to_vec(&v).unwrap();
            r.headers.retain(|(n, _)| n != "content-encoding");
        }
        ok(props::check_rules_see_the_response(&r))?;
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The token-response parser/classifier

/// Token alphabet of real providers (base64url, JWT dots, padding).
const TOKEN: &str = "[A-Za-z0-9._~+/=-]{1,60}";

fn token_fields() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    (
        prop_oneof![
            6 => TOKEN.prop_map(Value::String),
            1 => Just(json!("")),
            1 => any::<i64>().prop_map(|n| json!(n)),
            1 => Just(Value::Null),
            1 => Just(json!(["tok"])),
        ],
        any::<bool>(),
        prop::option::of(TOKEN),
        prop::option::of(prop_oneof![
            prop::sample::select(vec![
                3600i64,
                0,
                -1,
                i64::MAX,
                i64::MIN,
                9_223_372_036_854_775
            ])
            .prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n.to_string())),
            Just(json!(1e300)),
            Just(json!("soon")),
        ]),
        prop::option::of(prop::sample::select(vec!["repo user", "a,b", ""])),
        prop::option::of(word()),
        prop::collection::vec((word(), json_value()), 0..3),
    )
        .prop_map(
            |(access, has_access, refresh, expires_in, scope, error, extra)| {
                let mut m: serde_json::Map<String, Value> = extra.into_iter().collect();
                if has_access {
                    m.insert("access_token".into(), access);
                }
                if let Some(r) = refresh {
                    m.insert("refresh_token".into(), json!(r));
                }
                if let Some(e) = expires_in {
                    m.insert("expires_in".into(), e);
                }
                if let Some(s) = scope {
                    m.insert("scope".into(), json!(s));
                }
                if let Some(e) = error {
                    m.insert("error".into(), json!(e));
                }
                m
            },
        )
}

#[derive(Debug, Clone)]
enum TokenBody {
    Json(serde_json::Map<String, Value>),
    /// Form-encoded (GitHub without `Accept: application/json`); non-strings dropped.
    Form(serde_json::Map<String, Value>),
    /// A JSON token response cut short.
    Truncated(serde_json::Map<String, Value>, usize),
    /// Valid JSON that is not an object, wrapping a token response.
    Wrapped(serde_json::Map<String, Value>),
    Other(Vec<u8>),
}

impl TokenBody {
    fn bytes(&self) -> Vec<u8> {
        match self {
            TokenBody::Json(m) => serde_json::to_vec(m).unwrap(),
            TokenBody::Form(m) => {
                let mut f = form_urlencoded::Serializer::new(String::new());
                for (k, v) in m {
                    if let Some(s) = v.as_str() {
                        f.append_pair(k, s);
                    }
                }
                f.finish().into_bytes()
            }
            TokenBody::Truncated(m, at) => {
                let mut b = serde_json::to_vec(m).unwrap();
                b.truncate(at % b.len());
                b
            }
            TokenBody::Wrapped(m) => serde_json::to_vec(&json!([m])).unwrap(),
            TokenBody::Other(b) => b.clone(),
        }
    }
}

fn token_body() -> impl Strategy<Value = TokenBody> {
    prop_oneof![
        4 => token_fields().prop_map(TokenBody::Json),
        2 => token_fields().prop_map(TokenBody::Form),
        2 => (token_fields(), any::<usize>()).prop_map(|(m, at)| TokenBody::Truncated(m, at)),
        1 => token_fields().prop_map(TokenBody::Wrapped),
        2 => body_bytes().prop_map(TokenBody::Other),
    ]
}

fn token_status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        4 => prop::sample::select(vec![200u16, 201, 204, 400, 401, 403, 429, 500, 503]),
        1 => 100u16..1000,
    ]
    .prop_map(|s| StatusCode::from_u16(s).unwrap())
}

fn token_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("content-type".to_string()),
                Just("retry-after".to_string()),
                header_name()
            ],
            header_value(),
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(config(128))]

    /// Any answer: no panic, tokens only from a real token response, and a 2xx token response
    /// is tokens unless a token rule objects (see `props::check_token_response`).
    #[test]
    fn token_classifier_never_panics_and_tokens_are_real(
        which in 0..SHIPPED.len(),
        status in token_status(),
        headers in token_headers(),
        body in token_body(),
    ) {
        let bytes = body.bytes();
        let class = ok(props::check_token_response(&props::clients()[which], status, &header_map(&headers), &bytes))?;
        if matches!(body, TokenBody::Truncated(..) | TokenBody::Wrapped(..)) {
            prop_assert!(class != "tokens", "malformed body {body:?} gave tokens");
        }
        if let TokenBody::Other(b) = &body {
            if !b.windows(12).any(|w| w == b"access_token") {
                prop_assert!(class != "tokens", "tokens from {:?}", String::from_utf8_lossy(b));
            }
        }
    }

    /// A 2xx JSON object or form with a non-empty string `access_token`: tokens, unless one of
    /// the integration's token rules says otherwise (and then its action decides the class).
    #[test]
    fn a_2xx_token_response_is_tokens_unless_a_token_rule_objects(
        which in 0..SHIPPED.len(),
        status in prop::sample::select(vec![200u16, 201, 203, 299]).prop_map(|s| StatusCode::from_u16(s).unwrap()),
        headers in token_headers(),
        token in TOKEN,
        fields in token_fields(),
        form in any::<bool>(),
    ) {
        let mut fields = fields;
        fields.insert("access_token".into(), json!(token));
        let body = if form { TokenBody::Form(fields) } else { TokenBody::Json(fields) };
        // A form is read as one only when it is untyped (or typed a form): drop a generated
        // content-type that would say otherwise (`token_fields` in props checks the typed case).
        let headers: Vec<_> = headers
            .into_iter()
            .filter(|(k, _)| !(form && k.eq_ignore_ascii_case("content-type")))
            .collect();
        let client = &props::clients()[which];
        let class = ok(props::check_token_response(client, status, &header_map(&headers), &body.bytes()))?;
        // The check above compares with the rules' own verdict; make sure that is not vacuous:
        // without an error field (GitHub's rule also reads `error=` in form bodies) no shipped
        // token rule objects to a 2xx answer.
        if let TokenBody::Json(f) | TokenBody::Form(f) = &body {
            if !f.keys().any(|k| k.contains("error")) {
                prop_assert_eq!(class, "tokens");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases the properties once found or must keep finding

/// Expressions nested far deeper than any rule: a compile error, not a stack overflow.
#[test]
fn deeply_nested_expressions_are_errors_not_crashes() {
    for depth in [1_000usize, 100_000] {
        for (open, close) in [
            ("(", ")"),
            ("[", "]"),
            ("{\"a\":", "}"),
            ("-", ""),
            ("$not(", ")"),
        ] {
            let expr = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let text = format!("integration: fz\nbase_url: https://x.test\nrules:\n  - name: deep\n    expr: '{expr}'\n");
            if let Err(e) = props::check_rule_file(&text) {
                panic!("depth {depth} of {open}: {e}");
            }
        }
    }
}

/// The engine's one known compile-time panic (non-ASCII text in a function signature) is a
/// load error naming the rule's line, not a crash. The fuzz targets rely on this: they let
/// panics raised inside the engine reach grantd's `catch_unwind`.
#[test]
fn engine_compile_panic_is_a_load_error() {
    let text = "integration: fz\nbase_url: https://x.test\nrules:\n  - name: sig\n    expr: 'function($x)<é:n>{1}'\n";
    let errors = file::parse("rules/fz.yaml", text, Some("fz")).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("rules/fz.yaml:4: rule `sig`: JSONata does not compile: engine panicked"),
        "{errors:?}"
    );
}
