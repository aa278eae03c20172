//! Batch import (`POST /v1/connections/batch`): per-item errors, nothing half-written, the
//! same checks as `PUT`, JSON array or NDJSON.

mod common;

use common::*;

const LAB: &str = "integration: lab\nbase_url: http://127.0.0.1:1\ncredentials:\n  api_key: {}\nauth:\n  token_url: http://127.0.0.1:1/token\nrules: []\n";

async fn batch(g: &Grantd, body: String) -> Got {
    let req = http::Request::post(format!("http://{}/v1/connections/batch", g.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    send(req).await
}

#[tokio::test]
async fn a_batch_stores_the_good_items_and_names_each_bad_one() {
    let g = grantd("").rule_file("lab.yaml", LAB).start();
    let items = serde_json::json!([
        {"id": "a1", "integration": "lab", "credentials": {"access_token": "at-1", "refresh_token": "rt-1"}},
        {"id": "a2", "integration": "nope", "credentials": {"access_token": "at-2"}},
        {"id": "a3", "integration": "lab", "credentials": {"kind": "api_key", "api_key": "k-3"}},
        {"id": "a4", "integration": "lab", "credentials": {"kind": "api_key", "api_key": "sekrit\r\nX: 1"}},
        {"id": "a1", "integration": "lab", "credentials": {"access_token": "at-again"}},
        {"integration": "lab", "credentials": {"access_token": "no id"}},
        {"id": "bad id!", "integration": "lab", "credentials": {"access_token": "at-7"}},
    ]);
    let got = batch(&g, items.to_string()).await;
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
    let body = got.json();
    assert_eq!(body["imported"], 2);
    let failed: Vec<(u64, String)> = body["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["index"].as_u64().unwrap(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (1, "unknown_integration".into()),
            (3, "invalid_credentials".into()),
            (4, "duplicate_id".into()),
            (5, "invalid_body".into()),
            (6, "not_stored".into()),
        ]
    );
    assert!(!String::from_utf8_lossy(&got.body).contains("sekrit"));
    for (id, status) in [("a1", 200), ("a3", 200), ("a2", 404), ("a4", 404)] {
        let view = admin(g.admin, "GET", &format!("/v1/connections/{id}"), None).await;
        assert_eq!(view.status, status, "{id}");
    }
    let a3 = admin(g.admin, "GET", "/v1/connections/a3", None)
        .await
        .json();
    assert_eq!(a3["kind"], "api_key");
}

#[tokio::test]
async fn ndjson_batches_span_several_transactions() {
    let g = grantd("").rule_file("lab.yaml", LAB).start();
    // More than one chunk (1,000 rows per transaction), as NDJSON with a blank line.
    let mut body = String::new();
    for i in 0..2_500 {
        body.push_str(&format!(
            "{{\"id\":\"n{i}\",\"integration\":\"lab\",\"credentials\":{{\"kind\":\"api_key\",\"api_key\":\"key-{i}\"}}}}\n"
        ));
        if i == 10 {
            body.push('\n');
        }
    }
    let got = batch(&g, body).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["imported"], 2_500);
    assert_eq!(got.json()["failed"], serde_json::json!([]));
    let page = admin(
        g.admin,
        "GET",
        "/v1/connections?integration=lab&limit=1000",
        None,
    )
    .await;
    assert_eq!(
        page.json()["connections"].as_array().map(Vec::len),
        Some(1000)
    );
    assert_eq!(
        admin(g.admin, "GET", "/v1/connections/n2499", None)
            .await
            .status,
        200
    );

    // A malformed line far down rejects the whole batch before any chunk is written, though
    // items are parsed one chunk at a time.
    let mut broken = String::new();
    for i in 0..1_500 {
        broken.push_str(&format!(
            "{{\"id\":\"late{i}\",\"integration\":\"lab\",\"credentials\":{{\"kind\":\"api_key\",\"api_key\":\"k\"}}}}\n"
        ));
    }
    broken.push_str("not json sekrit\n");
    let broken = batch(&g, broken).await;
    assert_eq!(broken.status, 400);
    let text = String::from_utf8_lossy(&broken.body).to_string();
    assert!(
        text.contains("line 1501") && !text.contains("sekrit"),
        "{text}"
    );
    let first = admin(g.admin, "GET", "/v1/connections/late0", None).await;
    assert_eq!(first.status, 404, "nothing of a rejected batch is written");
}
