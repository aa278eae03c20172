//! Importing connections through the admin API: `PUT /v1/connections/{id}` and
//! `POST /v1/connections/batch` (a JSON array or NDJSON of `{"id", "integration",
//! "credentials", "metadata"}`), both checked the same way, item by item.
//!
//! Owns the checks an item must pass before it is sealed (integration, credential kind,
//! metadata) and how errors are answered; writing is `connections::import`'s.

use http::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{
    fail, grant_error, ok, parse_put, put_from, read_body, to_json, Admin, Body, Incoming,
};
use crate::connections::credential::{self, Held};
use crate::connections::import::CHUNK;
use crate::connections::PutConnection;

/// A batch's body limit: 100k connections of a few hundred bytes each, with room.
const BATCH_LIMIT: usize = 256 << 20;

impl Admin {
    pub(super) async fn put(&self, id: &str, req: Request<Incoming>) -> Response<Body> {
        let body = match read_body(req.into_body(), 64 * 1024).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let checked = parse_put(&body)
            .map_err(|m| ("invalid_body", m))
            .and_then(|put| self.admit(put));
        let (put, held) = match checked {
            Ok(c) => c,
            Err((code, message)) => return fail(StatusCode::BAD_REQUEST, code, &message),
        };
        match self.connections.put(id, put, held).await {
            Ok(view) => ok(StatusCode::OK, &to_json(&view)),
            Err(e) => grant_error(e),
        }
    }

    /// A batch import: `200 {"imported", "failed": [{"index", "id", "error", "message"}]}`.
    pub(super) async fn batch(&self, req: Request<Incoming>) -> Response<Body> {
        let response = self.import(req).await;
        // The body and every sealed chunk are freed by now: up to the body limit at once.
        crate::memory::release_free_heap();
        response
    }

    async fn import(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match read_body(req.into_body(), BATCH_LIMIT).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let items = match split_items(&body) {
            Ok(items) => items,
            Err(message) => return fail(StatusCode::BAD_REQUEST, "invalid_body", &message),
        };
        let mut failed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut imported = 0;
        // One chunk at a time, checked then written: a large migration never holds every sealed
        // row in memory at once.
        let mut items = items.into_iter().enumerate().peekable();
        while items.peek().is_some() {
            let mut admitted = Vec::new();
            for (index, raw) in items.by_ref().take(CHUNK) {
                let item: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match self.admit_item(item, &mut seen) {
                    Ok((put, held)) => admitted.push((index, id.clone(), (id, put, held))),
                    Err((code, message)) => failed
                        .push(json!({"index": index, "id": id, "error": code, "message": message})),
                }
            }
            let (labels, batch): (Vec<(usize, String)>, Vec<_>) = admitted
                .into_iter()
                .map(|(i, id, item)| ((i, id), item))
                .unzip();
            for ((index, id), result) in labels
                .into_iter()
                .zip(self.connections.put_many(batch).await)
            {
                match result {
                    Ok(()) => imported += 1,
                    Err(e) => failed.push(json!({"index": index, "id": id, "error": "not_stored", "message": e.to_string()})),
                }
            }
        }
        failed.sort_by_key(|f| f["index"].as_u64());
        ok(
            StatusCode::OK,
            &json!({"imported": imported, "failed": failed}),
        )
    }

    /// One batch item: an `id` (once per batch) and what a `PUT` takes.
    fn admit_item(
        &self,
        mut item: Value,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(PutConnection, Option<Held>), (&'static str, String)> {
        let id = match item.as_object_mut().and_then(|o| o.remove("id")) {
            Some(Value::String(id)) => id,
            _ => return Err(("invalid_body", "each item needs an `id` string".into())),
        };
        if !seen.insert(id.clone()) {
            return Err((
                "duplicate_id",
                format!("`{id}` appears earlier in this batch"),
            ));
        }
        let put = put_from(item).map_err(|m| ("invalid_body", m))?;
        self.admit(put)
    }

    /// What every import passes: a known integration, credentials of a kind it accepts (the
    /// secret checked and returned), and metadata its URLs can take.
    fn admit(
        &self,
        mut put: PutConnection,
    ) -> Result<(PutConnection, Option<Held>), (&'static str, String)> {
        let Some(known) = self.integrations.get(&put.integration) else {
            let known: Vec<&str> = self.integrations.keys().map(String::as_str).collect();
            let message = format!(
                "no integration `{}`; known: {}",
                put.integration,
                known.join(", ")
            );
            return Err(("unknown_integration", message));
        };
        let held = credential::check(&put.credentials, &put.integration, &known.accepts)
            .map_err(|m| ("invalid_credentials", m))?;
        if let Some((key, value)) = credential::derived_metadata(held.as_ref(), &known.accepts) {
            put.metadata.entry(key).or_insert(value.into());
        }
        known
            .urls
            .check(&put.metadata)
            .map_err(|m| ("invalid_metadata", m))?;
        Ok((put, held))
    }
}

/// A JSON array of items, or one JSON object per line (NDJSON), as each item's text: the whole
/// body is checked to be JSON before anything is written, but an item becomes a JSON value only
/// when its chunk is imported (50k parsed values held at once cost ~100 MB of RSS). A line that
/// is not JSON is an error for the whole batch, naming the line (never its text: it may hold a
/// secret).
fn split_items(body: &[u8]) -> Result<Vec<&str>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
            .map_err(|e| format!("not a JSON array of items (line {})", e.line()))?;
        return Ok(items.into_iter().map(|raw| raw.get()).collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str::<serde::de::IgnoredAny>(l)
                .map(|_| l)
                .map_err(|_| format!("line {} is not a JSON object", n + 1))
        })
        .collect()
}
