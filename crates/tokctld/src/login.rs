//! Interactive logins (device code, authorization code + PKCE, password) and logout.
//!
//! The daemon owns every IdP request and every secret; the client only renders the events
//! streamed here and opens the browser.

use crate::config::Grant;
use crate::engine::{Engine, ProfileRt, VariantKey};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use secrecy::SecretString;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokctl_oauth::{
    authorization_url, random_state, OAuthError, OAuthErrorCode, PkceVerifier, TokenSet,
    TokenTypeHint,
};
use tokctl_proto::{ApiError, ErrorCode, LoginEvent, LoginRequest, LogoutResponse};
use tokctl_store::SecretKind;
use tokio::sync::{mpsc, oneshot};

/// How long a browser login may take before the listener closes.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound on the device-flow poll interval after network errors.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

type Events = mpsc::Sender<LoginEvent>;

/// Starts a login and returns the NDJSON event stream. Request errors that need no IdP
/// (unknown profile, wrong arguments for the grant) fail before the stream starts.
pub fn start(
    engine: Arc<Engine>,
    mut req: LoginRequest,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>>, ApiError> {
    // Into the zeroizing type first: an early return would otherwise drop it as a plain
    // String, left in freed memory.
    let password = req.password.take().map(SecretString::from);
    let prof = engine.profile(Some(&req.profile))?;
    match prof.cfg.grant {
        Grant::ClientCredentials => {
            return Err(ApiError::new(
                ErrorCode::Usage,
                format!(
                    "profile {} uses client credentials: store its secret with `tokctl secret set {}` instead",
                    prof.cfg.name, prof.cfg.name
                ),
            ))
        }
        Grant::Password if req.username.is_none() || password.is_none() => {
            return Err(ApiError::new(
                ErrorCode::Usage,
                format!("profile {} uses the password grant: give --username and --password-stdin", prof.cfg.name),
            ))
        }
        Grant::DeviceCode | Grant::AuthorizationCode if req.username.is_some() || password.is_some() => {
            return Err(ApiError::new(
                ErrorCode::Usage,
                format!("profile {} does not use the password grant; drop --username/--password-stdin", prof.cfg.name),
            ))
        }
        _ => {}
    }
    let (tx, rx) = mpsc::channel::<LoginEvent>(16);
    let username = req.username;
    let force = req.force;
    tokio::spawn(async move {
        let done_tx = tx.clone();
        let flow = run(&engine, &prof, force, username, password, &tx);
        // Stop the flow (and close any loopback listener) when the client goes away.
        let outcome = tokio::select! {
            r = flow => Some(r),
            _ = done_tx.closed() => None,
        };
        match outcome {
            Some(Ok(())) => {
                let _ = tx
                    .send(LoginEvent::Done {
                        profile: prof.cfg.name.clone(),
                    })
                    .await;
            }
            Some(Err(e)) => {
                tracing::warn!(profile = %prof.cfg.name, "login failed: {}", e.message);
                let _ = tx
                    .send(LoginEvent::Error {
                        error: e.error,
                        message: e.message,
                    })
                    .await;
            }
            None => tracing::info!(profile = %prof.cfg.name, "login abandoned by the client"),
        }
    });
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), rx))
    }))
}

async fn run(
    engine: &Arc<Engine>,
    prof: &Arc<ProfileRt>,
    force: bool,
    username: Option<String>,
    password: Option<SecretString>,
    tx: &Events,
) -> Result<(), ApiError> {
    let Ok(_only_one) = prof.login_lock.try_lock() else {
        return Err(ApiError::new(
            ErrorCode::Usage,
            format!("a login for profile {} is already running", prof.cfg.name),
        ));
    };
    if !force && prof.logged_in(&engine.secrets).await? {
        let _ = tx
            .send(LoginEvent::Info {
                message: format!(
                    "profile {} is already logged in; nothing to do (use --force to log in again)",
                    prof.cfg.name
                ),
            })
            .await;
        return Ok(());
    }
    let (ts, nonce) = match prof.cfg.grant {
        Grant::DeviceCode => (device(engine, prof, tx).await?, None),
        Grant::AuthorizationCode => browser(engine, prof, tx).await?,
        Grant::Password => {
            let _ = tx
                .send(LoginEvent::Info {
                    message: "warning: the password grant is deprecated (RFC 9700 §2.4): your password passes through this tool \
                              and cannot be protected by MFA; prefer device_code or authorization_code when your IdP allows"
                        .into(),
                })
                .await;
            let meta = prof.endpoints().await?;
            let auth = prof.client_auth(&engine.secrets).await?;
            let pw =
                password.ok_or_else(|| ApiError::new(ErrorCode::Usage, "no password given"))?;
            let user = username.unwrap_or_default();
            let params = prof.params(&VariantKey::default());
            let r = prof
                .http()?
                .password(&meta.token_endpoint, &auth, &user, &pw, &params)
                .await;
            // The password is dropped (and zeroized by SecretString) right here, used once.
            drop(pw);
            (r.map_err(|e| prof.oauth_err(&e))?, None)
        }
        Grant::ClientCredentials => {
            return Err(ApiError::new(
                ErrorCode::Usage,
                "client credentials need no login",
            ))
        }
    };
    finish(engine, prof, ts, nonce.as_deref(), tx).await
}

