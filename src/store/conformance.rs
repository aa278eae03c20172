//! One test suite for every store implementation: SQLite on a temp file, PostgreSQL in a
//! fresh schema (`GRANTD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`).
//! Without a reachable PostgreSQL the PostgreSQL half is skipped loudly, except under `CI=true`,
//! where it fails.

use std::time::Duration;

use super::*;
use crate::time::now_ms;

fn row(id: &str) -> ConnectionRow {
    let now = now_ms();
    ConnectionRow {
        id: id.into(),
        integration: "slack".into(),
        status: Status::Active,
        key_id: "k1".into(),
        access_token: Some(b"sealed-a".to_vec()),
        refresh_token: Some(b"sealed-r".to_vec()),
        kind: "oauth2".into(),
        secret: None,
        expires_at: Some(now + 60_000),
        scopes: "chat:write".into(),
        metadata: serde_json::json!({"team": "T1"}),
        version: 0,
        lease_owner: None,
        lease_until: None,
        refresh_failures: 0,
        next_attempt_at: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

pub async fn put_creates_then_replaces_bumping_the_version(s: &dyn Store) {
    assert_eq!(s.put(row("a"), None).await.unwrap().version, 1);
    let mut r = row("a");
    r.access_token = Some(b"sealed-b".to_vec());
    assert_eq!(s.put(r, None).await.unwrap().version, 2);
    let got = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.access_token.as_deref()),
        (2, Some(&b"sealed-b"[..]))
    );
    assert_eq!(got.metadata["team"], "T1");
}

pub async fn cas_writes_only_on_the_expected_version_and_records_transitions(s: &dyn Store) {
    let stored = s.put(row("a"), None).await.unwrap();
    let mut next = stored.clone();
    next.version = 2;
    next.status = Status::NeedsReauth;
    let t = Transition {
        from: Some(Status::Active),
        to: Status::NeedsReauth,
        cause: "refresh_failed".into(),
        detail: serde_json::json!({"error": "invalid_grant"}),
    };
    assert!(s.cas(&next, 1, Some(t.clone())).await.unwrap());
    assert!(
        !s.cas(&next, 1, Some(t)).await.unwrap(),
        "stale version loses"
    );
    let log = s.transitions("a").await.unwrap();
    assert_eq!(log.len(), 1, "the losing CAS recorded nothing");
    assert_eq!(
        (log[0].from_status, log[0].to_status),
        (Some(Status::Active), Status::NeedsReauth)
    );
}

pub async fn leases_are_exclusive_until_they_expire(s: &dyn Store) {
    s.put(row("a"), None).await.unwrap();
    let now = now_ms();
    assert!(s
        .acquire_lease("a", "p1", now, now + 1000, 10)
        .await
        .unwrap());
    assert!(!s
        .acquire_lease("a", "p2", now, now + 1000, 10)
        .await
        .unwrap());
    assert!(
        s.acquire_lease("a", "p1", now, now + 2000, 10)
            .await
            .unwrap(),
        "the holder may extend"
    );
    assert!(
        s.acquire_lease("a", "p2", now + 2001, now + 3000, 10)
            .await
            .unwrap(),
        "taken over after expiry"
    );
    s.release_lease("a", "p1").await.unwrap();
    assert_eq!(
        s.get("a").await.unwrap().unwrap().lease_owner.as_deref(),
        Some("p2"),
        "only the owner releases"
    );
}

pub async fn due_lists_active_expiring_unleased_rows(s: &dyn Store) {
    let now = now_ms();
    for (id, expires) in [("soon", now + 10_000), ("later", now + 3_600_000)] {
        let mut r = row(id);
        r.expires_at = Some(expires);
        s.put(r, None).await.unwrap();
    }
    let due = s.due(now, now + 60_000, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["soon"]
    );
    s.acquire_lease("soon", "p", now, now + 5000, 10)
        .await
        .unwrap();
    assert!(s.due(now, now + 60_000, 10).await.unwrap().is_empty());
}

