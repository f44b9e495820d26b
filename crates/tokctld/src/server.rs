//! The `/v1` HTTP API over the Unix socket.

use crate::engine::Engine;
use crate::login;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokctl_proto::{
    ApiError, ErrorCode, InvalidateRequest, InvalidateResponse, LoginRequest, LogoutRequest,
    OkResponse, SecretRequest, MAX_REQUEST_BYTES,
};

/// Serves `app` on every connection `listener` hands out (peer uid already checked) until
/// `shutdown` completes, then lets requests in flight finish.
///
/// Our own loop rather than `axum::serve`: axum 0.8 gives hyper no timer, which silently
/// disables hyper's header read timeout, and it offers no way to set one or to cap the
/// request head (`tokctld_http` does both). HTTP/1.1 only: every tokctl client speaks
/// HTTP/1.1.
///
/// Each connection is a task of its own (`tokctld_http`); the runtime's workers share them
/// (see `main`).
pub async fn serve(
    mut listener: crate::socket::PeerCheckedListener,
    app: Router,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::serve::Listener;
    let api = tokctld_http::Api::new(state, app);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        api.spawn(stream, graceful.watcher());
    }
    graceful.shutdown().await;
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

impl tokctld_http::Tokens for AppState {
    fn cached(&self, query: &str) -> Option<Bytes> {
        self.engine.cached_answer(query)
    }

    fn answer(self: Arc<Self>, uri: axum::http::Uri) -> tokctld_http::TokenFuture {
        Box::pin(async move { token(State(self), RawQuery(uri.query().map(str::to_owned))).await })
    }
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

/// `GET /v1/token` when the answer is not a cached token (a refresh, or an error):
/// `tokctld_http` calls it through `Tokens::answer`. A `HEAD` reaches it through the router.
async fn token(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    match token_body(&st, q.as_deref()).await {
        Ok(b) => ([(header::CONTENT_TYPE, tokctld_http::JSON)], b).into_response(),
        Err(e) => e.into_response(),
    }
}

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
