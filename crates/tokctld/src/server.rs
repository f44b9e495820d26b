//! The `/v1` HTTP API over the Unix socket.

use crate::engine::Engine;
use crate::login;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future;
use http_body_util::{BodyExt, Either, Full};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokctl_proto::{
    ApiError, ErrorCode, InvalidateRequest, InvalidateResponse, LoginRequest, LogoutRequest,
    OkResponse, SecretRequest, MAX_REQUEST_BYTES,
};

/// How long a connection may take to deliver a complete request head, counted from when
/// the daemon starts waiting for one: a client that connects and says nothing, trickles
/// header bytes (slowloris), or idles on a kept-alive connection is closed after this, so
/// it cannot hold a descriptor and a task forever. Real clients send their request at once.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on every connection `listener` hands out (peer uid already checked) until
/// `shutdown` completes, then lets requests in flight finish.
///
/// Our own loop rather than `axum::serve`: axum 0.8 gives hyper no timer, which silently
/// disables hyper's header read timeout, and it offers no way to set one or to cap the
/// request head. HTTP/1.1 only: every tokctl client speaks HTTP/1.1.
///
/// Each connection is a task of its own; the runtime's workers share them (see `main`).
pub async fn serve(
    mut listener: crate::socket::PeerCheckedListener,
    app: Router,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::serve::Listener;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(
            stream,
            app.clone(),
            state.clone(),
            graceful.watcher(),
        ));
    }
    graceful.shutdown().await;
}

