//! The delivery worker: sends due outbox rows, oldest first per connection, signed, and
//! decides what each answer means. A claim (CAS on the attempt count) makes one sender per
//! attempt, across tasks and processes; a crash mid-send is retried after the claim expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use super::body::{self, ReconnectLinks};
use super::sign::{self, SigningKey};
use crate::config::{CallbacksConfig, EndpointConfig};
use crate::store::events::ALL;
use crate::store::{Delivery, DeliveryResult, Outbox, Store};
use crate::telemetry::{CallbackMetrics, Metrics};
use crate::time::now_ms;
use crate::upstream::UpstreamClient;

struct Endpoint {
    url: Uri,
    secrets: Vec<SigningKey>,
    timeout: Duration,
}

pub struct Deliverer {
    store: Arc<dyn Store>,
    client: UpstreamClient,
    endpoints: HashMap<String, Endpoint>,
    config: CallbacksConfig,
    /// Makes the `reconnect_url` of `authentication_error` events (when links are on).
    links: Option<Arc<dyn ReconnectLinks>>,
    metrics: CallbackMetrics,
}

/// Validates the endpoints and derives the store's routing table. Errors name the endpoint.
pub fn outbox(config: &CallbacksConfig) -> Result<Outbox, String> {
    let mut endpoints = Vec::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let at = format!("callbacks.endpoints[{i}]");
        parse_endpoint(e).map_err(|m| format!("{at}: {m}"))?;
        if let Some(events) = &e.events {
            if let Some(bad) = events.iter().find(|k| !ALL.contains(&k.as_str())) {
                return Err(format!(
                    "{at}.events: unknown event `{bad}` (known: {})",
                    ALL.join(", ")
                ));
            }
        }
        if endpoints.iter().any(|(k, _)| *k == e.key()) {
            return Err(format!("{at}: two endpoints are named `{}`", e.key()));
        }
        endpoints.push((e.key(), e.events.clone()));
    }
    Ok(Outbox { endpoints })
}

fn parse_endpoint(e: &EndpointConfig) -> Result<Endpoint, String> {
    let url: Uri = e
        .url
        .parse()
        .map_err(|_| format!("url `{}` is not a URL", e.url))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
        return Err(format!("url `{}` must be http(s)://host/...", e.url));
    }
    if e.secrets.is_empty() {
        return Err("needs at least one secret (whsec_...)".into());
    }
    let secrets = e
        .secrets
        .iter()
        .map(|s| SigningKey::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoint {
        url,
        secrets,
        timeout: e.timeout,
    })
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        client: UpstreamClient,
        config: &CallbacksConfig,
        links: Option<Arc<dyn ReconnectLinks>>,
    ) -> Result<Deliverer, String> {
        let mut endpoints = HashMap::new();
        for e in &config.endpoints {
            endpoints.insert(e.key(), parse_endpoint(e)?);
        }
        Ok(Deliverer {
            store,
            client,
            endpoints,
            config: config.clone(),
            links,
            metrics: Metrics::default().callbacks(),
        })
    }

    /// Counts deliveries in `metrics` (the process's registry) instead of a private one.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Deliverer {
        self.metrics = metrics.callbacks();
        self
    }

    /// Runs until the process stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = now_ms();
            match self.store.due_deliveries(now, 100).await {
                Ok(due) => {
                    for d in due {
                        let timeout = self
                            .endpoints
                            .get(&d.endpoint)
                            .map_or(Duration::from_secs(10), |e| e.timeout);
                        let until = now + timeout.as_millis() as i64 + 5_000;
                        if self
                            .store
                            .claim_delivery(&d, now, until)
                            .await
                            .unwrap_or(false)
                        {
                            let me = self.clone();
                            tokio::spawn(async move { me.deliver(d).await });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the callback outbox"),
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn deliver(&self, d: Delivery) {
        let result = match self.endpoints.get(&d.endpoint) {
            None => DeliveryResult::Failed {
                error: format!("endpoint `{}` is no longer configured", d.endpoint),
            },
            Some(ep) => self.attempt(ep, &d).await,
        };
        match &result {
            DeliveryResult::Delivered => {
                self.metrics.delivered.inc();
                tracing::info!(event = %d.id, kind = %d.kind, endpoint = %d.endpoint, "callback delivered")
            }
            DeliveryResult::Retry { error, .. } => {
                self.metrics.failed.inc();
                tracing::info!(event = %d.id, endpoint = %d.endpoint, attempt = d.attempts + 1, %error, "callback attempt failed; will retry")
            }
            DeliveryResult::Failed { error } => {
                self.metrics.failed.inc();
                tracing::warn!(event = %d.id, endpoint = %d.endpoint, %error, "callback failed for good")
            }
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.store.finish_delivery(&d, &result, now_ms()).await {
            tracing::error!(event = %d.id, error = %e, "cannot record the callback result; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn attempt(&self, ep: &Endpoint, d: &Delivery) -> DeliveryResult {
        let now = now_ms();
        let timestamp = now / 1000;
        let body = body::body(d, self.links.as_deref());
        let request = Request::post(ep.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign::signature(&ep.secrets, &d.id, timestamp, &body),
            )
            .header(
                header::USER_AGENT,
                concat!("grantd/", env!("CARGO_PKG_VERSION")),
            )
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed(),
            );
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return DeliveryResult::Failed {
                    error: format!("cannot build the request: {e}"),
                }
            }
        };
        let sent = tokio::time::timeout(ep.timeout, async {
            let resp = self.client.request(request).await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok());
            // Drain (bounded) so the connection can be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        })
        .await;
        let (error, retry_after) = match sent {
            Ok(Ok((status, _))) if status.is_success() => return DeliveryResult::Delivered,
            Ok(Ok((status, _)))
                if status.is_client_error()
                    && status != StatusCode::REQUEST_TIMEOUT
                    && status != StatusCode::TOO_MANY_REQUESTS =>
            {
                return DeliveryResult::Failed {
                    error: format!("HTTP {} (a 4xx is permanent)", status.as_u16()),
                }
            }
            Ok(Ok((status, retry_after))) => (format!("HTTP {}", status.as_u16()), retry_after),
            Ok(Err(e)) => (format!("cannot connect: {e}"), None),
            Err(_) => (format!("no answer within {:?}", ep.timeout), None),
        };
        if now - d.window_start > self.config.retry_for.as_millis() as i64 {
            return DeliveryResult::Failed {
                error: format!("{error}; gave up after {} attempts", d.attempts + 1),
            };
        }
        let backoff = self.backoff(d.attempts);
        let wait = retry_after.map_or(backoff, |s| backoff.max(s * 1000));
        DeliveryResult::Retry {
            at: now + wait,
            error,
        }
    }

    /// Exponential with ±20% jitter, capped.
    fn backoff(&self, attempts: i64) -> i64 {
        let base = self.config.retry_base.as_millis() as i64;
        let capped = base
            .saturating_mul(1 << attempts.clamp(0, 30))
            .min(self.config.retry_max.as_millis() as i64);
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let spread = capped / 5;
        capped - spread + (u64::from_le_bytes(b) % (2 * spread as u64 + 1)) as i64
    }
}