pub async fn list_pages_and_filters_and_counts_group(s: &dyn Store) {
    for id in ["a", "b", "c"] {
        s.put(row(id), None).await.unwrap();
    }
    let mut gh = row("d");
    gh.integration = "github".into();
    s.put(gh, None).await.unwrap();
    let page = s
        .list(&ListQuery {
            integration: Some("slack".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let next = s
        .list(&ListQuery {
            integration: Some("slack".into()),
            after: Some("b".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
    let mut counts = s.counts().await.unwrap();
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        counts,
        vec![
            ("github".into(), Status::Active, 1),
            ("slack".into(), Status::Active, 3)
        ]
    );
    assert!(s.delete("a").await.unwrap());
    assert!(s.get("a").await.unwrap().is_none());
}

pub async fn outbox_events_are_written_with_their_transition(s: &dyn Store) {
    assert_eq!(s.backlog().await.unwrap(), (0, None), "an empty outbox");
    let stored = s.put(row("a"), None).await.unwrap();
    let mut next = stored.clone();
    next.version = 2;
    next.status = Status::NeedsReauth;
    next.updated_at = now_ms();
    let t = Transition {
        from: Some(Status::Active),
        to: Status::NeedsReauth,
        cause: "refresh_failed".into(),
        detail: serde_json::json!({"code": "invalid_grant"}),
    };
    assert!(s.cas(&next, 1, Some(t)).await.unwrap());
    assert_eq!(
        s.backlog().await.unwrap(),
        (1, Some(next.updated_at)),
        "one pending delivery, its event written with the transition"
    );
    let due = s.due_deliveries(now_ms() + 1, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].kind.as_str(), due[0].endpoint.as_str()),
        ("authentication_error", "app")
    );
    let now = now_ms() + 1;
    assert!(s.claim_delivery(&due[0], now, now + 60_000).await.unwrap());
    assert!(
        !s.claim_delivery(&due[0], now, now + 60_000).await.unwrap(),
        "one sender per attempt"
    );
    assert!(
        s.due_deliveries(now, 10).await.unwrap().is_empty(),
        "claimed deliveries are not due"
    );
    s.finish_delivery(&due[0], &DeliveryResult::Delivered, now)
        .await
        .unwrap();
    let delivered = s.deliveries(Some("delivered"), 10).await.unwrap();
    assert_eq!((delivered.len(), delivered[0].attempts), (1, 1));
    assert_eq!(
        s.backlog().await.unwrap(),
        (0, None),
        "delivered is not backlog"
    );
}

pub async fn a_config_error_episode_is_one_event(s: &dyn Store) {
    for id in ["a", "b"] {
        let stored = s.put(row(id), None).await.unwrap();
        let mut next = stored.clone();
        next.version = 2;
        next.status = Status::ConfigError;
        let t = Transition {
            from: Some(Status::Active),
            to: Status::ConfigError,
            cause: "refresh_failed".into(),
            detail: serde_json::json!({}),
        };
        assert!(s.cas(&next, 1, Some(t)).await.unwrap());
    }
    let kinds = |d: Vec<Delivery>| d.iter().map(|d| d.kind.clone()).collect::<Vec<_>>();
    assert_eq!(
        kinds(s.deliveries(None, 10).await.unwrap()),
        vec!["config_error"]
    );
    for id in ["a", "b"] {
        let mut back = s.get(id).await.unwrap().unwrap();
        back.version = 3;
        back.status = Status::Active;
        let t = Transition {
            from: Some(Status::ConfigError),
            to: Status::Active,
            cause: "refresh_succeeded".into(),
            detail: serde_json::json!({}),
        };
        assert!(s.cas(&back, 2, Some(t)).await.unwrap());
    }
    let mut all = kinds(s.deliveries(None, 10).await.unwrap());
    all.sort();
    assert_eq!(
        all,
        vec![
            "config_error",
            "config_recovered",
            "reactivated",
            "reactivated"
        ]
    );
}

fn outbox() -> Outbox {
    Outbox {
        endpoints: vec![("app".into(), None)],
    }
}

async fn sqlite() -> (tempfile::TempDir, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::open(
        &dir.path().join("grantd.db"),
        Duration::from_secs(5),
        outbox(),
    )
    .await
    .unwrap();
    (dir, Box::new(store))
}

async fn postgres() -> Option<Box<dyn Store>> {
    let url = std::env::var("GRANTD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut b = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let schema = format!(
        "t_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    match postgres::PostgresStore::open(&url, Some(&schema), outbox()).await {
        Ok(s) => Some(Box::new(s)),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the PostgreSQL store tests: {e}")
        }
        Err(e) => {
            eprintln!("\n*** SKIPPED PostgreSQL store tests: {e}\n*** Start PostgreSQL on 127.0.0.1:5432 (trust auth, database test) or set GRANTD_TEST_POSTGRES.\n");
            None
        }
    }
}

macro_rules! for_every_store {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test]
            async fn $case() {
                let (_dir, s) = super::sqlite().await;
                super::$case(&*s).await
            })*
        }
        mod on_postgres {
            $(#[tokio::test]
            async fn $case() {
                let Some(s) = super::postgres().await else { return };
                super::$case(&*s).await
            })*
        }
    };
}

