//! A flow started from a connect link is bound to the browser that opened it (RFC 9700 §2.1,
//! §4.7.1): a callback from any other browser (or relayed through the admin API) is refused
//! before any token call, and does not use the state up, so the real user can still finish.

use http::Request;
use http_body_util::Full;

use crate::authz::Browser;
use crate::common::*;
use crate::world::*;

/// The response's one `Set-Cookie`: (name, value, attributes lowercased and sorted).
fn only_set_cookie(got: &Got) -> (String, String, Vec<String>) {
    let all: Vec<_> = got.headers.get_all("set-cookie").iter().collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    let mut parts = all[0].to_str().unwrap().split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    let mut attributes: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    attributes.sort();
    (name.to_string(), value.to_string(), attributes)
}

fn text(got: &Got) -> String {
    String::from_utf8_lossy(&got.body).into_owned()
}

/// Browser A confirms the link for `id`; returns A, the cookie grantd set, and the callback
/// URL the provider sent A back to (not delivered yet).
async fn open_in_browser_a(
    w: &World,
    id: &str,
) -> (Browser, (String, String, Vec<String>), url::Url) {
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id={id}&return_to={RETURN_TO}"),
        )
        .await;
    let link = url::Url::parse(started["link"].as_str().unwrap()).unwrap();
    let mut a = Browser::default();
    let posted = a.request("POST", &link).await;
    assert_eq!(posted.status, 303, "{}", text(&posted));
    let cookie = only_set_cookie(&posted);
    let to_provider = posted.header("location").unwrap().to_string();
    assert!(
        !to_provider.contains(&cookie.1),
        "the cookie's value goes nowhere but the cookie"
    );
    let cb = a.visit(&to_provider, callback).await.stopped();
    (a, cookie, cb)
}

