//! When to try again: every 429 that leaves grantd carries a `Retry-After` in whole seconds,
//! computed from whatever the provider said.
//!
//! Providers say it many ways: `Retry-After` as seconds (Shopify's are fractional, `2.0`) or
//! as an HTTP-date (RFC 9110 §10.2.3); `RateLimit-Reset` (IETF draft: seconds from now);
//! `X-RateLimit-Reset` and `X-Rate-Limit-Reset` as a Unix time (GitHub, Twitter/X) or as seconds
//! from now (others); nothing at all. This module reads headers and the clock only; it must not
//! decide which responses are 429s (`proxy` does).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};

/// What a provider that says nothing gets: a minute, long enough for per-minute windows.
pub const DEFAULT: u64 = 60;

/// Reset values above this are Unix times, below it durations (no window lasts 30 years).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// The seconds to wait, from the first header that says so, else [`DEFAULT`]. Never 0: an
/// instant retry of a rate-limited call only spends more of the limit.
pub fn seconds(headers: &HeaderMap, now: SystemTime) -> u64 {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let from_retry_after = text("retry-after").and_then(|v| {
        delta(v).or_else(|| {
            let at = httpdate::parse_http_date(v).ok()?;
            Some(at.duration_since(now).unwrap_or_default().as_secs_f64())
        })
    });
    let from_reset = || {
        ["ratelimit-reset", "x-ratelimit-reset", "x-rate-limit-reset"]
            .into_iter()
            .find_map(|name| reset(text(name)?, now))
    };
    let secs = from_retry_after
        .or_else(from_reset)
        .unwrap_or(DEFAULT as f64);
    (secs.ceil() as u64).clamp(1, 86_400)
}

/// Adds `Retry-After` to a 429 that has none, and makes a fractional one whole.
pub fn ensure(headers: &mut HeaderMap, now: SystemTime) {
    let whole = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().parse::<u64>().is_ok());
    if !whole {
        let secs = seconds(headers, now);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

fn delta(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)
}

fn reset(v: &str, now: SystemTime) -> Option<f64> {
    let n = delta(v)?;
    if n < EPOCH_THRESHOLD as f64 {
        return Some(n);
    }
    let at = UNIX_EPOCH.checked_add(Duration::from_secs_f64(n.min(4e10)))?;
    Some(at.duration_since(now).unwrap_or_default().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn every_spelling_of_try_again_becomes_whole_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let in_30 = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let cases = [
            (vec![("retry-after", "7".to_string())], 7),
            (vec![("retry-after", "2.0".to_string())], 2),
            (vec![("retry-after", "2.5".to_string())], 3),
            (vec![("retry-after", in_30)], 30),
            (vec![("ratelimit-reset", "12".to_string())], 12),
            (vec![("x-ratelimit-reset", "1750000040".to_string())], 40),
            (vec![("x-ratelimit-reset", "15".to_string())], 15),
            (vec![("x-rate-limit-reset", "1750000005".to_string())], 5),
            (vec![("x-ratelimit-reset", "1749999000".to_string())], 1),
            (vec![("retry-after", "soon".to_string())], DEFAULT),
            (vec![], DEFAULT),
        ];
        for (pairs, want) in cases {
            assert_eq!(seconds(&headers(&pairs), now), want, "{pairs:?}");
        }
    }

    #[test]
    fn ensure_adds_or_rounds_but_keeps_a_whole_value() {
        let now = SystemTime::now();
        let mut h = headers(&[("retry-after", "2.2".to_string())]);
        ensure(&mut h, now);
        assert_eq!(h[RETRY_AFTER], "3");
        let mut h = headers(&[("retry-after", "9".to_string())]);
        ensure(&mut h, now);
        assert_eq!(h[RETRY_AFTER], "9");
        let mut h = HeaderMap::new();
        ensure(&mut h, now);
        assert_eq!(h[RETRY_AFTER], "60");
    }
}
