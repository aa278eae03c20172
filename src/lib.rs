//! grantd: an egress sidecar that proxies SaaS API calls and tells the truth about their errors.
//!
//! Data flows one way: request → route → upstream → rules → verdict → response.
//! [`proxy`] routes and streams, [`upstream`] owns the outbound client, [`rules`] turns
//! provider responses into verdicts, [`config`] is the typed deployment config and
//! [`telemetry`] the logs and metrics.

pub mod admin;
pub mod app;
pub mod body;
pub mod callbacks;
pub mod callers;
pub mod cli;
pub mod config;
pub mod connect;
pub mod grants;
pub mod inject;
pub mod listener;
pub mod proxy;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod upstream;