/// Validates the ID token when present, stores the refresh token, caches the access token.
async fn finish(
    engine: &Arc<Engine>,
    prof: &Arc<ProfileRt>,
    mut ts: TokenSet,
    nonce: Option<&str>,
    tx: &Events,
) -> Result<(), ApiError> {
    if prof.cfg.scopes.iter().any(|s| s == "openid") {
        if let Some(id) = &ts.id_token {
            let meta = prof.endpoints().await?;
            let jwks = meta.jwks_uri.as_ref().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Config,
                    format!(
                        "profile {}: the IdP sent an ID token but publishes no jwks_uri (set jwks_uri, or drop openid from scopes)",
                        prof.cfg.name
                    ),
                )
            })?;
            prof.http()?
                .validate_id_token(jwks, id, &prof.cfg.issuer, &prof.cfg.client_id, nonce)
                .await
                .map_err(|e| prof.oauth_err(&e))?;
        } else if nonce.is_some() {
            tracing::warn!(profile = %prof.cfg.name, "openid was requested but the IdP returned no ID token");
        }
    }
    let _rt = prof.rt_lock.lock().await;
    let rt = ts.refresh_token.take();
    prof.credentials_changed(None, None);
    match rt {
        // A failed write keeps the token in memory for the scheduler to save later, as
        // for a rotation: the login is not lost because the keychain hiccuped.
        Some(rt) => {
            if let Err(e) = prof.save_refresh_token(&engine.secrets, rt).await {
                let _ = tx
                    .send(LoginEvent::Info {
                        message: format!("warning: logged in, but {}", e.message),
                    })
                    .await;
            }
        }
        None => tracing::warn!(
            profile = %prof.cfg.name,
            "the IdP issued no refresh token; you will have to log in again when the access token expires (is offline_access in scopes?)"
        ),
    }
    prof.cache_base_token(ts);
    engine.wake();
    tracing::info!(profile = %prof.cfg.name, "logged in");
    Ok(())
}

async fn device(
    engine: &Arc<Engine>,
    prof: &Arc<ProfileRt>,
    tx: &Events,
) -> Result<TokenSet, ApiError> {
    let meta = prof.endpoints().await?;
    let ep = meta.device_authorization_endpoint.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Config,
            format!("profile {}: the IdP has no device authorization endpoint (set device_authorization_endpoint)", prof.cfg.name),
        )
    })?;
    let http = prof.http()?;
    let auth = prof.client_auth(&engine.secrets).await?;
    let da = http
        .device_authorization(&ep, &auth, &prof.params(&VariantKey::default()))
        .await
        .map_err(|e| prof.oauth_err(&e))?;
    let _ = tx
        .send(LoginEvent::DeviceAuthorization {
            verification_uri: da.verification_uri.clone(),
            verification_uri_complete: da.verification_uri_complete.clone(),
            user_code: da.user_code.clone(),
            expires_in: da.expires_in,
        })
        .await;
    // RFC 8628 §3.5: 5 s when the IdP gives no interval; +5 s for good on slow_down.
    let mut interval = Duration::from_secs(da.interval.unwrap_or(5).max(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(da.expires_in);
    loop {
        if tokio::time::Instant::now() + interval > deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(ApiError::new(
                ErrorCode::Denied,
                "the device code expired before the login was approved; run `tokctl login` again",
            ));
        }
        tokio::time::sleep(interval).await;
        match http
            .device_token(&meta.token_endpoint, &auth, &da.device_code)
            .await
        {
            Ok(ts) => return Ok(ts),
            Err(OAuthError::Protocol {
                code: OAuthErrorCode::AuthorizationPending,
                ..
            }) => {}
            Err(OAuthError::Protocol {
                code: OAuthErrorCode::SlowDown,
                ..
            }) => interval += Duration::from_secs(5),
            Err(OAuthError::Protocol {
                code: OAuthErrorCode::AccessDenied,
                ..
            }) => {
                return Err(ApiError::new(
                    ErrorCode::Denied,
                    "the login was denied at the identity provider",
                ))
            }
            Err(OAuthError::Protocol {
                code: OAuthErrorCode::ExpiredToken,
                ..
            }) => {
                return Err(ApiError::new(
                    ErrorCode::Denied,
                    "the device code expired; run `tokctl login` again",
                ))
            }
            Err(e @ OAuthError::Transient { .. }) => {
                tracing::warn!(profile = %prof.cfg.name, "device poll failed, backing off: {e}");
                interval = (interval * 2).min(MAX_POLL_INTERVAL);
            }
            Err(e) => return Err(prof.oauth_err(&e)),
        }
    }
}

