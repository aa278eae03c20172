//! Rate-limit memory end to end: after a provider's 429, grantd answers the connection (or the
//! whole integration) itself with a falling `Retry-After` and the provider sees nothing until
//! the cooldown ends; off per integration; capped; shared by replicas on one PostgreSQL schema.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use http_body_util::Full;

/// A provider that counts its hits and answers 429 with `Retry-After: {retry_after}` while
/// that is set (> 0), 200 otherwise.
#[derive(Default)]
struct Provider {
    hits: AtomicUsize,
    retry_after: AtomicU64,
}

impl Provider {
    async fn start(retry_after: u64) -> (Arc<Provider>, SocketAddr) {
        let p = Arc::new(Provider::default());
        p.retry_after.store(retry_after, Ordering::SeqCst);
        let me = p.clone();
        let addr = upstream(handler(move |_req| {
            let me = me.clone();
            async move {
                me.hits.fetch_add(1, Ordering::SeqCst);
                match me.retry_after.load(Ordering::SeqCst) {
                    0 => json_response(200, r#"{"ok":true}"#),
                    secs => {
                        let mut resp = json_response(429, r#"{"message":"slow down"}"#);
                        resp.headers_mut().insert("retry-after", secs.into());
                        resp
                    }
                }
            }
        }))
        .await;
        (p, addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A lab integration with API-key connections and `ratelimit` as given.
fn rules(api: SocketAddr, ratelimit: &str) -> String {
    format!(
        "integration: lab\nbase_url: http://{api}\ncredentials:\n  api_key: {{ header: X-Api-Key, format: \"{{api_key}}\" }}\nratelimit: {ratelimit}\nrules: []\n"
    )
}

fn start(api: SocketAddr, ratelimit: &str, config: &str) -> Grantd {
    grantd(config)
        .rule_file("lab.yaml", &rules(api, ratelimit))
        .start()
}

async fn connect(g: &Grantd, ids: &[&str]) {
    for id in ids {
        let body = serde_json::json!({"integration": "lab", "credentials": {"kind": "api_key", "api_key": "k"}});
        let put = admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await;
        assert_eq!(put.status, 200, "{:?}", put.json());
    }
}

/// A request for `connection` (or none).
async fn call(addr: SocketAddr, connection: Option<&str>) -> Got {
    let mut req = Request::get(format!("http://{addr}/lab/v1/things"));
    if let Some(id) = connection {
        req = req.header("grantd-connection", id);
    }
    send(req.body(Full::default()).unwrap()).await
}

fn local(got: &Got) -> bool {
    got.status == 429 && got.header("grantd-ratelimited") == Some("local")
}

fn retry_after(got: &Got) -> u64 {
    got.header("retry-after").unwrap().parse().unwrap()
}

async fn metric(addr: SocketAddr, line: &str) -> Option<u64> {
    let text = String::from_utf8(get(addr, "/_grantd/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{line} ")))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn after_a_429_the_connection_gets_local_429s_with_a_falling_retry_after_until_it_ends() {
    let (p, api) = Provider::start(2).await;
    let g = start(api, "{}", "");
    connect(&g, &["acct_1", "acct_2"]).await;
    let first = call(g.addr, Some("acct_1")).await;
    let started = Instant::now();
    assert_eq!(first.status, 429);
    assert_eq!(
        first.header("grantd-ratelimited"),
        None,
        "the provider's own"
    );

    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        let got = call(g.addr, Some("acct_1")).await;
        assert!(local(&got), "answered locally: {}", got.status);
        assert_eq!(got.json()["error"], "rate_limited");
        seen.push(retry_after(&got));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        p.hits(),
        1,
        "the provider saw none of {} requests",
        seen.len()
    );
    assert!(seen.windows(2).all(|w| w[0] >= w[1]), "falling: {seen:?}");
    assert_eq!((seen[0], *seen.last().unwrap()), (2, 1), "{seen:?}");

    // Another connection has its own budget.
    assert!(!local(&call(g.addr, Some("acct_2")).await));
    assert_eq!(p.hits(), 2);

    p.retry_after.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(started.elapsed())).await;
    assert_eq!(
        call(g.addr, Some("acct_1")).await.status,
        200,
        "cooldown over"
    );
    assert_eq!(p.hits(), 3);
    let labels = r#"{integration="lab",scope="connection"}"#;
    let ratelimited = metric(g.addr, &format!("grantd_ratelimited_total{labels}")).await;
    assert_eq!(ratelimited, Some(seen.len() as u64));
    let cooldowns = metric(g.addr, &format!("grantd_ratelimit_cooldowns_total{labels}")).await;
    assert_eq!(cooldowns, Some(2));
}

#[tokio::test]
async fn an_integration_scoped_limit_holds_back_every_connection_and_connectionless_calls() {
    let (p, api) = Provider::start(30).await;
    let g = start(api, "{ scope: integration }", "");
    connect(&g, &["acct_1", "acct_2"]).await;
    assert!(!local(&call(g.addr, Some("acct_1")).await));
    let other = call(g.addr, Some("acct_2")).await;
    assert!(local(&other));
    assert_eq!(other.json()["scope"], "integration");
    assert!(local(&call(g.addr, None).await));
    assert_eq!(p.hits(), 1);
}

#[tokio::test]
async fn with_memory_off_in_the_rule_file_every_request_reaches_the_provider() {
    let (p, api) = Provider::start(30).await;
    let g = start(api, "{ remember: false, scope: integration }", "");
    connect(&g, &["acct_1"]).await;
    for _ in 0..5 {
        let got = call(g.addr, Some("acct_1")).await;
        assert_eq!((got.status, got.header("grantd-ratelimited")), (429, None));
    }
    assert_eq!(p.hits(), 5);
}

#[tokio::test]
async fn a_retry_after_of_one_day_is_capped() {
    let (p, api) = Provider::start(86_400).await;
    let g = start(api, "{}", "");
    connect(&g, &["acct_1"]).await;
    assert_eq!(retry_after(&call(g.addr, Some("acct_1")).await), 86_400);
    let got = call(g.addr, Some("acct_1")).await;
    assert!(local(&got));
    assert!(
        (899..=900).contains(&retry_after(&got)),
        "15 min by default"
    );

    let short = start(api, "{}", "ratelimit: { max_cooldown: 1s }\n");
    connect(&short, &["acct_1"]).await;
    call(short.addr, Some("acct_1")).await;
    assert!(local(&call(short.addr, Some("acct_1")).await));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = p.hits();
    assert!(
        !local(&call(short.addr, Some("acct_1")).await),
        "capped at 1 s"
    );
    assert_eq!(p.hits(), hits + 1);
}

#[tokio::test]
async fn a_429_seen_by_one_replica_makes_another_on_the_same_postgres_answer_locally() {
    let Some(store) = postgres_store_config().await else {
        return;
    };
    let (p, api) = Provider::start(30).await;
    // The default sync interval (1 s).
    let config = "";
    let a = grantd(config)
        .rule_file("lab.yaml", &rules(api, "{}"))
        .store(&store)
        .start();
    let b = grantd(config)
        .rule_file("lab.yaml", &rules(api, "{}"))
        .store(&store)
        .start();
    connect(&a, &["acct_1"]).await;
    assert!(!local(&call(a.addr, Some("acct_1")).await));
    let seen = Instant::now();
    // From now on the provider would answer B: only what A wrote can hold B back.
    p.retry_after.store(0, Ordering::SeqCst);
    let got = loop {
        let got = call(b.addr, Some("acct_1")).await;
        if local(&got) {
            break got;
        }
        assert_eq!(got.status, 200);
        assert!(seen.elapsed() < Duration::from_secs(3), "B never learned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let slipped = p.hits() - 1;
    eprintln!(
        "B answered locally {:?} after A saw the 429; {slipped} of B's requests reached the provider first",
        seen.elapsed()
    );
    assert!((28..=30).contains(&retry_after(&got)));
    assert!(local(&call(b.addr, Some("acct_1")).await));
    assert_eq!(p.hits(), 1 + slipped, "none after B learned");
}

#[tokio::test]
async fn a_rules_retry_verdict_with_retry_after_starts_a_cooldown_too() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let api = upstream(handler(move |_req| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { json_response(200, r#"{"ok":false,"error":"busy"}"#) }
    }))
    .await;
    let busy = "rules:\n  - name: busy\n    match: { status: [200], content_type: json }\n    expr: 'body.error = \"busy\" ? {\"status\": 503, \"action\": \"retry\", \"retry_after\": 5}'\n";
    let text = rules(api, "{}").replace("rules: []\n", busy);
    let g = grantd("").rule_file("lab.yaml", &text).start();
    connect(&g, &["acct_1"]).await;
    let first = call(g.addr, Some("acct_1")).await;
    assert_eq!(
        (first.status, first.header("grantd-action")),
        (503, Some("retry"))
    );
    let got = call(g.addr, Some("acct_1")).await;
    assert!(local(&got));
    assert!((4..=5).contains(&retry_after(&got)));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
