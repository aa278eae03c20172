//! Callbacks: `authentication_error`, `reactivated`, `config_error` and `config_recovered`
//! events, signed per the Standard Webhooks spec, delivered from a durable outbox.
//!
//! Owns what each attempt sends ([`body`]), signing ([`sign`]) and delivery ([`deliver`]).
//! Events themselves are made by `store::events` inside the transaction of the transition that
//! causes them; this module must not create events on its own, and must never put a token or a
//! secret in one. A reconnect link (a bearer credential) is added only to the body being sent
//! ([`body::body`]).

pub mod body;
pub mod deliver;
pub mod sign;
