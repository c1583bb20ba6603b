//! The one HTTP helper of the tests: a JSON call on a base URL through a given client, with an
//! optional credential, answering the status, the body (JSON, or the text as a JSON string,
//! `null` when empty) and the headers. Every test file's admin, peer and enrollment calls go
//! through it, so how a request is built and an answer read is written once.
//!
//! The calls build their request at once and return a future that owns it, so a closure can
//! return one (`|path| api.get(path)`) without borrowing its arguments.

use std::future::Future;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The credential a call presents.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// `Authorization: Bearer …`.
    Token(&'a str),
    /// The session cookie; writes without a JSON body also carry `X-Requested-With`, as a
    /// same-origin page sends them.
    Cookie(&'a str),
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    /// Reads `r` whole.
    pub async fn read(r: reqwest::Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("response body");
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Self { status, body, headers }
    }

    /// The status code and body.
    pub fn pair(self) -> (u16, Value) {
        (self.status.as_u16(), self.body)
    }
}

/// JSON calls on `base` through `http` with a credential.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    auth: Auth<'a>,
}

impl<'a> Client<'a> {
    /// Calls on `base` (a path is appended to it; with `""`, paths are whole URLs).
    pub fn new(http: &'a reqwest::Client, base: &'a str) -> Self {
        Self { http, base, auth: Auth::None }
    }

    /// The same client presenting `auth`.
    pub fn with(self, auth: Auth<'a>) -> Self {
        Self { auth, ..self }
    }

    /// The same client presenting a bearer token.
    pub fn bearer(self, token: &'a str) -> Self {
        self.with(Auth::Token(token))
    }

    /// The request, ready to send.
    pub fn request(&self, method: Method, path: &str, body: Option<&Value>) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        match self.auth {
            Auth::None => {}
            Auth::Token(t) => req = req.bearer_auth(t),
            Auth::Cookie(c) => {
                req = req.header("cookie", format!("tessera_session={c}"));
                if body.is_none() {
                    req = req.header("x-requested-with", "tessera-test");
                }
            }
        }
        match body {
            Some(b) => req.json(b),
            None => req,
        }
    }

    /// Sends and reads the whole answer.
    pub fn send(&self, method: Method, path: &str, body: Option<&Value>) -> impl Future<Output = Reply> + use<> {
        let req = self.request(method, path, body);
        async move { Reply::read(req.send().await.expect("request")).await }
    }

    /// Sends; the status code and body.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> impl Future<Output = (u16, Value)> + use<> {
        let reply = self.send(method, path, body.as_ref());
        async move { reply.await.pair() }
    }

    pub fn get(&self, path: &str) -> impl Future<Output = (u16, Value)> + use<> {
        self.call(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> impl Future<Output = (u16, Value)> + use<> {
        self.call(Method::POST, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> impl Future<Output = (u16, Value)> + use<> {
        self.call(Method::DELETE, path, None)
    }
}
