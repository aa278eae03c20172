//! Hot reload: a rule file edited while traffic flows applies within a second without failing a
//! request; a broken edit keeps the running rules, readiness and the process; SIGHUP reloads a
//! spawned `grantd serve`.

mod common;
mod spawned;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use spawned::spawn;

/// A lab rule file whose one rule answers `error` (with `status`) for every `ok: false` body.
fn rules(status: u16, error: &str) -> String {
    format!(
        r#"integration: lab
base_url: http://127.0.0.1:1
rules:
  - name: not-ok
    match: {{ status: [200], content_type: json }}
    expr: 'body.ok = false ? {{"status": {status}, "action": "none", "error": "{error}"}}'
"#
    )
}

/// A broken edit: the expression of the rule on line 4 does not compile.
const BROKEN: &str = r#"integration: lab
base_url: http://127.0.0.1:1
rules:
  - name: not-ok
    match: { status: [200], content_type: json }
    expr: |
      body.ok = false ? {"status": 418
"#;

/// grantd with `lab` on [`provider`], its rule file answering 401 as version `v1`.
async fn lab_on_provider() -> Grantd {
    let up = provider().await;
    grantd(&format!(
        "integrations:\n  lab: {{ base_url: \"http://{up}\" }}\n"
    ))
    .rule_file("lab.yaml", &rules(401, "v1"))
    .start()
}

/// Answers `{"ok":false}`; `/slow` after 2 s.
async fn provider() -> SocketAddr {
    upstream(handler(
        |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            json_response(200, r#"{"ok":false}"#)
        },
    ))
    .await
}

/// Which rule version answered: the `Grantd-Error` header.
async fn version(addr: SocketAddr) -> (u16, Option<String>) {
    let got = get(addr, "/lab/x").await;
    (got.status, got.header("grantd-error").map(str::to_string))
}

/// Polls until `error` answers; how long that took.
async fn applied(addr: SocketAddr, error: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if version(addr).await.1.as_deref() == Some(error) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("`{error}` did not apply within {within:?}");
}

/// The value of a counter without labels in the metrics text.
async fn counter(addr: SocketAddr, name: &str) -> u64 {
    let text = String::from_utf8(get(addr, "/_grantd/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Requests in a loop from `tasks` clients until `stop`; every status they saw.
fn traffic(
    addr: SocketAddr,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..tasks)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(version(addr).await.0);
                }
                seen
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_edited_under_traffic_applies_within_a_second_and_no_request_fails() {
    let g = lab_on_provider().await;
    let file = g.dir.path().join("rules/lab.yaml");
    assert_eq!(version(g.addr).await, (401, Some("v1".into())));

    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(g.addr, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A plain write (truncate, then write): the watcher's debounce must not load it half-written.
    std::fs::write(&file, rules(403, "v2")).unwrap();
    let took = applied(g.addr, "v2", Duration::from_secs(1)).await;
    eprintln!("the edited rule applied after {took:?}");
    assert_eq!(counter(g.addr, "grantd_rules_reloads_total").await, 1);

    std::fs::write(&file, BROKEN).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(g.addr, "grantd_rules_reload_errors_total").await == 0 {
        assert!(Instant::now() < deadline, "the broken edit was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert!(
        statuses.len() > 50,
        "traffic flowed: {} requests",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 403),
        "every request answered by the old or the new rule"
    );
    assert_eq!(
        version(g.addr).await,
        (403, Some("v2".into())),
        "old set kept"
    );
    assert_eq!(get(g.addr, "/_grantd/readyz").await.status, 200);
    assert_eq!(counter(g.addr, "grantd_rules_reload_errors_total").await, 1);
    assert_eq!(counter(g.addr, "grantd_rules_reloads_total").await, 1);
}

#[tokio::test]
async fn a_request_in_flight_during_a_reload_finishes_on_the_rules_it_started_with() {
    let g = lab_on_provider().await;
    let addr = g.addr;
    let slow = tokio::spawn(async move { get(addr, "/lab/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(g.dir.path().join("rules/lab.yaml"), rules(403, "v2")).unwrap();
    applied(g.addr, "v2", Duration::from_secs(1)).await;
    assert!(!slow.is_finished(), "still in flight after the swap");
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.header("grantd-error")),
        (401, Some("v1")),
        "the response arrived after the swap and was judged by the old rules"
    );
}

#[tokio::test]
async fn a_reload_that_changes_what_only_a_restart_applies_is_refused() {
    let g = lab_on_provider().await;
    let file = g.dir.path().join("rules/lab.yaml");
    // A new auth section would change the refresher's view of the integration.
    let with_auth = rules(403, "v2").replace(
        "rules:",
        "auth: { token_url: \"http://127.0.0.1:1/token\" }\nrules:",
    );
    std::fs::write(&file, with_auth).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(g.addr, "grantd_rules_reload_errors_total").await == 0 {
        assert!(Instant::now() < deadline, "the edit was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version(g.addr).await, (401, Some("v1".into())));
    assert_eq!(counter(g.addr, "grantd_rules_reloads_total").await, 0);
}

fn write_config(dir: &Path, up: SocketAddr) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/lab.yaml"), rules(401, "v1")).unwrap();
    let config = dir.join("grantd.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\nrules_dir: rules\nstore: {{ path: grantd.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\nreload: {{ watch: false }}\nintegrations:\n  lab: {{ base_url: \"http://{up}\" }}\n"
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn sighup(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test]
async fn sighup_reloads_a_running_process_and_a_broken_file_is_logged_with_its_line() {
    let up = provider().await;
    let dir = tempfile::tempdir().unwrap();
    let g = spawn(&write_config(dir.path(), up));
    let file = dir.path().join("rules/lab.yaml");
    std::fs::write(&file, rules(403, "v2")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        version(g.proxy).await.1.as_deref(),
        Some("v1"),
        "watching is off: only the signal reloads"
    );
    sighup(g.child.id());
    applied(g.proxy, "v2", Duration::from_secs(1)).await;

    std::fs::write(&file, BROKEN).unwrap();
    sighup(g.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(g.proxy, "grantd_rules_reload_errors_total").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version(g.proxy).await, (403, Some("v2".into())));
    assert_eq!(get(g.proxy, "/_grantd/readyz").await.status, 200);
    let log = g.log.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("rules reload rejected"))
        .expect("the rejection is logged");
    assert!(
        line.contains("rules/lab.yaml:4: rule `not-ok`"),
        "names file and line: {line}"
    );
}
