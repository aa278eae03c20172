//! Where the browser goes back to after the provider: the `connect.return_to` allow-list, and
//! the result parameters grantd puts on that URL.
//!
//! Owns URL checks and the query rewrite only; what the outcome was is [`super::Connect`]'s.

/// Every parameter grantd may put on `return_to`. An app's URL that already carries any of
/// them (e.g. a `return_to` copied from an earlier result) loses them first, so the app reads
/// exactly one of each, and only grantd's.
const RESULT_PARAMS: &[&str] = &[
    "status",
    "error",
    "error_description",
    "connection_id",
    "integration",
];

/// `url` (a validated `return_to`) with grantd's result `params` in its query: the app's own
/// parameters are kept as they were written (order and encoding), any of grantd's names are
/// replaced rather than repeated, and the fragment stays the fragment.
pub(super) fn with_result(url: &str, params: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(url).expect("return_to was validated");
    let kept = u
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|part| !part.is_empty() && !is_result_param(part))
        .collect::<Vec<_>>()
        .join("&");
    u.set_query((!kept.is_empty()).then_some(kept.as_str()));
    u.query_pairs_mut().extend_pairs(params);
    u.to_string()
}

/// Whether one `name=value` part of a query names a result parameter (compared decoded, so
/// `st%61tus=x` counts).
fn is_result_param(part: &str) -> bool {
    let name = part.split('=').next().unwrap_or("");
    form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(name, _)| RESULT_PARAMS.contains(&name.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_parameters_replace_the_apps_own_instead_of_repeating_them() {
        let connected = [
            ("status", "connected"),
            ("connection_id", "c 1"),
            ("integration", "slack"),
        ];
        for (return_to, want) in [
            (
                "https://app.example/s",
                "https://app.example/s?status=connected&connection_id=c+1&integration=slack",
            ),
            (
                "https://app.example/s?",
                "https://app.example/s?status=connected&connection_id=c+1&integration=slack",
            ),
            (
                "https://app.example/s?status=x",
                "https://app.example/s?status=connected&connection_id=c+1&integration=slack",
            ),
            // Repeated, encoded, valueless and stale-error forms all go; the app's own
            // parameters stay byte for byte, in order; the fragment stays last.
            (
                "https://app.example/s?tab=a+b&status=x&st%61tus=y&status&n=%2F&&error=old&connection_id=z#frag?status=f",
                "https://app.example/s?tab=a+b&n=%2F&status=connected&connection_id=c+1&integration=slack#frag?status=f",
            ),
            (
                "https://app.example/s?flag&statuses=1#",
                "https://app.example/s?flag&statuses=1&status=connected&connection_id=c+1&integration=slack#",
            ),
        ] {
            assert_eq!(with_result(return_to, &connected), want, "{return_to}");
        }
        let failed = with_result(
            "https://app.example/s?status=connected&error_description=old&keep=1",
            &[
                ("status", "error"),
                ("error", "access_denied"),
                ("error_description", "no & never"),
            ],
        );
        assert_eq!(
            failed,
            "https://app.example/s?keep=1&status=error&error=access_denied&error_description=no+%26+never"
        );
        let u = url::Url::parse(&failed).unwrap();
        assert_eq!(u.query_pairs().filter(|(k, _)| k == "status").count(), 1);
    }
}