for_every_store!(
    put_creates_then_replaces_bumping_the_version,
    cas_writes_only_on_the_expected_version_and_records_transitions,
    leases_are_exclusive_until_they_expire,
    due_lists_active_expiring_unleased_rows,
    list_pages_and_filters_and_counts_group,
    outbox_events_are_written_with_their_transition,
    a_config_error_episode_is_one_event,
    leases_are_capped_per_integration,
    a_lease_frees_its_slot_however_it_ends,
    a_connect_state_is_taken_once_even_under_a_race,
    a_browser_bound_state_is_taken_only_with_its_proof,
    a_connect_link_is_used_once,
    claims_take_listed_due_rows_within_the_fleet_cap,
    concurrent_claims_never_share_a_row_or_exceed_the_cap,
    a_cooldown_keeps_its_later_end_and_ended_ones_are_not_listed,
);

pub async fn a_connect_state_is_taken_once_even_under_a_race(s: &dyn Store) {
    let now = now_ms();
    let state = ConnectState {
        hash: "h1".into(),
        integration: "google".into(),
        connection_id: "c1".into(),
        key_id: "k1".into(),
        verifier: Some(b"sealed-verifier".to_vec()),
        browser: None,
        detail: serde_json::json!({"redirect_uri": "https://x/cb"}),
        created_at: now,
        expires_at: now + 600_000,
    };
    s.put_connect_state(&state, now).await.unwrap();
    assert_eq!(
        s.take_connect_state("nope", None, now).await.unwrap(),
        Taken::Unknown
    );
    let take = || s.take_connect_state("h1", None, now);
    let (a, b, c, d) = tokio::join!(take(), take(), take(), take());
    let takes = [a, b, c, d].map(Result::unwrap);
    let fresh = takes
        .iter()
        .filter(|t| matches!(t, Taken::Fresh(_)))
        .count();
    assert_eq!(
        fresh, 1,
        "exactly one of 4 concurrent takes wins: {takes:?}"
    );
    assert!(
        takes.contains(&Taken::Fresh(state.clone())),
        "read back intact"
    );
    assert_eq!(
        s.take_connect_state("h1", None, now).await.unwrap(),
        Taken::Used(state)
    );
}

