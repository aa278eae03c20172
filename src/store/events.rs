//! What each status transition means as a callback event, and when an integration's
//! config-error episode opens and closes. Pure functions: the store calls them inside the
//! transaction that records the transition, so an event exists exactly when its transition does
//! (never lost, never doubled).
//!
//! Owns the event kinds and payloads. Must not touch storage or delivery: sending, signing and
//! the `reconnect_url` added at sending are `callbacks`' business.

use serde_json::{json, Value};

use super::{ConnectionRow, Status, Transition};
use crate::time::rfc3339;

/// An event ready for the outbox. `payload` is the body every attempt sends (plus, for an
/// `authentication_error`, a `reconnect_url` made at sending: see `callbacks::body`).
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

/// The connection-level event for a transition, if it is one the app must hear about.
/// `down_since` is when the connection entered the status it is leaving. An
/// `authentication_error`'s `reconnect_url` is added when it is sent (see `callbacks::body`).
pub fn for_transition(
    row: &ConnectionRow,
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

/// Which way a transition moves its integration's config-error episode (an episode lasts while
/// any connection of the integration is in `config_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeMove {
    /// A connection entered `config_error`: the episode opens, unless it is open already.
    Enter,
    /// A connection left `config_error`: the episode closes, unless another is still in it.
    Leave,
}

/// What the store found when it moved an episode, inside the transition's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeChange {
    /// This transition opened the episode; `affected` connections are in `config_error` now.
    Opened { affected: i64 },
    /// This transition closed the episode, which had opened at `since`.
    Closed { since: i64 },
}

/// The episode rule, half one: which transitions move an episode. The store asks this inside
/// the transaction that records the transition (deciding outside it could lose or double an
/// event), stores the move, and asks [`episode_event`] what the change means.
pub fn episode_move(t: &Transition) -> Option<EpisodeMove> {
    let was = t.from == Some(Status::ConfigError);
    let is = t.to == Status::ConfigError;
    match (was, is) {
        (false, true) => Some(EpisodeMove::Enter),
        (true, false) => Some(EpisodeMove::Leave),
        _ => None,
    }
}

/// The episode rule, half two: `config_error` once per episode, when it opens;
/// `config_recovered` when its last connection leaves `config_error`.
pub fn episode_event(integration: &str, change: EpisodeChange, t: &Transition, now: i64) -> Event {
    match change {
        EpisodeChange::Opened { affected } => config_error(integration, affected, t, now),
        EpisodeChange::Closed { since } => config_recovered(integration, since, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(from: Option<Status>, to: Status) -> Transition {
        Transition {
            from,
            to,
            cause: "refresh_failed".into(),
            detail: json!({"code": "invalid_client", "status": 401}),
        }
    }

    fn row() -> ConnectionRow {
        ConnectionRow {
            key_id: "k1".into(),
            metadata: Value::Null,
            version: 1,
            ..ConnectionRow::new("c1", "slack", 0)
        }
    }

    #[test]
    fn only_entering_and_leaving_config_error_move_an_episode() {
        use Status::*;
        assert_eq!(
            episode_move(&t(Some(Active), ConfigError)),
            Some(EpisodeMove::Enter)
        );
        assert_eq!(
            episode_move(&t(None, ConfigError)),
            Some(EpisodeMove::Enter)
        );
        assert_eq!(
            episode_move(&t(Some(ConfigError), Active)),
            Some(EpisodeMove::Leave)
        );
        assert_eq!(
            episode_move(&t(Some(ConfigError), NeedsReauth)),
            Some(EpisodeMove::Leave)
        );
        assert_eq!(episode_move(&t(Some(ConfigError), ConfigError)), None);
        assert_eq!(episode_move(&t(Some(Active), NeedsReauth)), None);
        assert_eq!(episode_move(&t(None, Active)), None);
    }

    #[test]
    fn an_episode_change_is_one_integration_level_event() {
        let tr = t(Some(Status::Active), Status::ConfigError);
        let e = episode_event("slack", EpisodeChange::Opened { affected: 3 }, &tr, 0);
        assert_eq!((e.kind, e.connection_id.as_deref()), (CONFIG_ERROR, None));
        let p: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(p["data"]["affected_connections"], 3);
        assert_eq!(p["data"]["error"]["code"], "invalid_client");
        let e = episode_event("slack", EpisodeChange::Closed { since: 0 }, &tr, 1_000);
        assert_eq!(e.kind, CONFIG_RECOVERED);
        let p: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(p["data"]["down_since"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn transitions_into_needs_reauth_and_back_to_active_are_events() {
        let r = row();
        let down = for_transition(&r, &t(Some(Status::Active), Status::NeedsReauth), 5, None);
        let down = down.unwrap();
        assert_eq!(
            (down.kind, down.connection_id.as_deref()),
            (AUTHENTICATION_ERROR, Some("c1"))
        );
        assert!(down.id.starts_with("msg_") && down.id.len() == 28);
        let up = for_transition(
            &r,
            &t(Some(Status::NeedsReauth), Status::Active),
            9,
            Some(5),
        );
        let p: Value = serde_json::from_str(&up.unwrap().payload).unwrap();
        assert_eq!(
            (p["type"].as_str(), p["data"]["previous_status"].as_str()),
            (Some(REACTIVATED), Some("needs_reauth"))
        );
        assert!(
            for_transition(&r, &t(Some(Status::Active), Status::ConfigError), 5, None).is_none()
        );
        assert!(for_transition(&r, &t(None, Status::Active), 5, None).is_none());
    }
}
