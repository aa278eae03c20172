//! The floor for grantd's pass-through cost: the same hyper server and hyper-util pooled client
//! with no routing, rules or header work. Used as a baseline by `bench/proxy.py`.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM` forwards `/plain/...` to
//! `http://UPSTREAM/...`, with the same write settings as grantd (flattened writes, nodelay).

#[path = "floor/mod.rs"]
mod floor;

use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19905".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19900".into());
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http1_writev(false)
        .build_http::<hyper::body::Incoming>();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let rest = pq.strip_prefix("/plain").unwrap_or(pq);
                        *req.uri_mut() = format!("http://{upstream}{rest}")
                            .parse()
                            .expect("valid URI");
                        req.headers_mut().remove(http::header::HOST);
                        floor::answer(client.request(req).await)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
