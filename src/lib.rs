//! grantd: an egress sidecar that proxies SaaS API calls and tells the truth about their errors.
//!
//! Data flows one way: request → route (caller check) → connection → upstream → rules →
//! verdict → (refresher | callbacks) → response.
//!
//! Modules, lowest first. **Each imports only from those before it** (no cycles; the proxy's
//! phase files likewise import only downward):
//!
//! 1. leaves: [`body`] (body types, idle timeouts), [`template`] (URL templates, joining, host
//!    and `return_to` allow-lists), [`time`] (clock, RFC 3339), [`retry_after`] (when to try
//!    again), [`memory`] (freed heap back to the OS);
//! 2. [`config`] (typed config, parsed once);
//! 3. [`callers`], [`listener`], [`telemetry`], [`upstream`], [`traces`]: who may call,
//!    accepting sockets, logs and metrics, the outbound client, the OpenTelemetry exporter;
//! 4. [`rules`]: rule files, their evaluation;
//! 5. [`store`]: durable rows, transitions and the events they imply, on SQLite or PostgreSQL;
//! 6. [`callbacks`]: signing and delivering those events;
//! 7. [`connections`]: sealing, caching, refreshing, minting and revoking credentials;
//! 8. [`connect`]: the authorization-code flow;
//! 9. [`proxy`]: the request path, one file per phase;
//! 10. [`admin`] and [`reload`] (rule files swapped while running), then [`app`] (wiring) and
//!     [`cli`].
//!
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
pub mod connections;
pub mod listener;
pub mod memory;
pub mod proxy;
pub mod reload;
pub mod retry_after;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod time;
pub mod traces;
pub mod upstream;