/// Delivers the callback `cb` (of a flow bound by cookie `name`) everywhere but in the browser
/// that holds the cookie, and asserts each is refused, saying what to do, setting nothing.
async fn refused_elsewhere(w: &World, cb: &url::Url, name: &str) {
    let refused = Browser::default().request("GET", cb).await;
    assert_eq!(refused.status, 403, "{}", text(&refused));
    let page = text(&refused);
    assert!(
        page.contains("<h1>Please use the same browser</h1>")
            && page.contains("started in another browser")
            && page
                .contains("Open the link from the app that sent you here again, in this browser."),
        "{page}"
    );
    assert!(refused.headers.get("set-cookie").is_none());
    let forged = send(
        Request::get(format!("http://{}{}", w.public, path_and_query(cb)))
            .header("cookie", format!("{name}={}", "A".repeat(43)))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(forged.status, 403, "{}", text(&forged));
    let relay = format!("/v1/connect/callback?{}", cb.query().unwrap());
    let relayed = admin(w.g.admin, "POST", &relay, None).await;
    assert_eq!(relayed.status, 403, "{}", text(&relayed));
    assert_eq!(relayed.json()["error"], "browser_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_from_another_browser_is_refused_and_the_state_survives_for_its_own() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    let (mut a, (name, value, attributes), cb) = open_in_browser_a(&w, "bound-1").await;
    assert!(name.starts_with("grantd_connect_"), "{name}");
    assert_eq!(value.len(), 43, "256 random bits, base64url: {value}");
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    // public_url is http here: no Secure, so no __Host- prefix; scoped to the callback path;
    // SameSite=Lax so the provider's top-level redirect back carries it; as long as the state.
    assert_eq!(
        attributes,
        [
            "httponly",
            "max-age=600",
            "path=/oauth/callback",
            "samesite=lax"
        ]
    );

    // Browser B (another cookie jar), a forged cookie, and the app's relay: all refused.
    refused_elsewhere(&w, &cb, &name).await;
    assert_eq!(w.authz.token_calls("authorization_code").await, 0);
    assert_eq!(w.exchanges(), 0);
    assert_eq!(w.connection("bound-1").await["error"], "unknown_connection");

    // Browser A's own callback still works: the refusals did not use the state up.
    let done = a.request("GET", &cb).await;
    assert_eq!(done.status, 303, "{}", text(&done));
    let back = url::Url::parse(done.header("location").unwrap()).unwrap();
    assert_eq!(
        query(&back, "status").as_deref(),
        Some("connected"),
        "{back}"
    );
    let (cleared, empty, attributes) = only_set_cookie(&done);
    assert_eq!((cleared.as_str(), empty.as_str()), (name.as_str(), ""));
    assert_eq!(
        attributes,
        [
            "httponly",
            "max-age=0",
            "path=/oauth/callback",
            "samesite=lax"
        ],
        "cleared on completion"
    );
    assert_eq!(w.authz.token_calls("authorization_code").await, 1);
    assert_eq!(w.connection("bound-1").await["status"], "active");
    assert_eq!(w.me("authz", "bound-1").await.status, 200);

    // Once used, it is used for everyone (and says so).
    for browser in [&mut Browser::default(), &mut a] {
        let again = browser.request("GET", &cb).await;
        assert_eq!(again.status, 409, "{}", text(&again));
    }
    assert_eq!(w.authz.token_calls("authorization_code").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_opened_in_one_browser_each_keep_their_own_binding() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    let (a1, (name1, ..), cb1) = open_in_browser_a(&w, "tab-1").await;
    // The second link in the same browser (another tab) must not evict the first's cookie.
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=tab-2&return_to={RETURN_TO}"),
        )
        .await;
    let link = url::Url::parse(started["link"].as_str().unwrap()).unwrap();
    let mut a = a1;
    let posted = a.request("POST", &link).await;
    let (name2, ..) = only_set_cookie(&posted);
    assert_ne!(name1, name2, "one cookie per flow");
    let cb2 = a
        .visit(posted.header("location").unwrap(), callback)
        .await
        .stopped();
    // Finished in the other order than started; each only with its own cookie.
    for (cb, id) in [(&cb2, "tab-2"), (&cb1, "tab-1")] {
        let done = a.request("GET", cb).await;
        assert_eq!(done.status, 303, "{id}: {}", text(&done));
        assert_eq!(w.connection(id).await["status"], "active");
    }
    assert_eq!(w.authz.token_calls("authorization_code").await, 2);
}

#[tokio::test]
async fn over_https_the_binding_cookie_is_secure_and_host_prefixed() {
    let g = grantd(
        "connect:\n  listen: 127.0.0.1:0\n  public_url: https://connect.test\n\
         integrations:\n  google: { client_id: g-id, client_secret: g-secret }\n",
    )
    .shipped_rules("google")
    .start();
    let public = g.app.as_ref().unwrap().connect_addr.unwrap();
    let got = admin(g.admin, "GET", "/v1/connect/google?connection_id=s-1", None).await;
    assert_eq!(got.status, 200, "{}", text(&got));
    let link = got.json()["link"].as_str().unwrap().to_string();
    let token = link.strip_prefix("https://connect.test/connect/").unwrap();
    let posted = send(
        Request::post(format!("http://{public}/connect/{token}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(posted.status, 303, "{}", text(&posted));
    let (name, value, attributes) = only_set_cookie(&posted);
    assert!(name.starts_with("__Host-grantd_connect_"), "{name}");
    assert_eq!(
        attributes,
        [
            "httponly",
            "max-age=600",
            "path=/",
            "samesite=lax",
            "secure"
        ]
    );
    let to = url::Url::parse(posted.header("location").unwrap()).unwrap();
    assert_eq!(
        query(&to, "redirect_uri").as_deref(),
        Some("https://connect.test/oauth/callback")
    );
    let target = format!(
        "/oauth/callback?error=access_denied&state={}",
        query(&to, "state").unwrap()
    );
    let callback_with = |cookie: Option<String>| {
        let mut req = Request::get(format!("http://{public}{target}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        send(req.body(Full::default()).unwrap())
    };
    assert_eq!(callback_with(None).await.status, 403);
    let done = callback_with(Some(format!("other=1; {name}={value}"))).await;
    assert_eq!(done.status, 400, "the user said no: {}", text(&done));
    assert!(text(&done).contains("<h1>Not connected</h1>"));
    let (cleared, empty, attributes) = only_set_cookie(&done);
    assert_eq!((cleared, empty), (name, String::new()));
    assert_eq!(
        attributes,
        ["httponly", "max-age=0", "path=/", "samesite=lax", "secure"]
    );
}