/// What the loopback listener hands to the flow: the callback's query, and where to send
/// the page text once the code is redeemed.
struct Callback {
    /// The query without `code`.
    params: HashMap<String, String>,
    /// The authorization code, moved out of the query into a zeroizing holder at once.
    code: Option<SecretString>,
    reply: oneshot::Sender<Result<(), String>>,
}

struct ListenerState {
    state: String,
    /// Taken by the first callback with the right state: one callback only.
    tx: Mutex<Option<oneshot::Sender<Callback>>>,
}

/// The authorization code flow; returns the tokens and the nonce the ID token must carry.
async fn browser(
    engine: &Arc<Engine>,
    prof: &Arc<ProfileRt>,
    tx: &Events,
) -> Result<(TokenSet, Option<String>), ApiError> {
    let meta = prof.endpoints().await?;
    let auth_ep = meta.authorization_endpoint.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Config,
            format!(
                "profile {}: the IdP has no authorization endpoint",
                prof.cfg.name
            ),
        )
    })?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", prof.cfg.redirect_port))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Config,
                format!("cannot listen on 127.0.0.1:{}: {e}", prof.cfg.redirect_port),
            )
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| ApiError::new(ErrorCode::Other, e.to_string()))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let state = random_state();
    let verifier = PkceVerifier::new();
    let nonce = prof
        .cfg
        .scopes
        .iter()
        .any(|s| s == "openid")
        .then(random_state);
    let params = prof.params(&VariantKey::default());
    let url = authorization_url(
        &auth_ep,
        &prof.cfg.client_id,
        &redirect_uri,
        &params,
        &state,
        &verifier.challenge(),
        nonce.as_deref(),
    );

    let (cb_tx, cb_rx) = oneshot::channel();
    let issuer = prof.cfg.issuer.clone();
    let iss_required = meta.authorization_response_iss_parameter_supported;
    let ls = Arc::new(ListenerState {
        state,
        tx: Mutex::new(Some(cb_tx)),
    });
    let app = Router::new()
        .route("/callback", get(callback))
        .fallback(not_found)
        .with_state(ls);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let _ = tx
        .send(LoginEvent::Browser {
            url: url.to_string(),
        })
        .await;

    let result = async {
        let cb = tokio::time::timeout(BROWSER_TIMEOUT, cb_rx)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Denied,
                    "no answer from the browser within 5 minutes; run `tokctl login` again",
                )
            })?
            .map_err(|_| ApiError::new(ErrorCode::Other, "the loopback listener stopped"))?;
        // The issuer check comes first, for error responses too (RFC 9207 §2.4): a response
        // from another IdP is never redeemed, and its error text is not believed.
        let outcome = match check_iss(&prof.cfg.name, &cb.params, &issuer, iss_required) {
            Ok(()) => {
                let code = cb.code.as_ref();
                redeem(
                    engine,
                    prof,
                    &meta,
                    &cb.params,
                    code,
                    &redirect_uri,
                    &verifier,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let page = match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(e.message.clone()),
        };
        let _ = cb.reply.send(page);
        outcome
    }
    .await;
    // Let the page reach the browser, then close the port.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok((result?, nonce))
}

