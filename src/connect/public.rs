//! The public, browser-facing listener (`connect.listen`, off by default):
//! `GET /connect/{token}` (a connect link: a page naming the app, the provider, the account
//! and what happens next, with one "Continue" button, so a mail scanner's or chat unfurler's
//! fetch does not use the single-use link up), `POST /connect/{token}` (uses the link, sets
//! the cookie that binds the flow to this browser, redirects to the provider) and `GET
//! /oauth/callback` (the provider's redirect back, which must come with that cookie). Pages
//! speak the browser's language among those shipped (`Accept-Language`).
//!
//! Owns only the HTTP surface; the flow itself is [`Connect`]'s, the markup [`super::page`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use super::page::{escape, Body, Brand};
use super::text::{self, fill, Texts};
use super::{Connect, Finished, Preview};
use crate::time::rfc3339;

pub struct Public {
    connect: Arc<Connect>,
    brand: Brand,
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
            brand: Brand::new(connect.branding()),
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
        let texts = language(req.headers());
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix("/connect/") {
            return self.link(texts, req.method(), token).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let status = StatusCode::METHOD_NOT_ALLOWED;
            return self.brand.message(texts, status, "not_found", None);
        }
        if self.callback_paths.iter().any(|p| p == path) {
            return self.callback(texts, &req).await;
        }
        if path == "/healthz" {
            return self.brand.page(texts, StatusCode::OK, "OK", "");
        }
        self.brand
            .message(texts, StatusCode::NOT_FOUND, "not_found", None)
    }

    async fn callback<B>(&self, texts: &Texts, req: &Request<B>) -> Response<Body> {
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
            Finished::Redirect(url) => self.redirect(texts, &url),
            Finished::Page(n) => self
                .brand
                .message(texts, n.status, n.code, n.provider.as_deref()),
        };
        with_cookie(resp, answer.set_cookie.as_deref())
    }

    async fn link(&self, texts: &Texts, method: &Method, token: &str) -> Response<Body> {
        let outcome = match *method {
            Method::GET | Method::HEAD => self
                .connect
                .preview(token, texts.lang)
                .map(|p| self.continue_page(texts, &p, &format!("/connect/{token}"))),
            Method::POST => self.connect.open_link(token).await.map(|opened| {
                with_cookie(
                    self.redirect(texts, &opened.authorization_url),
                    opened.set_cookie.as_deref(),
                )
            }),
            _ => Ok(self
                .brand
                .message(texts, StatusCode::METHOD_NOT_ALLOWED, "not_found", None)),
        };
        outcome.unwrap_or_else(|e| self.brand.message(texts, e.status, e.code, None))
    }

    /// Who asks (the app), for what (the provider, the account, the permissions), what
    /// happens next, and until when the link works.
    fn continue_page(&self, texts: &Texts, p: &Preview, action: &str) -> Response<Body> {
        let time = rfc3339(p.expires_at);
        let time = format!("{} {} UTC", &time[..10], &time[11..16]);
        let values = [
            ("app", self.brand.app(texts)),
            ("provider", p.provider.as_str()),
            ("account", p.account.as_deref().unwrap_or("")),
            ("time", time.as_str()),
        ];
        let para = |template: &str, class: &str| {
            format!("<p{class}>{}</p>", escape(&fill(template, &values)))
        };
        let mut main = para(texts.continue_lead, "");
        if p.account.is_some() {
            main += &para(texts.continue_account, " class=\"account\"");
        }
        if !p.permissions.is_empty() {
            main += &para(texts.continue_permissions, "");
            let items: String = p
                .permissions
                .iter()
                .map(|d| format!("<li>{}</li>", escape(d)))
                .collect();
            main += &format!("<ul>{items}</ul>");
        }
        main += &para(texts.continue_next, "");
        main += &format!(
            "<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>",
            escape(action),
            escape(&fill(texts.continue_button, &values))
        );
        main += &para(texts.continue_expires, " class=\"muted\"");
        let title = fill(texts.continue_title, &values);
        self.brand.page(texts, StatusCode::OK, &title, &main)
    }

    fn redirect(&self, texts: &Texts, url: &str) -> Response<Body> {
        match HeaderValue::from_str(url) {
            Ok(location) => self.brand.secure(
                Response::builder()
                    .status(StatusCode::SEE_OTHER)
                    .header(header::LOCATION, location)
                    .body(Full::default())
                    .expect("static response"),
            ),
            Err(_) => self
                .brand
                .message(texts, StatusCode::INTERNAL_SERVER_ERROR, "failed", None),
        }
    }
}

fn language(headers: &HeaderMap) -> &'static Texts {
    text::pick(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

fn with_cookie(mut resp: Response<Body>, set_cookie: Option<&str>) -> Response<Body> {
    if let Some(value) = set_cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, value);
    }
    resp
}