pub async fn a_browser_bound_state_is_taken_only_with_its_proof(s: &dyn Store) {
    let now = now_ms();
    let state = ConnectState {
        hash: "hb".into(),
        integration: "google".into(),
        connection_id: "c1".into(),
        key_id: "k1".into(),
        verifier: None,
        browser: Some("cookie-hash-a".into()),
        detail: serde_json::json!({}),
        created_at: now,
        expires_at: now + 600_000,
    };
    s.put_connect_state(&state, now).await.unwrap();
    for foreign in [None, Some("cookie-hash-b"), Some("")] {
        assert_eq!(
            s.take_connect_state("hb", foreign, now).await.unwrap(),
            Taken::Foreign(state.clone()),
            "{foreign:?}"
        );
    }
    // Refusals did not use it up: its own browser takes it, once.
    let take = || s.take_connect_state("hb", Some("cookie-hash-a"), now);
    assert_eq!(take().await.unwrap(), Taken::Fresh(state.clone()));
    assert_eq!(take().await.unwrap(), Taken::Used(state.clone()));
    assert_eq!(
        s.take_connect_state("hb", None, now).await.unwrap(),
        Taken::Used(state),
        "once used, it says so to anyone"
    );
}

pub async fn a_connect_link_is_used_once(s: &dyn Store) {
    let now = now_ms();
    assert!(s.use_connect_link("l1", now + 1000, now).await.unwrap());
    assert!(!s.use_connect_link("l1", now + 1000, now).await.unwrap());
    assert!(s.use_connect_link("l2", now + 1000, now).await.unwrap());
}

pub async fn leases_are_capped_per_integration(s: &dyn Store) {
    for id in ["a", "b", "c"] {
        s.put(row(id), None).await.unwrap();
    }
    let now = now_ms();
    assert!(s
        .acquire_lease("a", "p1", now, now + 1000, 2)
        .await
        .unwrap());
    assert!(s
        .acquire_lease("b", "p2", now, now + 1000, 2)
        .await
        .unwrap());
    assert!(
        !s.acquire_lease("c", "p3", now, now + 1000, 2)
            .await
            .unwrap(),
        "a third concurrent lease exceeds the cap"
    );
    assert!(
        s.acquire_lease("a", "p1", now, now + 2000, 2)
            .await
            .unwrap(),
        "the holder may extend at the cap"
    );
    s.release_lease("b", "p2").await.unwrap();
    assert!(s
        .acquire_lease("c", "p3", now, now + 1000, 2)
        .await
        .unwrap());
    assert!(
        s.acquire_lease("b", "p4", now + 5000, now + 6000, 2)
            .await
            .unwrap(),
        "expired leases do not count"
    );
}

/// The cap is kept in slots (migration 0008): renewing a lease keeps its slot, and a lease
/// ended by a refresh's write (not by `release_lease`) or by a deleted row frees its slot too.
pub async fn a_lease_frees_its_slot_however_it_ends(s: &dyn Store) {
    for id in ["a", "b", "c"] {
        s.put(row(id), None).await.unwrap();
    }
    let now = now_ms();
    let lease =
        |id: &'static str, owner: &'static str| s.acquire_lease(id, owner, now, now + 9000, 1);
    assert!(lease("a", "p1").await.unwrap());
    for _ in 0..3 {
        assert!(lease("a", "p1").await.unwrap(), "renewed in its own slot");
    }
    assert!(!lease("b", "p2").await.unwrap(), "the only slot is a's");
    let mut written = s.get("a").await.unwrap().unwrap();
    let version = written.version;
    written.version += 1;
    written.lease_owner = None;
    written.lease_until = None;
    assert!(s.cas(&written, version, None).await.unwrap());
    assert!(
        lease("b", "p2").await.unwrap(),
        "a refresh's write ended a's lease and freed the slot"
    );
    assert!(s.delete("b").await.unwrap());
    assert!(
        lease("c", "p3").await.unwrap(),
        "a deleted connection's lease holds no slot"
    );
}

fn claim<'a>(ids: &'a [String], owner: &'a str, now: i64, cap: usize) -> Claim<'a> {
    Claim {
        integration: "slack",
        ids,
        owner,
        now,
        until: now + 10_000,
        horizon: now + 120_000,
        cap,
        max: 100,
    }
}

