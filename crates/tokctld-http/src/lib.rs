//! tokctld's HTTP/1.1 connections on its Unix socket: hyper's server with the request-head
//! cap, a per-connection header read timeout, and cached `GET /v1/token` answers given
//! before the router.
//!
//! A crate of its own so that it can be built at `opt-level = 3` while the daemon is built
//! for size (see the workspace's `Cargo.toml`). Hyper's connection code is generic over the
//! service and the stream, so it is compiled in the crate that names them: in the daemon it
//! was size-optimised whatever hyper's own setting. Here, a cached-token answer takes 31–35 %
//! fewer instructions (docs/benchmarks.md, fifth pass) for 69 KB more binary; building all
//! of the daemon for speed cost 2.5 MB.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Response, Uri};
use axum::Router;
use futures_util::future;
use http_body_util::{Either, Full};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection may take to deliver a complete request head, counted from when
/// the daemon starts waiting for one: a client that connects and says nothing, trickles
/// header bytes (slowloris), or idles on a kept-alive connection is closed after this, so
/// it cannot hold a descriptor and a task forever. Real clients send their request at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a `GET /v1/token` that has to wait (a refresh) or fails.
pub type TokenFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// How the daemon answers `GET /v1/token`, the hot endpoint.
pub trait Tokens: Send + Sync + 'static {
    /// The JSON body for the query string `query` when it can be given at once (a usable
    /// cached token); `None` sends the request to [`Tokens::answer`].
    fn cached(&self, query: &str) -> Option<Bytes>;

    /// The whole answer otherwise: a refresh, or an error.
    fn answer(self: Arc<Self>, uri: Uri) -> TokenFuture;
}

/// What every connection is served with: the token answers and the router for all other
/// requests.
#[derive(Clone)]
pub struct Api {
    tokens: Arc<dyn Tokens>,
    router: Router,
}

impl Api {
    /// `GET /v1/token` goes to `tokens`, everything else to `router`.
    pub fn new(tokens: Arc<dyn Tokens>, router: Router) -> Self {
        Api { tokens, router }
    }

    /// Serves `stream` on a task of its own until the client closes it, it stays quiet for
    /// [`HEADER_READ_TIMEOUT`], or `graceful` shuts down (requests in flight finish).
    pub fn spawn(
        &self,
        stream: tokio::net::UnixStream,
        graceful: hyper_util::server::graceful::Watcher,
    ) {
        tokio::spawn(connection(stream, self.clone(), graceful));
    }
}

/// The body of every answer: a token's JSON as it is, or whatever the router made.
type AnswerBody = Either<Full<Bytes>, Body>;

/// One connection.
///
/// `GET /v1/token` is answered here before the router: the router's per-request matching,
/// extractors and boxing were a measurable share of a cached-token answer's CPU time.
async fn connection(
    stream: tokio::net::UnixStream,
    api: Api,
    graceful: hyper_util::server::graceful::Watcher,
) {
    use hyper_util::rt::TokioIo;
    let Api { tokens, router } = api;
    let router = hyper_util::service::TowerToHyperService::new(router);
    let quiet = Arc::new(Quiet::new());
    let q = quiet.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = Busy::new(&q);
        let token = req.method() == Method::GET && req.uri().path() == "/v1/token";
        if token {
            // Answered without a future of its own: the general one below is boxed, and
            // hyper moves the service future into place for each request.
            if let Some(b) = tokens.cached(req.uri().query().unwrap_or("")) {
                return future::Either::Left(future::ready(Ok::<_, Infallible>(tracked(
                    json_answer(b),
                    busy,
                ))));
            }
        }
        // A GET /v1/token keeps only its URI; every other request goes to the router.
        let routed = if token {
            Err(tokens.clone().answer(req.into_parts().0.uri))
        } else {
            Ok(hyper::service::Service::call(&router, req))
        };
        future::Either::Right(Box::pin(async move {
            let r = match routed {
                Ok(r) => match r.await {
                    Ok(r) => r.map(Either::Right),
                    Err(e) => match e {},
                },
                Err(answer) => answer.await.map(Either::Right),
            };
            Ok(tracked(r, busy))
        }))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // The whole request head must fit in this (hyper answers 431 otherwise); bodies
        // are capped separately by the router.
        .max_buf_size(tokctl_proto::MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        biased;
        r = graceful.watch(conn) => {
            if let Err(e) = r {
                tracing::debug!("connection ended: {e}");
            }
        }
        () = quiet.expired() => tracing::debug!(
            "closed a connection that sent no complete request within {}s",
            HEADER_READ_TIMEOUT.as_secs()
        ),
    }
}

