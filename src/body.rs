//! Message bodies as grantd moves them: the boxed body type, a per-frame idle timeout for
//! bodies a peer may stall, a watch that tells a failed request body from a failed upstream,
//! and the buffered forms rules need (collect up to a limit, replay what was read).
//!
//! Owns the waiting on body frames. It must not decide what a failure means to a client
//! (`proxy` turns a [`BodyFailure`] into a response) and must not look inside the bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body whose peer sent nothing for the idle timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct Stalled(pub Duration);

/// A body that fails with [`Stalled`] when no frame arrives within `timeout` of being asked
/// for one. The clock runs only while a frame is awaited, so a slow reader downstream (who
/// stops asking) never times out the peer upstream. The timer is made the first time the
/// peer keeps us waiting: a body that is already there (most API bodies) costs none.
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
            waiting: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let started = this.waiting;
        this.waiting = true;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + this.timeout;
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if !started {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => this
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(Stalled(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The client stopped sending mid-body.
    Stalled,
    /// The client closed the connection or broke the framing mid-body.
    Aborted,
}

impl BodyFailure {
    pub fn of(e: &BoxError) -> BodyFailure {
        if e.downcast_ref::<Stalled>().is_some() {
            BodyFailure::Stalled
        } else {
            BodyFailure::Aborted
        }
    }
}

/// Records the first failure of a body it wraps, so that when the upstream call then fails,
/// the proxy can say the client's body was at fault (not the provider).
pub struct Watched<B> {
    inner: B,
    failure: Arc<OnceLock<BodyFailure>>,
}

impl<B> Watched<B> {
    pub fn new(inner: B) -> (Watched<B>, Arc<OnceLock<BodyFailure>>) {
        let failure = Arc::new(OnceLock::new());
        let watched = Watched {
            inner,
            failure: failure.clone(),
        };
        (watched, failure)
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let _ = self.failure.set(BodyFailure::of(e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub enum Collected {
    Complete(Bytes, Option<HeaderMap>),
    TooLarge(Prefixed),
    Failed(BoxError),
}

/// Reads a body up to `limit` bytes. Past the limit, hands back what was read plus the rest of
/// the stream, so the response can still stream through unmodified. A body that arrives in one
/// frame (the usual small API response) is kept without copying.
pub async fn collect_limited(mut body: Body, limit: usize) -> Collected {
    let mut buf = Chunks::default();
    loop {
        match body.frame().await {
            None => return Collected::Complete(buf.freeze(), None),
            Some(Err(e)) => return Collected::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.push(data);
                    if buf.len() > limit {
                        return Collected::TooLarge(Prefixed {
                            prefix: Some(buf.freeze()),
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Collected::Complete(buf.freeze(), trailers);
                }
            },
        }
    }
}

/// The first chunk as is; only a second chunk starts a copy.
#[derive(Default)]
enum Chunks {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Chunks::Empty => Chunks::One(data),
            Chunks::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Chunks::Many(many)
            }
            Chunks::Many(mut many) => {
                many.extend_from_slice(&data);
                Chunks::Many(many)
            }
        };
    }

    fn len(&self) -> usize {
        match self {
            Chunks::Empty => 0,
            Chunks::One(b) => b.len(),
            Chunks::Many(b) => b.len(),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Chunks::Empty => Bytes::new(),
            Chunks::One(b) => b,
            Chunks::Many(b) => b.freeze(),
        }
    }
}

/// Already-read bytes followed by the rest of the body.
pub struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let n = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + n);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + n);
        }
        hint
    }
}

/// A fully buffered body with its trailers, replayed as read.
pub struct Frames {
    pub data: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(|d| d.is_empty()) && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that yields one chunk, then never another.
    struct Stuck(Option<Bytes>);

    impl http_body::Body for Stuck {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_timeout_and_is_seen_as_stalled() {
        let t = Duration::from_secs(5);
        let (body, failure) =
            Watched::new(IdleTimeout::new(Stuck(Some(Bytes::from_static(b"abc"))), t).boxed());
        let mut body = body;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // Time spent before asking again does not count against the peer.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), t);
        assert!(err.downcast_ref::<Stalled>().is_some(), "{err}");
        assert_eq!(failure.get(), Some(&BodyFailure::Stalled));
    }
}
