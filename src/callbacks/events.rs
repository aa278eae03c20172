//! What each status transition means as a callback event. Pure functions: the store calls
//! them inside the transaction that records the transition, so an event exists exactly when
//! its transition does; the delivery worker calls [`body`] for what each attempt sends.

use serde_json::{json, Value};

use crate::store::{Delivery, Row, Status, Transition};
use crate::time::rfc3339;

/// An event ready for the outbox. `payload` is the body every attempt sends (plus, for an
/// `authentication_error`, a `reconnect_url` made at sending: see [`body`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: &'static str,
    pub connection_id: Option<String>,
    pub integration: String,
    pub payload: String,
}

pub const AUTHENTICATION_ERROR: &str = "authentication_error";
pub const REACTIVATED: &str = "reactivated";
pub const CONFIG_ERROR: &str = "config_error";
pub const CONFIG_RECOVERED: &str = "config_recovered";
pub const ALL: &[&str] = &[
    AUTHENTICATION_ERROR,
    REACTIVATED,
    CONFIG_ERROR,
    CONFIG_RECOVERED,
];

fn event(
    kind: &'static str,
    connection_id: Option<&str>,
    integration: &str,
    now: i64,
    data: Value,
) -> Event {
    let id = new_id();
    let payload = json!({"type": kind, "timestamp": rfc3339(now), "data": data}).to_string();
    Event {
        id,
        kind,
        connection_id: connection_id.map(str::to_string),
        integration: integration.to_string(),
        payload,
    }
}

/// `msg_` + 24 random hex digits: the Standard Webhooks `webhook-id`, stable across retries.
fn new_id() -> String {
    let mut b = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    format!(
        "msg_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

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

/// The connection-level event for a transition, if it is one the app must hear about.
/// `down_since` is when the connection entered the status it is leaving. An
/// `authentication_error`'s `reconnect_url` is added when it is sent (see [`body`]).
pub fn for_transition(
    row: &Row,
    t: &Transition,
    now: i64,
    down_since: Option<i64>,
) -> Option<Event> {
    let previous = t.from.map(Status::as_str);
    match (t.from, t.to) {
        (Some(from), Status::NeedsReauth) if from != Status::NeedsReauth => {
            let d = &t.detail;
            let error = json!({
                "code": d.get("code").or_else(|| d.get("error")).cloned().unwrap_or(Value::Null),
                "status": d.get("status").cloned().unwrap_or(Value::Null),
                "description": d.get("description").or_else(|| d.get("message")).cloned().unwrap_or(Value::Null),
                "detail": d.get("detail").cloned().unwrap_or(Value::Null),
            });
            let first_failed_at = row.last_error.as_ref().map_or(now, |e| e.at);
            let data = json!({
                "connection_id": row.id,
                "integration": row.integration,
                "previous_status": previous,
                "cause": t.cause,
                "error": error,
                "first_failed_at": rfc3339(first_failed_at),
            });
            Some(event(
                AUTHENTICATION_ERROR,
                Some(&row.id),
                &row.integration,
                now,
                data,
            ))
        }
        (Some(Status::NeedsReauth | Status::ConfigError), Status::Active) => Some(event(
            REACTIVATED,
            Some(&row.id),
            &row.integration,
            now,
            json!({
                "connection_id": row.id,
                "integration": row.integration,
                "previous_status": previous,
                "via": t.cause,
                "down_since": down_since.map(rfc3339),
            }),
        )),
        _ => None,
    }
}

/// An integration's client credentials started being rejected (once per episode).
pub fn config_error(integration: &str, affected: i64, t: &Transition, now: i64) -> Event {
    let d = &t.detail;
    event(
        CONFIG_ERROR,
        None,
        integration,
        now,
        json!({
            "integration": integration,
            "affected_connections": affected,
            "error": {"code": d.get("code").cloned().unwrap_or(Value::Null), "status": d.get("status").cloned().unwrap_or(Value::Null),
                      "description": d.get("description").cloned().unwrap_or(Value::Null)},
        }),
    )
}

/// No connection of the integration is in `config_error` any more.
pub fn config_recovered(integration: &str, since: i64, now: i64) -> Event {
    event(
        CONFIG_RECOVERED,
        None,
        integration,
        now,
        json!({"integration": integration, "down_since": rfc3339(since)}),
    )
}
