//! What the two baseline proxies of `bench/proxy.py` (`bare_proxy`, `affine_proxy`) share.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

/// The upstream's answer as the client gets it, or 502 when the upstream could not be reached.
pub fn answer<E>(
    upstream: Result<http::Response<hyper::body::Incoming>, E>,
) -> Result<http::Response<BoxBody<Bytes, hyper::Error>>, Infallible> {
    Ok(match upstream {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(_) => http::Response::builder()
            .status(502)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            )
            .expect("valid response"),
    })
}
