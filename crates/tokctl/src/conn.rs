//! The socket client: one HTTP/1.1 connection to `tokctld` per invocation.

use crate::autostart;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokctl_proto::{printable, ApiError, ErrorCode, API_PREFIX};

/// Largest response body the client reads; the daemon's answers are small.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How long a single request may take. The daemon bounds its own refreshes well below
/// this; the limit only keeps a wedged daemon from hanging scripts forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An open connection to the daemon.
pub struct Daemon {
    sender: SendRequest<Full<Bytes>>,
}

impl Daemon {
    /// Connects to the daemon's socket, starting `tokctld` first when nothing listens.
    pub async fn connect() -> Result<Self, ApiError> {
        let uid = rustix::process::getuid().as_raw();
        let path = tokctl_proto::socket_path(uid);
        let stream = autostart::connect(&path).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(lost)?;
        // Connection errors also surface through `send_request`, so the result is not needed.
        tokio::spawn(conn);
        Ok(Daemon { sender })
    }

    /// `GET` an endpoint and decode its JSON answer.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ApiError> {
        decode(&self.get_bytes(path).await?)
    }

    /// `GET` an endpoint and return its body as the daemon sent it.
    pub async fn get_bytes(&mut self, path: &str) -> Result<Bytes, ApiError> {
        with_timeout(async {
            let resp = self.send(Method::GET, path, Bytes::new()).await?;
            read_body(resp.into_body()).await
        })
        .await
    }

    /// `POST` a JSON body and decode the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let body = encode(body)?;
        with_timeout(async {
            let resp = self.send(Method::POST, path, body).await?;
            decode(&read_body(resp.into_body()).await?)
        })
        .await
    }

    /// `POST` a JSON body and return the streaming answer (no time limit: a login waits
    /// for the user).
    pub async fn post_stream<B: Serialize>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<Incoming, ApiError> {
        let body = encode(body)?;
        Ok(self.send(Method::POST, path, body).await?.into_body())
    }

    /// Sends one request; a non-2xx answer becomes the daemon's [`ApiError`].
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, ApiError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path}"))
            .header(HOST, HeaderValue::from_static("localhost"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("tokctl/", env!("CARGO_PKG_VERSION"))),
            );
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ApiError::new(ErrorCode::Usage, format!("bad request: {e}")))?;
        let resp = self.sender.send_request(req).await.map_err(lost)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_body(resp.into_body()).await?;
        Err(error_answer(status, &body))
    }
}

/// The daemon's [`ApiError`] from a non-2xx answer; a body that is not the contract's
/// error is reported by its status only, never by its (possibly secret) content.
pub fn error_answer(status: impl std::fmt::Display, body: &[u8]) -> ApiError {
    serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::Other,
            format!("tokctld answered HTTP {status} without an error body"),
        )
    })
}

/// Serializes a request body.
fn encode<B: Serialize>(body: &B) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ApiError::new(ErrorCode::Other, format!("cannot encode request: {e}")))
}

/// Decodes a JSON answer; the error names the problem, not the (possibly secret) body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::Other,
            format!(
                "tokctld sent an answer this tokctl {} cannot read (line {}, column {}); \
                 are client and daemon the same version?",
                tokctl_proto::VERSION,
                e.line(),
                e.column()
            ),
        )
    })
}

/// Reads a whole response body, bounded by [`MAX_RESPONSE_BYTES`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| lost_msg(&e.to_string()))
}

/// Bounds a request/response exchange by [`REQUEST_TIMEOUT`].
async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::DaemonUnreachable,
                format!(
                    "tokctld did not answer within {}s; check its log or restart it",
                    REQUEST_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// The connection broke mid-request.
fn lost(e: hyper::Error) -> ApiError {
    lost_msg(&e.to_string())
}

/// "Lost the connection" with what went wrong, escaped and cut short.
pub fn lost_msg(detail: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DaemonUnreachable,
        format!(
            "lost the connection to tokctld: {}; check its log",
            printable(detail, 200)
        ),
    )
}
