//! The public pages' HTML: one layout (semantic, responsive down to 320 px, visible focus, AA
//! contrast whatever the accent colour, no JavaScript), the branding, and the security headers
//! every public response carries. The CSP allows exactly this page's stylesheet (by hash), the
//! logo's origin for images and nothing else.
//!
//! Owns markup and escaping; the words are [`super::text`]'s, the HTTP routes
//! [`super::public`]'s.

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::text::{fill, Texts};
use crate::config::BrandingConfig;

pub(super) type Body = Full<Bytes>;

/// Text colour, muted text, links and the default accent: each at least 4.5:1 on white.
const INK: &str = "#1f2328";
const DEFAULT_ACCENT: [u8; 3] = [0x0b, 0x57, 0xd0];

/// The branding as pages use it, worked out once.
pub(super) struct Brand {
    app_name: Option<String>,
    logo_url: Option<String>,
    support: Option<(String, String)>,
    style: String,
    csp: HeaderValue,
}

impl Brand {
    pub(super) fn new(config: &BrandingConfig) -> Brand {
        let style = stylesheet(config.accent_rgb().unwrap_or(DEFAULT_ACCENT));
        let hash = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
        let img = config
            .logo_origin()
            .map_or(String::new(), |o| format!(" img-src {o};"));
        let csp = format!(
            "default-src 'none'; style-src 'sha256-{}';{img} form-action 'self' http: https:; base-uri 'none'; frame-ancestors 'none'",
            base64::engine::general_purpose::STANDARD.encode(hash)
        );
        Brand {
            app_name: config.app_name.clone(),
            logo_url: config.logo_url.clone(),
            support: config.support_href().zip(config.support.clone()),
            style,
            csp: HeaderValue::from_str(&csp).expect("checked URLs and base64 are header-safe"),
        }
    }

    /// What `{app}` becomes in `texts`' language.
    pub(super) fn app<'a>(&'a self, texts: &'a Texts) -> &'a str {
        self.app_name.as_deref().unwrap_or(texts.app_fallback)
    }

    /// A page: `title` (plain text) as the heading, then `main` (HTML, already escaped).
    pub(super) fn page(
        &self,
        texts: &Texts,
        status: StatusCode,
        title: &str,
        main: &str,
    ) -> Response<Body> {
        self.page_marked(texts, status, "", title, main)
    }

    /// [`Brand::page`] with `mark` (HTML) above the heading.
    fn page_marked(
        &self,
        texts: &Texts,
        status: StatusCode,
        mark: &str,
        title: &str,
        main: &str,
    ) -> Response<Body> {
        let header = self.header();
        let help = self
            .support
            .as_ref()
            .map_or(String::new(), |(href, label)| {
                format!(
                    "<p class=\"muted\">{} <a href=\"{}\">{}</a></p>",
                    escape(texts.help),
                    escape(href),
                    escape(label)
                )
            });
        let head_title = match &self.app_name {
            Some(app) => format!("{} · {}", escape(title), escape(app)),
            None => escape(title),
        };
        let body = format!(
            "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"referrer\" content=\"no-referrer\"><title>{head_title}</title>\
             <style>{style}</style></head>\n<body><main>{header}{mark}<h1>{h1}</h1>{main}{help}</main></body></html>\n",
            lang = texts.lang,
            style = self.style,
            h1 = escape(title),
        );
        self.secure(
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::CONTENT_LANGUAGE, texts.lang)
                .header(header::VARY, "accept-language")
                .body(Full::new(Bytes::from(body)))
                .expect("static response"),
        )
    }

    /// A page that only says what happened: `code` picks the words, `provider` fills them.
    pub(super) fn message(
        &self,
        texts: &Texts,
        status: StatusCode,
        code: &str,
        provider: Option<&str>,
    ) -> Response<Body> {
        let m = texts.message(code);
        let values = [
            ("app", self.app(texts)),
            ("provider", provider.unwrap_or("")),
        ];
        let (mark, class) = if status.is_success() {
            ("✓", "mark ok")
        } else {
            ("!", "mark")
        };
        let mark = format!("<p class=\"{class}\" aria-hidden=\"true\">{mark}</p>");
        let main = format!("<p>{}</p>", escape(&fill(m.body, &values)));
        self.page_marked(texts, status, &mark, &fill(m.title, &values), &main)
    }

    fn header(&self) -> String {
        if self.app_name.is_none() && self.logo_url.is_none() {
            return String::new();
        }
        // The name is written beside the logo, so the image itself says nothing more.
        let logo = self.logo_url.as_ref().map_or(String::new(), |u| {
            format!("<img src=\"{}\" alt=\"\" height=\"40\">", escape(u))
        });
        let name = self.app_name.as_ref().map_or(String::new(), |n| {
            format!("<span class=\"app\">{}</span>", escape(n))
        });
        format!("<header>{logo}{name}</header>")
    }

    /// The security headers of every public response: never cached, no referrer (the callback
    /// URL holds a code), never framed, this CSP.
    pub(super) fn secure(&self, mut resp: Response<Body>) -> Response<Body> {
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        resp
    }
}

