//! Real TLS upstreams: a private CA trusted through `upstream.ca_bundle`, and HTTP/2 by ALPN.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Pki {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// An HTTPS server offering h2 and http/1.1 that answers with the HTTP version it saw.
async fn tls_upstream(pki: &Pki) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.clone()], pki.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            r#"{{"ok":false,"error":"token_expired","version":"{:?}"}}"#,
                            req.version()
                        );
                        Ok::<_, Infallible>(json_response(200, &body))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_with_extra_ca_bundle_speaks_http2() {
    let pki = pki();
    let up = tls_upstream(&pki).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pki.ca_pem).unwrap();
    let g = grantd(&format!(
        "upstream: {{ ca_bundle: \"{}\" }}\nintegrations:\n  slack: {{ base_url: \"https://localhost:{}/api\" }}\n",
        ca.path().display(),
        up.port()
    ))
    .shipped_rules("slack")
    .start();
    let got = get(g.addr, "/slack/chat.postMessage").await;
    assert_eq!(
        got.status,
        401,
        "rules apply over TLS: {:?}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(got.json()["version"], "HTTP/2.0", "ALPN negotiated h2");
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_a_502_that_says_so() {
    let pki = pki();
    let up = tls_upstream(&pki).await;
    let g = grantd(&format!(
        "integrations:\n  slack: {{ base_url: \"https://localhost:{}/api\" }}\n",
        up.port()
    ))
    .shipped_rules("slack")
    .start();
    let got = get(g.addr, "/slack/chat.postMessage").await;
    assert_eq!(got.status, 502);
    let message = got.json()["message"].as_str().unwrap().to_string();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

#[test]
fn a_ca_bundle_without_certificates_is_a_startup_error_naming_the_file() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "not a certificate\n").unwrap();
    let config = grantd::config::Config::parse(
        &format!(
            "upstream: {{ ca_bundle: \"{}\" }}\n",
            empty.path().display()
        ),
        &|_| None,
    )
    .unwrap();
    let err = match grantd::proxy::Proxy::new(&config, Default::default()) {
        Ok(_) => panic!("a bundle with no certificate must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
}