async fn redeem(
    engine: &Arc<Engine>,
    prof: &Arc<ProfileRt>,
    meta: &tokctl_oauth::Metadata,
    q: &HashMap<String, String>,
    code: Option<&SecretString>,
    redirect_uri: &str,
    verifier: &PkceVerifier,
) -> Result<TokenSet, ApiError> {
    if let Some(err) = q.get("error") {
        let desc = q
            .get("error_description")
            .map(|d| format!(" ({})", tokctl_proto::printable(d, 200)))
            .unwrap_or_default();
        let code = if err == "access_denied" {
            ErrorCode::Denied
        } else {
            ErrorCode::Config
        };
        return Err(ApiError::new(
            code,
            format!(
                "the identity provider refused the login: {}{desc}",
                tokctl_proto::printable(err, 60)
            ),
        ));
    }
    let code =
        code.ok_or_else(|| ApiError::new(ErrorCode::Other, "the callback carried no code"))?;
    let auth = prof.client_auth(&engine.secrets).await?;
    prof.http()?
        .exchange_code(&meta.token_endpoint, &auth, code, redirect_uri, verifier)
        .await
        .map_err(|e| prof.oauth_err(&e))
}

/// RFC 9207 §2.4: the `iss` of the authorization response must equal the issuer this login
/// was started with (simple string comparison), and must be there when the IdP's metadata
/// promises it. A mismatch means the response came from another IdP (mix-up, RFC 9700
/// §4.4): the code is never redeemed, at either IdP.
fn check_iss(
    name: &str,
    q: &HashMap<String, String>,
    issuer: &str,
    iss_required: bool,
) -> Result<(), ApiError> {
    match q.get("iss") {
        Some(iss) if iss != issuer => {
            tracing::warn!(profile = %name, "authorization response from another issuer refused (RFC 9207 mix-up defence)");
            Err(ApiError::new(
                ErrorCode::Other,
                format!(
                    "profile {name}: login refused: the authorization response came from issuer {}, not {} \
                     (a mix-up attack or a misrouted browser, RFC 9207); no code was redeemed. \
                     Run `tokctl login {name}` again and check the address in the browser",
                    tokctl_proto::printable(iss, 200),
                    tokctl_proto::printable(issuer, 200),
                ),
            ))
        }
        None if iss_required => {
            tracing::warn!(profile = %name, "authorization response without iss refused: the IdP promises iss (RFC 9207)");
            Err(ApiError::new(
                ErrorCode::Other,
                format!(
                    "profile {name}: login refused: the authorization response carried no iss although {} \
                     promises it (authorization_response_iss_parameter_supported, RFC 9207); no code was \
                     redeemed. Run `tokctl login {name}` again",
                    tokctl_proto::printable(issuer, 200),
                ),
            ))
        }
        _ => Ok(()),
    }
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "This address is not part of a tokctl login.",
    )
}

async fn callback(
    State(ls): State<Arc<ListenerState>>,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    // Junk or a wrong state (another login's callback, a stale tab) is ignored: the real
    // callback may still come. A callback with the right state ends the login either way;
    // the flow checks its `iss` before anything else, so a mixed-up response fails loudly
    // instead of leaving the user waiting for five minutes.
    if q.get("state") != Some(&ls.state) {
        return page(
            StatusCode::BAD_REQUEST,
            "Not this login",
            "This callback does not belong to the login tokctl is waiting for.",
        );
    }
    let Some(tx) = ls.tx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return page(
            StatusCode::GONE,
            "Already used",
            "This login was already completed; the link cannot be used twice.",
        );
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx
        .send(Callback {
            // Moved, not copied: the String's buffer is the one SecretString wipes.
            code: q.remove("code").map(SecretString::from),
            params: q,
            reply: reply_tx,
        })
        .is_err()
    {
        return page(
            StatusCode::GONE,
            "Login over",
            "tokctl is no longer waiting for this login.",
        );
    }
    match reply_rx.await {
        Ok(Ok(())) => page(
            StatusCode::OK,
            "Login succeeded",
            "You are logged in. You can close this tab and return to the terminal.",
        ),
        Ok(Err(m)) => page(StatusCode::OK, "Login failed", &m),
        Err(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Login failed",
            "tokctl stopped before finishing the login.",
        ),
    }
}