/// The one stylesheet. The button's text is black or white, whichever contrasts more with the
/// accent (at least 4.58:1 for any colour), so a brand colour can never break WCAG AA.
fn stylesheet(accent: [u8; 3]) -> String {
    let [r, g, b] = accent;
    let on_accent = if contrast(accent, [255; 3]) >= contrast(accent, [0; 3]) {
        "#fff"
    } else {
        "#000"
    };
    format!(
        "*{{box-sizing:border-box}}\
         html{{font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;font-size:100%;line-height:1.5;color:{INK};background:#f3f4f6}}\
         body{{margin:0;padding:1rem}}\
         main{{max-width:34rem;margin:2rem auto;padding:1.5rem;background:#fff;border:1px solid #d0d7de;border-radius:12px;overflow-wrap:anywhere}}\
         header{{display:flex;align-items:center;gap:.75rem;margin:0 0 1.25rem}}\
         header img{{max-width:10rem;height:40px;object-fit:contain}}\
         .app{{font-weight:600;font-size:1.125rem}}\
         h1{{font-size:1.5rem;line-height:1.25;margin:0 0 1rem}}\
         p,ul{{margin:0 0 1rem}}\
         ul{{padding-left:1.25rem}}\
         .muted{{color:#57606a;font-size:.9375rem}}\
         .mark{{display:inline-block;width:2.5rem;height:2.5rem;line-height:2.5rem;text-align:center;border-radius:50%;font-weight:700;background:#fff4d6;color:#6b4b00}}\
         .mark.ok{{background:#dafbe1;color:#1a7f37}}\
         a{{color:#0b57d0}}\
         button{{font:inherit;font-weight:600;width:100%;min-height:2.75rem;padding:.75rem 1rem;margin:0 0 1rem;border:0;border-radius:8px;cursor:pointer;background:#{r:02x}{g:02x}{b:02x};color:{on_accent}}}\
         :focus-visible{{outline:3px solid {INK};outline-offset:3px}}\
         @media (max-width:30rem){{body{{padding:0}}main{{margin:0;min-height:100vh;border:0;border-radius:0;padding:1.25rem}}}}"
    )
}

/// WCAG 2.x contrast ratio of two sRGB colours.
fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    let lum = |c: [u8; 3]| {
        let ch = |v: u8| {
            let s = f64::from(v) / 255.0;
            if s <= 0.04045 {
                s / 12.92
            } else {
                ((s + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * ch(c[0]) + 0.7152 * ch(c[1]) + 0.0722 * ch(c[2])
    };
    let (x, y) = (lum(a), lum(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }

    #[test]
    fn any_accent_colour_gets_button_text_with_aa_contrast() {
        for accent in [
            [255, 255, 0],
            [0, 0, 0],
            [118, 118, 118],
            [0x0b, 0x57, 0xd0],
            [255; 3],
        ] {
            let css = stylesheet(accent);
            let text = if css.contains(";color:#fff}") {
                [255; 3]
            } else {
                [0; 3]
            };
            assert!(contrast(accent, text) >= 4.5, "{accent:?}");
        }
        assert!((contrast([0; 3], [255; 3]) - 21.0).abs() < 1e-9);
        for (fg, name) in [
            ([0x1f, 0x23, 0x28], "ink"),
            ([0x57, 0x60, 0x6a], "muted"),
            ([0x0b, 0x57, 0xd0], "link"),
            ([0x1a, 0x7f, 0x37], "ok"),
            ([0x6b, 0x4b, 0], "warn"),
        ] {
            assert!(contrast(fg, [255; 3]) >= 4.5, "{name}");
        }
    }

    #[tokio::test]
    async fn branding_is_escaped_and_the_csp_allows_only_the_stylesheet_and_the_logo_origin() {
        let brand = Brand::new(&BrandingConfig {
            app_name: Some("<b>Acme</b> & Co".into()),
            logo_url: Some("https://cdn.acme.example/l.png?a=1&b=\"2\"".into()),
            accent_color: Some("#ff0".into()),
            support: Some("help@acme.example".into()),
        });
        let texts = super::super::text::pick(None);
        let resp = brand.message(texts, StatusCode::GONE, "link_used", None);
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            brand.style.as_bytes(),
        ));
        assert_eq!(csp, format!("default-src 'none'; style-src 'sha256-{hash}'; img-src https://cdn.acme.example; form-action 'self' http: https:; base-uri 'none'; frame-ancestors 'none'"));
        use http_body_util::BodyExt as _;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            body.contains("<span class=\"app\">&lt;b&gt;Acme&lt;/b&gt; &amp; Co</span>"),
            "{body}"
        );
        assert!(
            body.contains("ask &lt;b&gt;Acme&lt;/b&gt; &amp; Co for a new link."),
            "{body}"
        );
        assert!(body.contains("src=\"https://cdn.acme.example/l.png?a=1&amp;b=&quot;2&quot;\""));
        assert!(body.contains("<a href=\"mailto:help@acme.example\">help@acme.example</a>"));
        assert!(!body.contains("<b>"));
        assert!(body.contains(";color:#000}"), "black on yellow");
    }
}