/// One connection: hyper's HTTP/1.1 server with the head cap, [`HEADER_READ_TIMEOUT`]
/// kept by a [`Quiet`] watch, and `GET /v1/token` answered before the router.
///
/// `GET /v1/token`, the hot endpoint, is answered here before the router (`state` is the
/// router's state): the router's per-request matching, extractors and boxing were a
/// measurable share of a cached-token answer's CPU time. Same handler code, so the same
/// status codes and JSON as through the router; the peer check and size cap apply as
/// before, since they sit in the listener and the connection builder.
async fn connection(
    stream: tokio::net::UnixStream,
    app: Router,
    state: Arc<AppState>,
    graceful: hyper_util::server::graceful::Watcher,
) {
    use hyper_util::rt::TokioIo;
    let router = hyper_util::service::TowerToHyperService::new(app);
    let quiet = Arc::new(Quiet::new());
    let q = quiet.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = Busy::new(&q);
        let token = req.method() == axum::http::Method::GET && req.uri().path() == "/v1/token";
        if token {
            // A remembered query with a usable token: answered without a future of its
            // own. The general one below holds every state of a refresh (kilobytes), and
            // hyper moves it into place for each request.
            if let Some(b) = state.engine.cached_answer(req.uri().query().unwrap_or("")) {
                return future::Either::Left(future::ready(Ok::<_, Infallible>(tracked(
                    json_answer(b),
                    busy,
                ))));
            }
        }
        let st = state.clone();
        // A GET /v1/token keeps only its URI; every other request goes to the router.
        let routed = if token {
            Err(req.into_parts().0.uri)
        } else {
            Ok(hyper::service::Service::call(&router, req))
        };
        future::Either::Right(Box::pin(async move {
            let r = match routed {
                Ok(r) => r.await?.map(Either::Right),
                Err(uri) => match token_body(&st, uri.query()).await {
                    Ok(b) => json_answer(b),
                    Err(e) => e.into_response().map(Either::Right),
                },
            };
            Ok(tracked(r, busy))
        }))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // The whole request head must fit in this (hyper answers 431 otherwise); bodies
        // are capped separately by `DefaultBodyLimit`.
        .max_buf_size(MAX_REQUEST_BYTES)
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

/// A `GET /v1/token` answer. Not boxed into an axum `Body`: one allocation less per answer.
fn json_answer(b: Bytes) -> Response<Either<Full<Bytes>, Body>> {
    let mut r = Response::new(Either::Left(Full::new(b)));
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

/// The answer to one request on a [`Quiet`] connection, busy until hyper has sent its whole
/// body and drops it: a login streams its progress in the body for minutes.
fn tracked(
    r: Response<Either<Full<Bytes>, Body>>,
    busy: Busy,
) -> Response<impl hyper::body::Body<Data = Bytes, Error = axum::BoxError> + Send + 'static> {
    r.map(|b| {
        b.map_frame(move |f| {
            let _ = &busy;
            f
        })
    })
}

/// When a connection last answered a request, and whether one is being answered now: the
/// header read timeout, kept per connection with one timer that fires at most every
/// [`HEADER_READ_TIMEOUT`] instead of hyper's, which re-arms a timer for every request
/// (about 4 % of the daemon's instructions per cached-token answer).
struct Quiet {
    /// When the connection opened; `last` counts from here.
    opened: tokio::time::Instant,
    /// Milliseconds from `opened` to the end of the last answer (0: none yet).
    last: std::sync::atomic::AtomicU64,
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
            let last = self.opened + std::time::Duration::from_millis(self.last.load(Relaxed));
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

/// Shared state of the API handlers.
pub struct AppState {
    /// The config file the daemon reads (and `GET /v1/doctor` re-checks).
    pub config_path: std::path::PathBuf,
    /// The token engine.
    pub engine: Arc<Engine>,
    /// Reloads the config from disk (also used by SIGHUP).
    pub reload: Box<dyn Fn() -> Result<usize, String> + Send + Sync>,
}

/// An API error as an HTTP response.
pub struct ApiFailure(pub ApiError);

impl From<ApiError> for ApiFailure {
    fn from(e: ApiError) -> Self {
        ApiFailure(e)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiFailure>;

/// Parses a JSON body into `T`, answering malformed input with one clear line.
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, ApiFailure> {
    serde_json::from_slice(b).map_err(|e| {
        // serde_json's message names the field and position, never the value of a secret.
        ApiFailure(ApiError::new(
            ErrorCode::Usage,
            format!("malformed request body: {e}"),
        ))
    })
}

/// The router with every `/v1` endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/token", get(token))
        .route("/v1/status", get(status))
        .route("/v1/route", get(route))
        .route("/v1/routes", get(routes))
        .route("/v1/secret", post(secret))
        .route("/v1/login", post(login_handler))
        .route("/v1/logout", post(logout))
        .route("/v1/invalidate", post(invalidate))
        .route("/v1/reload", post(reload))
        .route("/v1/doctor", get(doctor))
        .fallback(|| async {
            ApiFailure(ApiError::new(
                ErrorCode::Usage,
                "unknown endpoint; see docs/protocol.md",
            ))
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// `GET /v1/token` through the router (for HEAD; GET is answered in [`serve`]).
async fn token(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    match token_body(&st, q.as_deref()).await {
        Ok(b) => ([(header::CONTENT_TYPE, JSON)], b).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The `content-type` of every JSON answer.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The answer body (JSON) to `GET /v1/token` with query string `q`: the cached token's
/// answer, serialized when the token was cached.
async fn token_body(st: &AppState, q: Option<&str>) -> Result<Bytes, ApiFailure> {
    Ok(st.engine.token_for_query(q.unwrap_or("")).await?)
}

async fn route(
    State(st): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<tokctl_proto::RouteResponse> {
    let url = tokctl_proto::RouteQuery::from_query_string(q.as_deref().unwrap_or(""))?.url;
    let url = url::Url::parse(&url)
        .map_err(|e| ApiError::new(ErrorCode::Usage, format!("`url` is not a URL: {e}")))?;
    let cfg = st.engine.config();
    Ok(Json(tokctl_proto::RouteResponse {
        route: cfg.route_for(&url).map(|r| tokctl_proto::RouteMatch {
            profile: r.profile.clone(),
            username: r.username.clone(),
        }),
    }))
}

/// Every route, for a helper's `list`: config data only, never a token.
async fn routes(State(st): State<Arc<AppState>>) -> Json<tokctl_proto::RoutesResponse> {
    let cfg = st.engine.config();
    Json(tokctl_proto::RoutesResponse {
        routes: cfg
            .routes
            .iter()
            .map(|r| tokctl_proto::RouteEntry {
                url: r.url.to_string(),
                profile: r.profile.clone(),
                username: r.username.clone(),
            })
            .collect(),
    })
}

/// The daemon's half of `tokctl doctor`.
async fn doctor(State(st): State<Arc<AppState>>) -> Json<tokctl_proto::DoctorResponse> {
    Json(crate::doctor::run(&st.engine, &st.config_path).await)
}

async fn status(State(st): State<Arc<AppState>>) -> Json<tokctl_proto::StatusResponse> {
    Json(st.engine.status().await)
}

/// Overwrites a request body that carried a secret (a client secret, a password) once it
/// is parsed, so the plain copy does not linger in freed memory. Only when we hold the
/// last reference: a shared buffer is not ours to write.
fn wipe(b: Bytes) {
    let _ = wipe_in_place(b);
}

/// [`wipe`], returning the zeroed buffer, or the shared one untouched.
fn wipe_in_place(b: Bytes) -> Result<bytes::BytesMut, Bytes> {
    use secrecy::zeroize::Zeroize;
    let mut m = b.try_into_mut()?;
    m.as_mut().zeroize();
    Ok(m)
}

async fn secret(State(st): State<Arc<AppState>>, b: Bytes) -> ApiResult<OkResponse> {
    let req = body::<SecretRequest>(&b);
    wipe(b);
    let req = req?;
    if req.secret.is_empty() {
        return Err(ApiError::new(ErrorCode::Usage, "the secret is empty").into());
    }
    let profile = req.profile.clone();
    st.engine
        .set_secret(&profile, SecretString::from(req.secret))
        .await?;
    Ok(Json(OkResponse {
        message: format!(
            "client secret for profile {profile} stored in the {}",
            st.engine.secrets.describe().await
        ),
    }))
}

async fn login_handler(State(st): State<Arc<AppState>>, b: Bytes) -> Result<Response, ApiFailure> {
    let req = body::<LoginRequest>(&b);
    wipe(b);
    let req = req?;
    let stream = login::start(st.engine.clone(), req)?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn logout(
    State(st): State<Arc<AppState>>,
    b: Bytes,
) -> ApiResult<tokctl_proto::LogoutResponse> {
    let req: LogoutRequest = body(&b)?;
    Ok(Json(
        login::logout(&st.engine, &req.profile, req.revoke).await?,
    ))
}

async fn invalidate(State(st): State<Arc<AppState>>, b: Bytes) -> ApiResult<InvalidateResponse> {
    let req: InvalidateRequest = if b.is_empty() {
        InvalidateRequest::default()
    } else {
        body(&b)?
    };
    let dropped = st
        .engine
        .invalidate(req.profile.as_deref(), req.access_token.as_deref())?;
    Ok(Json(InvalidateResponse { dropped }))
}

async fn reload(State(st): State<Arc<AppState>>) -> ApiResult<OkResponse> {
    match (st.reload)() {
        Ok(n) => Ok(Json(OkResponse {
            message: format!("config reloaded: {n} profile(s)"),
        })),
        Err(m) => {
            Err(ApiError::new(ErrorCode::Config, format!("{m} (kept the previous config)")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_body_is_overwritten_once_parsed_unless_shared() {
        let b = Bytes::from(br#"{"profile":"p","secret":"CANARY-body-secret"}"#.to_vec());
        let req: SecretRequest = body(&b).unwrap_or_else(|_| panic!("parses"));
        assert_eq!(req.secret, "CANARY-body-secret");
        let shared = b.clone();
        // Someone else still holds it: left alone.
        let b = wipe_in_place(b).expect_err("shared buffer untouched");
        assert!(b.starts_with(b"{\"profile\""));
        drop(shared);
        let m = wipe_in_place(b).expect("sole owner");
        assert!(!m.is_empty() && m.iter().all(|x| *x == 0));
    }
}
