//! Issue 16, over plain HTTP: what the public pages say and send without branding (neutral
//! words, no image source in the CSP), that nothing the link carries is rendered unescaped,
//! and that `Accept-Language` picks the page's language. (`tests/connect_browser.rs` checks the
//! same pages in Chromium.)

use http::Request;
use http_body_util::Full;

use crate::common::*;
use crate::world::*;

async fn page(w: &World, path: &str, accept_language: Option<&str>) -> (Got, String) {
    let mut req = Request::get(format!("http://{}{path}", w.public));
    if let Some(l) = accept_language {
        req = req.header("accept-language", l);
    }
    let got = send(req.body(Full::default()).unwrap()).await;
    let text = String::from_utf8_lossy(&got.body).into_owned();
    (got, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbranded_pages_are_neutral_escaped_strict_and_speak_the_browsers_language() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    let hint = "<img src=x onerror=alert(1)>@example.test";
    let started = w
        .connect_url(
            "authz",
            &format!(
                "connection_id=pg-1&login_hint={}",
                form_urlencoded::byte_serialize(hint.as_bytes()).collect::<String>()
            ),
        )
        .await;
    let link = started["link"].as_str().unwrap();
    let path = link.split_once(&w.public.to_string()).unwrap().1;
    let (got, body) = page(&w, path, None).await;
    assert_eq!(got.status, 200);
    assert!(body.contains("<html lang=\"en\">"), "{body}");
    assert!(body.contains("<h1>Connect your Example Cloud account</h1>"));
    assert!(
        body.contains("to the app that sent you here."),
        "neutral: {body}"
    );
    assert!(!body.contains("<header>"), "no branding, no header");
    assert!(body.contains("Account: &lt;img src=x onerror=alert(1)&gt;@example.test"));
    assert!(!body.contains("<img"), "{body}");
    assert!(body.contains("<form method=\"post\" action=\"/connect/"));
    let csp = got.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-")
            && csp.ends_with(
                "; form-action 'self' http: https:; base-uri 'none'; frame-ancestors 'none'"
            )
            && !csp.contains("img-src")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    for (name, want) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("content-language", "en"),
    ] {
        assert_eq!(got.header(name), Some(want), "{name}");
    }

    let (got, body) = page(&w, path, Some("de-CH, fr;q=0.8, en;q=0.5")).await;
    assert_eq!(got.header("content-language"), Some("fr"));
    assert!(body.contains("<html lang=\"fr\">"));
    assert!(body.contains("<h1>Connecter votre compte Example Cloud</h1>"));
    assert!(
        body.contains("à l’application qui vous a envoyé ici."),
        "{body}"
    );

    // Errors name no internal words either, and the 404 is a page too.
    let (got, body) = page(&w, "/connect/nope", None).await;
    assert_eq!(got.status, 400);
    assert!(body.contains("<h1>This link does not work</h1>"));
    assert!(body.contains("Ask the app that sent you here for a new link."));
    let (got, body) = page(&w, "/elsewhere", Some("fr")).await;
    assert_eq!(got.status, 404);
    assert!(body.contains("<h1>Page introuvable</h1>"));
    assert!(
        !body.contains("grantd") && !body.contains("state"),
        "{body}"
    );
}

#[tokio::test]
async fn branding_that_is_not_safe_to_show_is_refused_at_startup() {
    for (branding, want) in [
        (
            "logo_url: http://cdn.example/logo.png",
            "connect.branding.logo_url",
        ),
        (
            "support: \"javascript:alert(1)\"",
            "connect.branding.support",
        ),
        ("accent_color: \"#fff; }\"", "connect.branding.accent_color"),
    ] {
        let text = format!("connect:\n  branding:\n    {branding}\n");
        let err = grantd::config::Config::parse(&text, &|_| None).unwrap_err();
        assert!(err.contains(want), "{branding}: {err}");
    }
}
