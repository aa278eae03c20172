//! grantd: an egress sidecar that proxies SaaS API calls and tells the truth about their errors.
//!
//! Data flows one way: request → route (caller check) → connection → upstream → rules →
//! verdict → (refresher | callbacks) → response.
//!
//! Modules, lowest first; each imports only from those before it: [`body`], [`template`] and
//! [`retry_after`] (leaves: bodies and their timeouts; URL templates and host allow-lists; when
//! to try again), [`config`],
//! [`callers`], [`listener`], [`telemetry`], [`upstream`], [`rules`], [`store`] and
//! [`callbacks`], [`grants`], [`inject`], [`connect`], [`proxy`], [`admin`], [`app`], [`cli`].
//! The store shapes the events it writes inside its transactions (`store::events`), so
//! `callbacks` imports `store` and never the other way round.

pub mod admin;
pub mod app;
pub mod body;
pub mod callbacks;
pub mod callers;
pub mod cli;
pub mod config;
pub mod connect;
pub mod grants;
pub mod listener;
pub mod proxy;
pub mod retry_after;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod time;
pub mod upstream;
