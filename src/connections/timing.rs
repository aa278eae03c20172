//! When a token counts as expired, and when the proactive loop renews it, scaled to the
//! token's own lifetime: the configured margin and window are for hour-long tokens, and a
//! provider that issues 5-minute (or 3-second) tokens must not get a refresh on every request.
//!
//! Pure arithmetic on unix milliseconds; it must not read clocks or the store.

/// At most this fraction of a lifetime is spent inside the request-path margin.
const MARGIN_SHARE: f64 = 0.2;
/// The proactive window ends at most this far into a lifetime's second half: a token is
/// renewed between 50% and 80% of its life at the earliest.
const WINDOW_SHARE: (f64, f64) = (0.2, 0.5);

/// How long a token issued at `issued_at` and expiring at `expires_at` lives (none: unknown).
fn lifetime(issued_at: i64, expires_at: Option<i64>) -> Option<i64> {
    expires_at.map(|e| (e - issued_at).max(0))
}

fn share(ms: i64, fraction: f64) -> i64 {
    (ms as f64 * fraction) as i64
}

/// The request-path margin: `configured`, but at most a fifth of the token's lifetime.
pub fn margin(configured: i64, issued_at: i64, expires_at: Option<i64>) -> i64 {
    match lifetime(issued_at, expires_at) {
        Some(life) => configured.min(share(life, MARGIN_SHARE)),
        None => configured,
    }
}

/// The proactive window `(min, max)` before expiry: the configured one, but at most 20–50% of
/// the token's lifetime, so no token is renewed more often than about once per half lifetime.
pub fn window(configured: (i64, i64), issued_at: i64, expires_at: Option<i64>) -> (i64, i64) {
    match lifetime(issued_at, expires_at) {
        Some(life) => (
            configured.0.min(share(life, WINDOW_SHARE.0)),
            configured.1.min(share(life, WINDOW_SHARE.1)),
        ),
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_long_tokens_keep_the_configured_times() {
        let hour = 3_600_000;
        assert_eq!(margin(10_000, 0, Some(hour)), 10_000);
        assert_eq!(window((60_000, 180_000), 0, Some(hour)), (60_000, 180_000));
        assert_eq!(margin(10_000, 0, None), 10_000);
    }

    #[test]
    fn short_tokens_are_renewed_at_most_once_per_half_lifetime() {
        // A 3-second token: expired 600 ms early at most; renewed 1.5–2.4 s after issue.
        assert_eq!(margin(10_000, 1_000, Some(4_000)), 600);
        assert_eq!(window((60_000, 180_000), 1_000, Some(4_000)), (600, 1_500));
        // Already expired, or issued in the future: nothing negative.
        assert_eq!(margin(10_000, 5_000, Some(4_000)), 0);
    }
}
