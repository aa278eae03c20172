//! Accepting clients on every listener: a cap on open connections, backoff (not spinning)
//! when accepting fails (e.g. out of file descriptors), and the HTTP server settings that bound
//! how long a client may stall us (header read timeout, which also closes idle keep-alive
//! connections; HTTP/2 keep-alive pings that drop dead peers; an idle timeout on request
//! bodies).
//!
//! [`serve`] is the loop of the control-plane listeners (admin API, public connect listener);
//! the proxy runs its own loop (per-worker runtimes, graceful drain) on [`Gate`] and [`http()`].
//! Owns no request logic: each listener passes its own handler.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::IdleTimeout;
use crate::config::ServerConfig;

/// The HTTP/1 + HTTP/2 server settings every listener shares.
pub fn http(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Admits clients: at most `max_connections` open at once (a permit lives as long as its
/// connection); others wait in the kernel's backlog.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
}

impl Gate {
    pub fn new(max_connections: usize) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// The next client. Accept errors (EMFILE, ENFILE, ENOBUFS, ...) back off from 5 ms to
    /// 1 s instead of retrying at once, which would spin a core while nothing can succeed.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, OwnedSemaphorePermit) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        let mut backoff = Duration::from_millis(5);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return (stream, permit),
                Err(e) => {
                    if backoff >= Duration::from_millis(640) {
                        tracing::warn!(error = %e, "accept keeps failing; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Serves `handle` on `listener` until `stop` turns true.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    config: &ServerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Request<crate::body::Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let gate = Gate::new(config.max_connections);
    let builder = http(config);
    let body_timeout = config.body_timeout;
    loop {
        let (stream, permit) = tokio::select! {
            accepted = gate.accept(&listener) => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let handle = handle.clone();
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let req = req.map(|b| IdleTimeout::new(b, body_timeout).boxed());
                    let response = handle(req);
                    async move { Ok::<_, Infallible>(response.await) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}
