//! The public, browser-facing listener (`connect.listen`, off by default):
//! `GET /connect/{token}` (a connect link: a page with one "Continue" button, so a mail
//! scanner's or chat unfurler's fetch does not use the single-use link up), `POST
//! /connect/{token}` (uses the link, sets the cookie that binds the flow to this browser,
//! redirects to the provider) and `GET /oauth/callback` (the provider's redirect back, which
//! must come with that cookie). Every response is `no-store`,
//! sends no referrer (the callback URL holds a code) and cannot be framed.
//!
//! Owns only the HTTP surface; the flow itself is [`Connect`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use super::{Connect, Finished};

type Body = Full<Bytes>;

pub struct Public {
    connect: Arc<Connect>,
    /// `/oauth/callback`, and the redirect URI's own path if a proxy in front maps it.
    callback_paths: Vec<String>,
}

impl Public {
    pub fn new(connect: Arc<Connect>, redirect_uri: Option<&str>) -> Public {
        let mut callback_paths = vec!["/oauth/callback".to_string()];
        if let Some(path) = redirect_uri
            .and_then(|r| url::Url::parse(r).ok())
            .map(|u| u.path().to_string())
            .filter(|p| !callback_paths.contains(p))
        {
            callback_paths.push(path);
        }
        Public {
            connect,
            callback_paths,
        }
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: crate::config::ServerConfig,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        crate::listener::serve(listener, &config, stop, move |req| {
            let public = self.clone();
            async move { public.handle(req).await }
        })
        .await
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix("/connect/") {
            return self.link(req.method(), token).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return html(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not here",
                "Only GET is served here.",
            );
        }
        if self.callback_paths.iter().any(|p| p == path) {
            let mut query = HashMap::new();
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                // The first of repeated parameters wins.
                query
                    .entry(k.into_owned())
                    .or_insert_with(|| v.into_owned());
            }
            let cookies: Vec<&str> = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let answer = self.connect.callback(&query, &cookies).await;
            let resp = match answer.finished {
                Finished::Redirect(url) => redirect(&url),
                Finished::Page {
                    status,
                    title,
                    message,
                } => html(status, &title, &message),
            };
            return with_cookie(resp, answer.set_cookie.as_deref());
        }
        if path == "/healthz" {
            return html(StatusCode::OK, "OK", "grantd connect listener");
        }
        html(StatusCode::NOT_FOUND, "Not found", "There is nothing here.")
    }
}

impl Public {
    async fn link(&self, method: &Method, token: &str) -> Response<Body> {
        let outcome = match *method {
            Method::GET | Method::HEAD => self.connect.peek_link(token).map(|req| {
                let action = format!("/connect/{token}");
                confirm_page(&req.integration, &action)
            }),
            Method::POST => self.connect.open_link(token).await.map(|opened| {
                with_cookie(
                    redirect(&opened.authorization_url),
                    opened.set_cookie.as_deref(),
                )
            }),
            _ => {
                return html(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not here",
                    "Use GET or POST.",
                )
            }
        };
        outcome.unwrap_or_else(|e| html(e.status, "Cannot connect", &e.message))
    }
}

fn confirm_page(integration: &str, action: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connect {i}</title></head>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\"><h1>Connect {i}</h1>\
         <p>You will be asked to sign in to {i} and allow access.</p>\
         <form method=\"post\" action=\"{a}\"><button type=\"submit\">Continue</button></form></body></html>\n",
        i = escape(integration),
        a = escape(action)
    );
    secure(
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response"),
    )
}

fn secure(mut resp: Response<Body>) -> Response<Body> {
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
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:",
        ),
    );
    resp
}

fn with_cookie(mut resp: Response<Body>, set_cookie: Option<&str>) -> Response<Body> {
    if let Some(value) = set_cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, value);
    }
    resp
}

fn redirect(url: &str) -> Response<Body> {
    match HeaderValue::from_str(url) {
        Ok(location) => secure(
            Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, location)
                .body(Full::default())
                .expect("static response"),
        ),
        Err(_) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot connect",
            "The address to continue to is not valid.",
        ),
    }
}

fn html(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\"><h1>{t}</h1><p>{m}</p></body></html>\n",
        t = escape(title),
        m = escape(message)
    );
    secure(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response"),
    )
}

fn escape(s: &str) -> String {
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
    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            super::escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