/// The `content-type` of a token answer, here and from the daemon's router.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A `GET /v1/token` answer. Not boxed into an axum `Body`: one allocation less per answer.
fn json_answer(b: Bytes) -> Response<AnswerBody> {
    let mut r = Response::new(Either::Left(Full::new(b)));
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

/// The answer to one request on a [`Quiet`] connection, busy until hyper has sent its whole
/// body and drops it: a login streams its progress in the body for minutes.
fn tracked(r: Response<AnswerBody>, busy: Busy) -> Response<Tracked> {
    r.map(|body| Tracked { body, _busy: busy })
}

/// An answer's body holding its connection's [`Busy`]. Not `BodyExt::map_frame`: that
/// hides the body's size from hyper, which then chunks every token answer (a hex chunk
/// size formatted per answer, ~370 instructions, and more bytes for the client to parse)
/// instead of sending a `Content-Length`.
struct Tracked {
    body: AnswerBody,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// When a connection last answered a request, and whether one is being answered now: the
/// header read timeout, kept per connection with one timer that fires at most every
/// [`HEADER_READ_TIMEOUT`] instead of hyper's, which re-arms a timer for every request
/// (about 4 % of the daemon's instructions per cached-token answer).
struct Quiet {
    /// When the connection opened; `last` counts from here.
    opened: tokio::time::Instant,
    /// Milliseconds from `opened` to the end of the last answer (0: none yet).
    last: AtomicU64,
    /// Requests whose head has arrived and whose answer is not yet complete.
    busy: AtomicUsize,
}

impl Quiet {
    fn new() -> Self {
        Quiet {
            opened: tokio::time::Instant::now(),
            last: 0.into(),
            busy: 0.into(),
        }
    }

    /// Completes once the connection has been waiting [`HEADER_READ_TIMEOUT`] for a
    /// complete request head: since it opened, or since its last answer. A request being
    /// answered (a login can take minutes) is never cut off.
    async fn expired(&self) {
        loop {
            let last = self.opened + Duration::from_millis(self.last.load(Relaxed));
            let now = tokio::time::Instant::now();
            let due = last + HEADER_READ_TIMEOUT;
            if self.busy.load(Relaxed) > 0 {
                tokio::time::sleep_until(now + HEADER_READ_TIMEOUT).await;
            } else if now >= due {
                return;
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

/// One request being answered on a [`Quiet`] connection, from its head to the end of its
/// answer's body; dropping it marks the answer done.
struct Busy(Arc<Quiet>);

impl Busy {
    fn new(q: &Arc<Quiet>) -> Self {
        q.busy.fetch_add(1, Relaxed);
        Busy(q.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let q = &self.0;
        let ms = q.opened.elapsed().as_millis();
        q.last.store(u64::try_from(ms).unwrap_or(u64::MAX), Relaxed);
        q.busy.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers one query from "cache" and every other with a 404.
    struct OneToken;

    impl Tokens for OneToken {
        fn cached(&self, query: &str) -> Option<Bytes> {
            (query == "profile=p").then(|| Bytes::from_static(br#"{"access_token":"t"}"#))
        }

        fn answer(self: Arc<Self>, _uri: Uri) -> TokenFuture {
            Box::pin(async {
                let mut r = Response::new(Body::from(r#"{"error":"not_found"}"#));
                *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
                r
            })
        }
    }

    /// The raw response head and body to `request` on a fresh connection.
    async fn exchange(request: &str) -> String {
        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        let stream = || async {
            let parts = ["a\n", "b\n"].map(Ok::<_, Infallible>);
            Body::from_stream(futures_util::stream::iter(parts))
        };
        let router = Router::new()
            .route("/v1/status", axum::routing::get(|| async { "up" }))
            .route("/v1/stream", axum::routing::get(stream));
        let shutdown = hyper_util::server::graceful::GracefulShutdown::new();
        Api::new(Arc::new(OneToken), router).spawn(server, shutdown.watcher());
        client.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn sized_answers_carry_a_content_length_and_streams_are_chunked() {
        for (request, body) in [
            (
                "GET /v1/token?profile=p HTTP/1.1\r\nconnection: close\r\n\r\n",
                r#"{"access_token":"t"}"#,
            ),
            (
                "GET /v1/token?profile=q HTTP/1.1\r\nconnection: close\r\n\r\n",
                r#"{"error":"not_found"}"#,
            ),
            ("GET /v1/status HTTP/1.1\r\nconnection: close\r\n\r\n", "up"),
        ] {
            let r = exchange(request).await;
            assert!(
                r.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
                "{r}"
            );
            assert!(!r.contains("transfer-encoding"), "{r}");
            assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{r}");
        }
        // A streamed answer (a login's events) has no size and stays chunked.
        let r = exchange("GET /v1/stream HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert!(r.contains("\r\ntransfer-encoding: chunked\r\n"), "{r}");
        assert!(r.contains("a\n") && r.contains("b\n"), "{r}");
    }
}