pub async fn claims_take_listed_due_rows_within_the_fleet_cap(s: &dyn Store) {
    let now = now_ms();
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut r = row(&format!("d{i}"));
        r.expires_at = Some(now + 1_000 * (6 - i));
        s.put(r, None).await.unwrap();
        ids.push(format!("d{i}"));
    }
    let mut far = row("far");
    far.expires_at = Some(now + 3_600_000);
    let mut dead = row("dead");
    dead.status = Status::NeedsReauth;
    let unlisted = row("unlisted");
    for r in [far, dead, unlisted] {
        s.put(r, None).await.unwrap();
    }
    ids.extend(["far".to_string(), "dead".to_string()]);
    assert!(s
        .acquire_lease("d5", "other", now, now + 10_000, 10)
        .await
        .unwrap());

    let got = s.claim(&claim(&ids, "me", now, 4)).await.unwrap();
    assert_eq!(
        got.iter().collect::<std::collections::BTreeSet<_>>(),
        ["d2", "d3", "d4"].map(String::from).iter().collect(),
        "soonest first, the cap counting the lease held elsewhere"
    );
    for id in &got {
        let held = s.get(id).await.unwrap().unwrap();
        assert_eq!(held.lease_owner.as_deref(), Some("me"));
    }
    assert!(
        s.claim(&claim(&ids, "you", now, 4))
            .await
            .unwrap()
            .is_empty(),
        "the fleet is at its cap"
    );
    s.release_lease("d2", "me").await.unwrap();
    let next = s.claim(&claim(&ids, "you", now, 4)).await.unwrap();
    assert_eq!(
        next,
        vec!["d2".to_string()],
        "a released row still due is the soonest again"
    );
    let later = now + 20_000;
    let rest = s.claim(&claim(&ids, "you", later, 10)).await.unwrap();
    assert!(
        rest.iter().all(|id| id.starts_with('d') && id != "dead"),
        "never a row beyond the horizon, paused, or not listed: {rest:?}"
    );
    assert_eq!(rest.len(), 6, "expired leases are free again: {rest:?}");
}

pub async fn concurrent_claims_never_share_a_row_or_exceed_the_cap(s: &dyn Store) {
    let now = now_ms();
    let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    s.put_many(ids.iter().map(|id| (row(id), None)).collect())
        .await
        .unwrap();
    let owners = ["r1", "r2", "r3"];
    let claims = owners.map(|o| claim(&ids, o, now, 16));
    let (a, b, c) = tokio::join!(
        s.claim(&claims[0]),
        s.claim(&claims[1]),
        s.claim(&claims[2])
    );
    let all: Vec<String> = [a.unwrap(), b.unwrap(), c.unwrap()].concat();
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a row claimed twice: {all:?}");
    assert_eq!(all.len(), 16, "the three claims fill the cap exactly");
}

pub async fn a_cooldown_keeps_its_later_end_and_ended_ones_are_not_listed(s: &dyn Store) {
    let now = now_ms();
    let cooldown = |connection: Option<&str>, until| Cooldown {
        integration: "slack".into(),
        connection: connection.map(str::to_string),
        until,
    };
    s.put_cooldown(&cooldown(Some("a"), now + 5_000))
        .await
        .unwrap();
    s.put_cooldown(&cooldown(Some("a"), now + 2_000))
        .await
        .unwrap();
    s.put_cooldown(&cooldown(None, now + 1_000)).await.unwrap();
    s.put_cooldown(&cooldown(Some("b"), now - 1)).await.unwrap();
    let mut running = s.cooldowns(now).await.unwrap();
    running.sort_by_key(|c| c.until);
    assert_eq!(
        running,
        [
            cooldown(None, now + 1_000),
            cooldown(Some("a"), now + 5_000)
        ]
    );
    assert_eq!(s.cooldowns(now + 1_000).await.unwrap().len(), 1);
}