/// A self-contained page: no external resources, no referrer, not cached.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tokctl: {t}</title>\
         <style>body{{font-family:sans-serif;max-width:36em;margin:4em auto}}</style></head>\
         <body><h1>{t}</h1><p>{x}</p></body></html>",
        t = esc(title),
        x = esc(text)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}

/// `POST /v1/logout`: revoke at the IdP (RFC 7009) when possible, then forget locally.
pub async fn logout(
    engine: &Arc<Engine>,
    name: &str,
    revoke: bool,
) -> Result<LogoutResponse, ApiError> {
    let prof = engine.profile(Some(name))?;
    let _rt = prof.rt_lock.lock().await;
    let kind = if prof.cfg.grant.uses_refresh_token() {
        SecretKind::RefreshToken
    } else {
        SecretKind::ClientSecret
    };
    let stored = engine
        .secrets
        .get(&prof.cfg.name, kind)
        .await
        .map_err(|e| crate::secrets::store_error(&e))?;
    let mut revoked = false;
    let mut notes = Vec::new();
    match (&stored, kind, revoke) {
        (None, _, _) => notes.push("nothing was stored".to_string()),
        (Some(rt), SecretKind::RefreshToken, true) => {
            let meta = prof.endpoints().await?;
            match &meta.revocation_endpoint {
                Some(ep) => {
                    let auth = prof.client_auth(&engine.secrets).await?;
                    match prof.http()?.revoke(ep, &auth, rt, TokenTypeHint::RefreshToken).await {
                        Ok(()) => {
                            revoked = true;
                            notes.push("refresh token revoked at the identity provider".into());
                        }
                        Err(e @ OAuthError::Protocol { code: OAuthErrorCode::UnsupportedTokenType, .. }) => {
                            notes.push(format!("the IdP could not revoke it ({e}); it stays valid there until it expires"));
                        }
                        Err(e) => {
                            // Keep everything: the token may still be live, and the user can retry
                            // or choose --no-revoke.
                            return Err(ApiError::new(
                                prof.oauth_err(&e).error,
                                format!("profile {name}: revocation failed, nothing was deleted: {e}; retry, or use --no-revoke"),
                            ));
                        }
                    }
                }
                None => notes.push("the IdP has no revocation endpoint: the refresh token stays valid there until it expires".into()),
            }
        }
        (Some(_), SecretKind::RefreshToken, false) => {
            notes.push("not revoked (--no-revoke)".into())
        }
        (Some(_), _, _) => notes.push("client secret removed".into()),
    }
    if stored.is_some() {
        engine
            .secrets
            .delete(&prof.cfg.name, kind)
            .await
            .map_err(|e| crate::secrets::store_error(&e))?;
    }
    prof.forget();
    Ok(LogoutResponse {
        revoked,
        message: format!("profile {name} logged out: {}", notes.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_escaped() {
        let r = page(StatusCode::OK, "T<", "x<script>");
        assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'"));
    }

    #[test]
    fn iss_is_compared_exactly_and_required_when_promised() {
        let q = |iss: Option<&str>| {
            let mut m = HashMap::from([("code".to_string(), "c".to_string())]);
            if let Some(i) = iss {
                m.insert("iss".into(), i.into());
            }
            m
        };
        let a = "https://a.test";
        assert!(check_iss("p", &q(Some(a)), a, true).is_ok());
        assert!(check_iss("p", &q(None), a, false).is_ok());
        // Simple string comparison (RFC 9207 §2.4): no normalisation of a slash or case.
        for bad in [
            "https://b.test",
            "https://a.test/",
            "https://A.test",
            "https://a.test\u{1b}[2J",
        ] {
            let e = check_iss("p", &q(Some(bad)), a, false).unwrap_err();
            assert_eq!(e.error, ErrorCode::Other);
            assert!(
                e.message.contains("RFC 9207") && e.message.contains(a),
                "{}",
                e.message
            );
            assert!(!e.message.contains('\u{1b}'), "{}", e.message);
        }
        let e = check_iss("p", &q(None), a, true).unwrap_err();
        assert!(e.message.contains("carried no iss"), "{}", e.message);
    }
}
