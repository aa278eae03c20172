//! The `grantd` binary: `check`, `rules eval` and `serve`, run as a platform team would.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn grantd_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grantd"));
    cmd.env_remove("GRANTD_LOG");
    cmd
}

fn run(args: &[&str]) -> Output {
    grantd_bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn eval_stdin(integration: &str, input: &str) -> (i32, serde_json::Value) {
    let rules = repo_path("rules");
    let mut child = grantd_bin()
        .args([
            "rules",
            "eval",
            integration,
            "--rules",
            rules.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), json)
}

#[test]
fn check_passes_every_shipped_rule_test() {
    let out = run(&["check", "--rules", repo_path("rules").to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let last = text.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 80, "{last}");
    assert!(last.ends_with(", 0 failed"), "{last}");
    for integration in common::SHIPPED {
        assert!(
            text.contains(&format!("rules/{integration}.yaml: ")),
            "{integration} missing:\n{text}"
        );
    }
}

#[test]
fn check_accepts_the_example_config() {
    let out = grantd_bin()
        .args([
            "check",
            "--config",
            repo_path("examples/grantd.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a copy of the shipped Slack rules with one edit and runs `check` on it.
fn check_broken(from: &str, to: &str) -> (bool, String) {
    let text = std::fs::read_to_string(repo_path("rules/slack.yaml")).unwrap();
    assert!(text.contains(from), "fixture text not found: {from}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slack.yaml"), text.replacen(from, to, 1)).unwrap();
    let out = run(&["check", "--rules", dir.path().to_str().unwrap()]);
    (out.status.success(), stdout(&out))
}

fn line_of(needle: &str) -> usize {
    let text = std::fs::read_to_string(repo_path("rules/slack.yaml")).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_names_file_rule_and_line_for_bad_jsonata() {
    let (ok, out) = check_broken(
        r#"body.ok = false and body.error = "token_expired""#,
        r#"body.ok = = false"#,
    );
    assert!(!ok, "{out}");
    let rule_line = line_of("- name: token-expired");
    assert!(
        out.contains(&format!(
            "slack.yaml:{rule_line}: rule `token-expired`: JSONata"
        )),
        "{out}"
    );
}

#[test]
fn check_names_file_and_line_for_bad_yaml() {
    let (ok, out) = check_broken(
        "  - name: forbidden\n",
        "  - name: forbidden\n    match: { status: [200\n",
    );
    assert!(!ok, "{out}");
    let line = line_of("- name: forbidden");
    let reported: usize = out
        .split("slack.yaml:")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line in: {out}"));
    assert!(
        (line..line + 4).contains(&reported),
        "reported {reported}, rule at {line}: {out}"
    );
}

#[test]
fn check_fails_a_test_that_expects_the_wrong_status() {
    let (ok, out) = check_broken(
        "expect: { rule: token-dead, status: 401, action: reauth, error: not_authed }",
        "expect: { rule: token-dead, status: 403, action: reauth, error: not_authed }",
    );
    assert!(!ok, "{out}");
    let test_line = line_of("- name: not_authed is a dead grant");
    let rule_line = line_of("- name: token-dead");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(fail.contains(&format!("slack.yaml:{test_line}")), "{fail}");
    assert!(fail.contains("expected status 403, got 401"), "{fail}");
    assert!(
        fail.contains("rule `token-dead` (") && fail.contains(&format!("slack.yaml:{rule_line})")),
        "{fail}"
    );
    assert!(out.trim_end().ends_with("1 failed"), "{out}");
}

/// Slack error codes from Slack's documentation that the catalog does not contain.
#[test]
fn rules_eval_classifies_documented_slack_codes_beyond_the_catalog() {
    let cases = [
        (
            r#"{"status":200,"body":{"ok":false,"error":"not_authed"}}"#,
            401,
            "reauth",
            "token-dead",
        ),
        (
            r#"{"status":200,"body":{"ok":false,"error":"account_inactive"}}"#,
            401,
            "reauth",
            "token-dead",
        ),
        (
            r#"{"status":200,"headers":{"Content-Type":"application/json; charset=utf-8"},"body":{"ok":false,"error":"team_access_not_granted"}}"#,
            403,
            "reauth",
            "missing-scope",
        ),
        (
            r#"{"status":200,"body":{"ok":false,"error":"no_permission"}}"#,
            403,
            "none",
            "forbidden",
        ),
        (
            r#"{"status":200,"body":{"ok":false,"error":"ratelimited"}}"#,
            429,
            "retry",
            "rate-limited",
        ),
        (
            r#"{"status":200,"body":{"ok":false,"error":"service_unavailable"}}"#,
            503,
            "retry",
            "slack-unavailable",
        ),
        (
            r#"{"status":200,"body":{"ok":false,"error":"not_allowed_token_type"}}"#,
            403,
            "fix_config",
            "wrong-token-type",
        ),
        (
            r#"{"on":"token","status":200,"body":{"ok":false,"error":"invalid_refresh_token"}}"#,
            401,
            "reauth",
            "token-endpoint-grant-dead",
        ),
        (
            r#"{"endpoint":"token","status":200,"body":{"ok":false,"error":"invalid_client_id"}}"#,
            500,
            "fix_config",
            "token-endpoint-client",
        ),
    ];
    for (input, status, action, rule) in cases {
        let (code, v) = eval_stdin("slack", input);
        assert_eq!(code, 0, "{input}");
        assert_eq!(
            (
                v["status"].as_u64(),
                v["action"].as_str(),
                v["rule"].as_str()
            ),
            (Some(status), Some(action), Some(rule)),
            "{input} -> {v}"
        );
    }
    let (code, v) = eval_stdin("slack", r#"{"status":200,"body":{"ok":true}}"#);
    assert_eq!((code, v), (0, serde_json::json!({"unchanged": true})));
}

#[test]
fn rules_eval_rejects_bad_input_with_exit_2() {
    assert_eq!(eval_stdin("slack", "not json").0, 2);
    assert_eq!(eval_stdin("slack", r#"{"status":200,"bogus":1}"#).0, 2);
    assert_eq!(eval_stdin("nosuch", r#"{"status":200}"#).0, 2);
}

/// A `grantd serve` child process, killed on drop.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &Path) -> Served {
    let mut served = Served {
        child: grantd_bin()
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        addr: "0.0.0.0:0".parse().unwrap(),
    };
    let stderr = served.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listen=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("grantd logs its listen address");
    served.addr = addr.parse().unwrap();
    served
}

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn serve_rewrites_lies_and_streams_a_large_download_in_constant_memory() {
    const SIZE: usize = 64 * 1024 * 1024;
    let up = upstream(handler(
        |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path().ends_with("/big") {
                static CHUNK: [u8; 64 * 1024] = [7; 64 * 1024];
                let frames = (0..SIZE / CHUNK.len())
                    .map(|_| Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&CHUNK))));
                use http_body_util::BodyExt;
                http::Response::builder()
                    .header("content-type", "application/json") // matched by the rules' prefilter, too big to buffer
                    .body(http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed())
                    .unwrap()
            } else {
                json_response(200, r#"{"ok":false,"error":"token_expired"}"#)
            }
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grantd.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nrules_dir: {}\nstore: {{ path: grantd.db }}\nencryption: {{ key: {TEST_KEY} }}\nintegrations:\n  slack: {{ base_url: \"http://{up}/api\" }}\n",
            repo_path("rules").display()
        ),
    )
    .unwrap();
    let served = serve(&config);
    let got = get(served.addr, "/slack/chat.postMessage").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("grantd-rule"), Some("slack/token-expired"));

    let status_file = format!("/proc/{}/status", served.child.id());
    let before = kib(&std::fs::read_to_string(&status_file).unwrap(), "VmRSS:");
    let resp = client()
        .request(
            http::Request::get(format!("http://{}/slack/big", served.addr))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut total = 0;
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(total, SIZE);
    let peak = kib(&std::fs::read_to_string(&status_file).unwrap(), "VmHWM:");
    // Buffering the download would add 64 MiB; streaming adds a few socket buffers.
    assert!(
        peak < before + 16 * 1024,
        "peak RSS {peak} KiB vs {before} KiB before a 64 MiB download"
    );
}

#[test]
fn serve_refuses_to_start_on_bad_config_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "integrations:\n  slack: { base_url: \"${GRANTD_TEST_SURELY_UNSET}\" }\n",
            "GRANTD_TEST_SURELY_UNSET",
        ),
        ("upstream: { conect_timeout: 3s }\n", "conect_timeout"),
        ("integrations:\n  nosuch: {}\n", "nosuch"),
        ("encryption: { key: bm90LTMyLWJ5dGVz }\n", "encryption.key"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &path,
            format!(
                "rules_dir: {}\nstore: {{ path: c{i}.db }}\n{}{text}",
                repo_path("rules").display(),
                if text.contains("encryption:") {
                    String::new()
                } else {
                    format!("encryption: {{ key: {TEST_KEY} }}\n")
                }
            ),
        )
        .unwrap();
        let out = grantd_bin()
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
}

#[test]
fn rules_eval_prints_what_the_refresher_would_do_with_a_token_response() {
    let cases = [
        // A token rule fires (GitHub's 200 that is an error).
        (
            "github",
            r#"{"on":"token","status":200,"body":"error=bad_refresh_token&error_description=x"}"#,
            "reauth",
            401,
        ),
        // No rule: RFC 6749 §5.2 decides.
        (
            "hubspot",
            r#"{"on":"token","status":400,"body":{"error":"unsupported_grant_type"}}"#,
            "fix_config",
            503,
        ),
        (
            "hubspot",
            r#"{"on":"token","status":429,"headers":{"retry-after":"30"},"body":"slow"}"#,
            "retry",
            503,
        ),
        (
            "hubspot",
            r#"{"on":"token","status":200,"body":{"access_token":"x","expires_in":1800}}"#,
            "none",
            200,
        ),
    ];
    for (integration, input, action, status) in cases {
        let (code, v) = eval_stdin(integration, input);
        assert_eq!(code, 0, "{input}");
        let c = &v["classification"];
        assert_eq!(
            (c["action"].as_str(), c["status"].as_u64()),
            (Some(action), Some(status)),
            "{input} -> {v}"
        );
    }
    let (_, v) = eval_stdin(
        "hubspot",
        r#"{"on":"token","status":429,"headers":{"retry-after":"30"},"body":"slow"}"#,
    );
    assert_eq!(v["classification"]["retry_after"], 30);
}

#[test]
fn the_readme_provider_table_is_the_providers_command_output() {
    let out = run(&["providers", "--rules", repo_path("rules").to_str().unwrap()]);
    assert!(out.status.success());
    let table = stdout(&out);
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let start = "<!-- providers:start -->\n";
    let end = "<!-- providers:end -->";
    let from = readme.find(start).expect("README has the providers table") + start.len();
    let to = readme[from..].find(end).unwrap() + from;
    assert_eq!(
        &readme[from..to],
        table,
        "README's provider table drifted: paste the output of `grantd providers --rules rules`"
    );
    assert!(table.lines().count() >= 2 + common::SHIPPED.len());
}
