//! The test harness's fault injector: a scripted HTTP(S) server on 127.0.0.1, port 0.
//!
//! It answers each request with whatever the test's handler returns, including shapes no real
//! identity provider produces (500, 503 with Retry-After, 429, HTML, 307, wrong token_type,
//! control characters, issuer mismatch, oversized bodies, stalls). Every request is recorded so
//! tests can assert what tokctl-oauth sent. The real-IdP end-to-end tests live elsewhere.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use url::Url;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    /// All values of a form field, in order.
    pub fn form(&self, key: &str) -> Vec<String> {
        form_urlencoded::parse(&self.body)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    /// The single value of a form field.
    pub fn field(&self, key: &str) -> Option<String> {
        let v = self.form(key);
        assert!(v.len() <= 1, "{key} sent {} times", v.len());
        v.into_iter().next()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// client_secret_basic decoded as RFC 6749 §2.3.1 says a server must: Base64, split at the
    /// first ':', then form-urldecode each half.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let b64 = value.strip_prefix("Basic ")?;
        let plain = String::from_utf8(STANDARD.decode(b64).ok()?).ok()?;
        let (id, secret) = plain.split_once(':')?;
        let dec = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some((dec(id), dec(secret)))
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Scripted {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Scripted {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Self {
        Scripted {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Scripted + Send + Sync>;

/// A running scripted server; stops when dropped.
pub struct ScriptedIdp {
    pub base: Url,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl ScriptedIdp {
    /// Plain http on 127.0.0.1.
    pub async fn start(handler: impl Fn(&Recorded) -> Scripted + Send + Sync + 'static) -> Self {
        Self::spawn(None, "http", Arc::new(handler)).await
    }

    /// https on 127.0.0.1 with the given server configuration.
    pub async fn start_tls(
        config: rustls::ServerConfig,
        handler: impl Fn(&Recorded) -> Scripted + Send + Sync + 'static,
    ) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Self::spawn(Some(acceptor), "https", Arc::new(handler)).await
    }

    async fn spawn(tls: Option<TlsAcceptor>, scheme: &str, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = Url::parse(&format!("{scheme}://{addr}/")).unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: body.to_vec(),
                            };
                            let answer = handler(&rec);
                            log.lock().unwrap().push(rec);
                            if !answer.delay.is_zero() {
                                tokio::time::sleep(answer.delay).await;
                            }
                            let mut resp = hyper::Response::builder().status(answer.status);
                            for (k, v) in &answer.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from(answer.body))).unwrap(),
                            )
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            // A client that rejects our certificate aborts the handshake: fine.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        ScriptedIdp {
            base,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// The issuer string for a path, without a trailing slash unless `path` has one.
    pub fn issuer(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A token response as a well-behaved server sends it.
pub fn token_json(access_token: &str) -> serde_json::Value {
    serde_json::json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600})
}
