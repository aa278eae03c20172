//! The `telemetry` section: where OpenTelemetry traces go. Pure data and its checks; the
//! exporter itself is [`crate::traces`].

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`): spans are POSTed as
    /// protobuf to `{otlp_endpoint}/v1/traces`. Traces are off without it.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of the traces grantd starts that are kept, 0 to 1. A trace the app started
    /// (`traceparent`) follows the app's own sampling decision.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

impl TelemetryConfig {
    /// Where spans are sent, when traces are on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint {
            match url::Url::parse(endpoint) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.query().is_none()
                        && u.fragment().is_none() => {}
                Ok(_) => {
                    return Err(format!(
                        "telemetry.otlp_endpoint: `{endpoint}` must be an http(s) URL with a host and no query (the collector's base, e.g. http://collector:4318)"
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "telemetry.otlp_endpoint: `{endpoint}` is not a URL: {e}"
                    ))
                }
            }
        }
        if self.service_name.trim().is_empty() {
            return Err("telemetry.service_name must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("telemetry.sample_ratio must be from 0 to 1".into());
        }
        Ok(())
    }
}

fn default_service_name() -> String {
    "grantd".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}
