//! The outbound HTTP client: rustls with webpki + native roots + an optional extra CA bundle,
//! HTTP/1.1 and HTTP/2 by ALPN, a pooled connection set with an idle reaper.
//!
//! Owns trust and connection policy only. It must not decide *where* to connect: `proxy`
//! builds every upstream URI from a configured base URL, so this client is never an open proxy.

use std::path::Path;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;

pub type RequestBody = crate::body::Body;
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// The TLS client configuration: built once at startup (it loads the roots and checks the
/// extra CA bundle, naming the file on failure) and shared by every runtime's client.
pub fn tls_config(config: &UpstreamConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = root_store(config.ca_bundle.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// A pooled client. Each runtime builds its own, so a pooled connection is only ever used by
/// the thread that owns it.
pub fn client(config: &UpstreamConfig, tls: Arc<rustls::ClientConfig>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .http1_writev(false) // see the server side in `proxy`: cheaper for small requests
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .build(connector(config, tls))
}

/// The connector under [`client`]: HTTP or rustls-HTTPS, HTTP/1.1 and HTTP/2 by ALPN.
pub fn connector(
    config: &UpstreamConfig,
    tls: Arc<rustls::ClientConfig>,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

fn root_store(extra: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "some native CA certificates could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "native CA certificates");
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("upstream.ca_bundle {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "upstream.ca_bundle {}: no PEM certificate in the file",
                path.display()
            );
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("upstream.ca_bundle {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}
