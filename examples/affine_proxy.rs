//! A second floor for `bench/proxy.py`: like `bare_proxy`, but each client connection owns one
//! upstream HTTP/1 connection, polled in the same task as the client's, with no pool and no
//! channel hop between tasks. It answers whether hyper-util's pooled client (a task per upstream
//! connection) is what keeps grantd above nginx's CPU per request (measured: it is not).
//!
//! `cargo run --release --example affine_proxy -- LISTEN UPSTREAM` forwards `/plain/...` to
//! `http://UPSTREAM/...`, with the same write settings as grantd (flattened writes, nodelay).

#[path = "floor/mod.rs"]
mod floor;

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19907".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19900".into());
    let host = http::HeaderValue::from_str(&upstream).expect("UPSTREAM is host:port");
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let up = tokio::net::TcpStream::connect(&upstream).await?;
        up.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake::<_, hyper::body::Incoming>(TokioIo::new(up))
            .await
            .map_err(std::io::Error::other)?;
        // http1 serves one request at a time, so the lock is never contended.
        let sender = Arc::new(Mutex::new(sender));
        let host = host.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                let (sender, host) = (sender.clone(), host.clone());
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let rest = pq.strip_prefix("/plain").unwrap_or(pq).to_owned();
                    *req.uri_mut() = rest.parse().expect("valid URI");
                    // Hop-by-hop: a client's `Connection: close` must not close the upstream.
                    req.headers_mut().remove(http::header::CONNECTION);
                    req.headers_mut().insert(http::header::HOST, host);
                    let sent = sender.lock().expect("not poisoned").send_request(req);
                    floor::answer(sent.await)
                }
            });
            let server = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(server);
            // Both connections are polled here; if the upstream closes first, the client's
            // answer in flight is still written.
            tokio::select! {
                _ = &mut server => {}
                _ = conn => { let _ = server.await; }
            }
        });
    }
}
