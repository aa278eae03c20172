//! Every word the public pages show, one table per language (`en.rs`, `fr.rs`): a translation
//! is one new file plus one line in [`SHIPPED`]. Placeholders (`{app}`, `{provider}`,
//! `{account}`, `{time}`) are filled with plain text before the page escapes the whole string,
//! so no text here may contain markup.
//!
//! Owns the words and picking a language from `Accept-Language`; layout is [`super::page`]'s.

mod en;
mod fr;

/// A title and the sentence under it.
#[derive(Debug)]
pub struct Message {
    pub title: &'static str,
    pub body: &'static str,
}

/// One language's words.
#[derive(Debug)]
pub struct Texts {
    /// The BCP 47 tag for `<html lang>` and `Content-Language`.
    pub lang: &'static str,
    /// `{app}` when `connect.branding.app_name` is not set; it must read well mid-sentence.
    pub app_fallback: &'static str,
    pub continue_title: &'static str,
    pub continue_lead: &'static str,
    pub continue_account: &'static str,
    pub continue_permissions: &'static str,
    pub continue_next: &'static str,
    pub continue_button: &'static str,
    pub continue_expires: &'static str,
    pub connected: Message,
    pub link_invalid: Message,
    pub link_expired: Message,
    pub link_used: Message,
    pub signin_unknown: Message,
    pub signin_used: Message,
    pub signin_expired: Message,
    pub other_browser: Message,
    pub declined: Message,
    pub failed: Message,
    pub unavailable: Message,
    pub not_found: Message,
    /// Before the support contact's link.
    pub help: &'static str,
}

/// The shipped languages; the first is the default.
pub const SHIPPED: &[&Texts] = &[&en::EN, &fr::FR];

impl Texts {
    /// The words for an error `code` of [`super::ConnectError`] (or `connected`).
    pub fn message(&self, code: &str) -> &Message {
        match code {
            "connected" => &self.connected,
            "invalid_link" => &self.link_invalid,
            "link_expired" => &self.link_expired,
            "link_used" => &self.link_used,
            "missing_state" | "invalid_state" => &self.signin_unknown,
            "state_used" => &self.signin_used,
            "state_expired" => &self.signin_expired,
            "browser_mismatch" => &self.other_browser,
            "access_denied" => &self.declined,
            "store_unavailable" => &self.unavailable,
            "not_found" => &self.not_found,
            _ => &self.failed,
        }
    }
}

/// The shipped language the browser prefers most (`Accept-Language`, RFC 9110 §12.5.4):
/// highest `q` first, then header order; `fr-CA` matches `fr`; `q=0` means "not this one".
pub fn pick(accept_language: Option<&str>) -> &'static Texts {
    let mut ranges: Vec<(f32, usize, &str)> = accept_language
        .unwrap_or("")
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let tag = parts.next()?.trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
            (!tag.is_empty() && q > 0.0).then_some((q, i, tag))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges
        .iter()
        .find_map(|(_, _, tag)| {
            let primary = tag.split('-').next().unwrap_or("");
            SHIPPED
                .iter()
                .find(|t| t.lang.eq_ignore_ascii_case(primary))
                .copied()
        })
        .unwrap_or(SHIPPED[0])
}

/// `template` with each `{name}` replaced by its value (plain text, escaped later), in one
/// pass: a value that itself contains `{provider}` stays as written.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after
            .find('}')
            .and_then(|close| Some((values.iter().find(|(n, _)| *n == &after[..close])?.1, close)));
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_most_preferred_shipped_language() {
        for (header, want) in [
            (None, "en"),
            (Some(""), "en"),
            (Some("fr-CA,fr;q=0.9,en;q=0.8"), "fr"),
            (Some("de-DE,de;q=0.9,fr;q=0.5,en;q=0.4"), "fr"),
            (Some("en;q=0.5, FR;q=0.7"), "fr"),
            (Some("fr;q=0, en"), "en"),
            (Some("*"), "en"),
            (Some("ja, garbage;q=x, fr;q=0.1"), "fr"),
        ] {
            assert_eq!(pick(header).lang, want, "{header:?}");
        }
    }

    #[test]
    fn placeholders_are_filled_once_and_unknown_braces_stay() {
        let values = [("app", "Acme {provider}"), ("provider", "Slack")];
        assert_eq!(
            fill("{app} and {provider}, {other} {", &values),
            "Acme {provider} and Slack, {other} {"
        );
    }

    #[test]
    fn every_language_fills_the_same_placeholders_and_has_no_markup() {
        let fields = |t: &Texts| -> Vec<&'static str> {
            let mut v = vec![
                t.app_fallback,
                t.continue_title,
                t.continue_lead,
                t.continue_account,
                t.continue_permissions,
                t.continue_next,
                t.continue_button,
                t.continue_expires,
                t.help,
            ];
            for m in [
                &t.connected,
                &t.link_invalid,
                &t.link_expired,
                &t.link_used,
                &t.signin_unknown,
                &t.signin_used,
                &t.signin_expired,
                &t.other_browser,
                &t.declined,
                &t.failed,
                &t.unavailable,
                &t.not_found,
            ] {
                v.extend([m.title, m.body]);
            }
            v
        };
        let holes = |s: &str| -> Vec<String> {
            s.split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}'))
                .map(|(n, _)| n.to_string())
                .collect()
        };
        let english = fields(SHIPPED[0]);
        for t in SHIPPED {
            for (theirs, ours) in fields(t).iter().zip(&english) {
                assert!(!theirs.contains('<'), "{}: {theirs}", t.lang);
                let (mut a, mut b) = (holes(theirs), holes(ours));
                a.sort();
                b.sort();
                assert_eq!(a, b, "{}: `{theirs}` vs `{ours}`", t.lang);
            }
        }
    }
}
