//! What a delivery attempt sends: the stored payload, plus a fresh `reconnect_url` for an
//! `authentication_error` when reconnect links are on.
//!
//! Owns [`ReconnectLinks`] and [`body`]. Must not create or change events: their kinds and
//! payloads are `store::events`', written in the transition's transaction.

use serde_json::Value;

use crate::store::events::AUTHENTICATION_ERROR;
use crate::store::Delivery;

/// Makes a ready-to-send "Reconnect" link for a connection (the connect flow's sealed,
/// expiring, single-use links), so an `authentication_error` can carry it. `now` is when the
/// link's lifetime starts.
pub trait ReconnectLinks: Send + Sync {
    fn reconnect_url(&self, connection_id: &str, integration: &str, now: i64) -> String;
}

/// The body to send for a stored event. A reconnect link is a bearer credential, so it is never
/// stored: an `authentication_error` gets one made now (when links are on). Each attempt
/// carries its own link; all of them expire `link_ttl` after the event was created.
pub fn body(d: &Delivery, links: Option<&dyn ReconnectLinks>) -> String {
    let (Some(links), AUTHENTICATION_ERROR, Some(id)) =
        (links, d.kind.as_str(), d.connection_id.as_deref())
    else {
        return d.payload.clone();
    };
    let Ok(mut payload) = serde_json::from_str::<Value>(&d.payload) else {
        return d.payload.clone();
    };
    let Some(data) = payload.get_mut("data").and_then(Value::as_object_mut) else {
        return d.payload.clone();
    };
    let url = links.reconnect_url(id, &d.integration, d.created_at);
    data.insert("reconnect_url".into(), Value::String(url));
    payload.to_string()
}
