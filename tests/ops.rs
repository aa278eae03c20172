//! The ops listener (`ops.listen`): probes and scrapes reach `/_grantd/{healthz,readyz,metrics}`
//! on it, and nothing else (no proxying, no admin API); readyz on it turns 503 while the proxy
//! drains and when the store stops answering; an address that clashes stops startup.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use hyper::body::Incoming;
use tokio::sync::Notify;

/// An upstream that counts its calls, for "the ops listener never proxies".
fn counting(calls: Arc<AtomicUsize>) -> Handler {
    let echo = echo();
    handler(move |req: Request<Incoming>| {
        calls.fetch_add(1, Ordering::SeqCst);
        echo(req)
    })
}

fn with_ops(upstream: SocketAddr, extra: &str) -> String {
    format!("ops: {{ listen: 127.0.0.1:0 }}\nintegrations:\n  plain: {{ base_url: \"http://{upstream}/plain\" }}\n{extra}")
}

fn ops_addr(g: &Grantd) -> SocketAddr {
    g.app.as_ref().unwrap().ops_addr.expect("ops.listen is set")
}

#[tokio::test]
async fn ops_listener_serves_the_proxys_health_and_metrics_and_nothing_else() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = upstream(counting(calls.clone())).await;
    let g = grantd(&with_ops(up, "")).start();
    let ops = ops_addr(&g);
    assert_ne!(ops, g.addr);
    assert_eq!(get(g.addr, "/plain/x").await.status, 200);

    assert_eq!(get(ops, "/_grantd/healthz").await.json()["status"], "ok");
    let ready = get(ops, "/_grantd/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let metrics = get(ops, "/_grantd/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    // One registry: the request served on the proxy listener is counted on the ops listener.
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"grantd_responses_total{integration="plain",result="passed"} 1"#),
        "{text}"
    );

    let refused = [
        "/plain/x?token=s3cr3t-in-query",
        "/v1/connections",
        "/_grantd/nope",
        "/_grantd/healthz/extra",
        "/",
    ];
    for path in refused {
        let got = admin(ops, "GET", path, None).await;
        assert_eq!(got.status, 404, "{path}");
        assert_eq!(got.json()["error"], "not_found", "{path}");
        let body = String::from_utf8_lossy(&got.body);
        assert!(
            !body.contains("s3cr3t") && !body.contains("plain/x"),
            "the path is echoed: {body}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the ops listener proxied a request"
    );
    // Backwards compatible: the proxy listener still answers probes.
    assert_eq!(get(g.addr, "/_grantd/readyz").await.status, 200);
}

#[tokio::test]
async fn ops_readyz_turns_503_while_the_proxy_drains_a_request_in_flight() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let up = upstream(handler({
        let (arrived, release) = (arrived.clone(), release.clone());
        move |_req| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                arrived.notify_one();
                release.notified().await;
                json_response(200, r#"{"ok":true}"#)
            }
        }
    }))
    .await;
    let mut g = grantd(&with_ops(up, "")).start();
    let (proxy, ops) = (g.addr, ops_addr(&g));
    let in_flight = tokio::spawn(async move { get(proxy, "/plain/slow").await });
    arrived.notified().await;

    let app = g.app.take().unwrap();
    let shutdown = std::thread::spawn(move || app.shutdown());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(ops, "/_grantd/readyz").await;
        if ready.status == 503 {
            assert_eq!(ready.json()["status"], "draining");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz still {} during the drain",
            ready.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !shutdown.is_finished(),
        "the drain ended before the request in flight"
    );
    // Liveness stays up: a draining grantd must not be restarted.
    assert_eq!(get(ops, "/_grantd/healthz").await.status, 200);

    release.notify_one();
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.json()["ok"].as_bool()), (200, Some(true)));
    tokio::task::spawn_blocking(move || shutdown.join().unwrap())
        .await
        .unwrap()
        .expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(ops).await.is_err(),
        "the ops listener outlived grantd"
    );
}

/// A TCP relay to PostgreSQL that the test can cut: grantd then loses its store without the
/// shared server being stopped.
struct Relay {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                conns.lock().unwrap().push(pipe);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { addr, tasks }
    }

    /// Stops accepting and drops every relayed connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

// Multi-threaded: the relay must keep serving while the test thread waits for grantd to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_readyz_turns_503_when_the_store_stops_answering() {
    let Some(store) = postgres_store_config().await else {
        return; // said why, loudly
    };
    let quoted = store.split('"').nth(1).expect("a quoted URL");
    let url = url::Url::parse(quoted).unwrap();
    let target = url.socket_addrs(|| Some(5432)).unwrap()[0];
    let relay = Relay::to(target).await;
    let mut via = url.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(relay.addr.port())).unwrap();
    let up = upstream(echo()).await;
    let g = grantd(&with_ops(up, ""))
        .store(&store.replace(quoted, via.as_str()))
        .start();
    let ops = ops_addr(&g);
    assert_eq!(get(ops, "/_grantd/readyz").await.status, 200);

    relay.cut();
    let ready = get(ops, "/_grantd/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (503, Some("not_ready"))
    );
    assert_eq!(
        get(g.addr, "/_grantd/readyz").await.status,
        503,
        "both listeners say the same"
    );
    assert_eq!(get(ops, "/_grantd/healthz").await.status, 200);
}

fn write_config(dir: &std::path::Path, admin: &str, ops: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let path = dir.join("grantd.yaml");
    let text = format!("listen: 127.0.0.1:0\nworkers: 1\nstore: {{ path: grantd.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: {admin}, token: {ADMIN_TOKEN} }}\nops: {{ listen: {ops} }}\nintegrations: {{ plain: {{ base_url: \"http://127.0.0.1:1\" }} }}\n");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn ops_address_clashes_stop_startup_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "127.0.0.1:4181", "127.0.0.1:4181");
    let e = grantd::config::Config::load(&path).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("ops.listen: 127.0.0.1:4181 is also admin.listen"),
        "{e}"
    );

    // A port something else already holds: named by its key when grantd starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = write_config(
        dir.path(),
        "127.0.0.1:0",
        &taken.local_addr().unwrap().to_string(),
    );
    let config = grantd::config::Config::load(&path).unwrap();
    let sets = grantd::rules::load_dir(&config.rules_dir).unwrap();
    let e = grantd::app::App::start(&config, sets)
        .err()
        .expect("the port is taken");
    assert!(format!("{e:#}").contains("(ops.listen)"), "{e:#}");
}
