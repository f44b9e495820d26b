//! The HTTP side: one hardened reqwest client, form POSTs, capped bodies, response classification.

use crate::error::{sanitize_description, sanitize_text};
use crate::types::{parse_device_authorization, parse_token_set};
use crate::urls::{check_url, display_url, is_loopback};
use crate::{
    AuthMethod, ClientAuth, DeviceAuthorization, OAuthError, OAuthErrorCode, PkceVerifier,
    TokenParams, TokenSet,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Proxy, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use url::Url;
use zeroize::Zeroizing;

/// Largest response body we read from an identity provider.
pub(crate) const BODY_CAP: usize = 1 << 20;
const USER_AGENT: &str = concat!("tokctl/", env!("CARGO_PKG_VERSION"));
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for a form with JWT-sized tokens, so the buffer holding secrets is not reallocated
/// (each reallocation would leave an unzeroized copy behind).
const FORM_CAPACITY: usize = 16 * 1024;

/// Transport options for [`OAuthClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// PEM file whose certificates are trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Deadline of each whole request (default 15 s).
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            ca_file: None,
            timeout: Duration::from_secs(15),
        }
    }
}

/// Which kind of endpoint a request goes to; names it in error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ep {
    Token,
    Device,
    Revocation,
    Discovery,
    Jwks,
}

impl Ep {
    fn name(self) -> &'static str {
        match self {
            Ep::Token => "token endpoint",
            Ep::Device => "device authorization endpoint",
            Ep::Revocation => "revocation endpoint",
            Ep::Discovery => "discovery document",
            Ep::Jwks => "JWKS endpoint",
        }
    }
}

/// A request target: endpoint kind and URL, checked against the URL rules.
pub(crate) struct Target<'a> {
    pub(crate) url: &'a Url,
    pub(crate) label: String,
}

impl<'a> Target<'a> {
    pub(crate) fn new(ep: Ep, url: &'a Url) -> Result<Self, OAuthError> {
        check_url(url, ep.name())?;
        Ok(Target {
            url,
            label: format!("{} {}", ep.name(), display_url(url)),
        })
    }
}

/// Status, `Retry-After` and capped body of a response that was not a redirect.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) content_type: Option<String>,
    // The body may hold tokens: wiped when dropped.
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// What a response body is.
pub(crate) enum Body {
    Object(Map<String, Value>),
    OtherJson,
    NotJson,
}

impl Reply {
    pub(crate) fn parse(&self) -> Body {
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(m)) => Body::Object(m),
            Ok(_) => Body::OtherJson,
            Err(_) => Body::NotJson,
        }
    }

    fn overloaded(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()
    }

    pub(crate) fn transient_status(&self, t: &Target<'_>) -> OAuthError {
        OAuthError::Transient {
            reason: format!("{} answered {}", t.label, status_text(self.status)),
            retry_after: self.retry_after,
        }
    }

    pub(crate) fn not_json(&self, t: &Target<'_>) -> OAuthError {
        let ct = self
            .content_type
            .as_deref()
            .map(|c| format!(" ({})", sanitize_text(c, 60)))
            .unwrap_or_default();
        OAuthError::transient(format!(
            "{} answered {} with a body that is not JSON{ct}: a captive portal or proxy?",
            t.label,
            status_text(self.status)
        ))
    }

    /// An RFC 6749 §5.2 error object, if the body `m` is one.
    fn protocol_error(&self, t: &Target<'_>, m: &Map<String, Value>) -> Option<OAuthError> {
        let Some(Value::String(code)) = m.get("error") else {
            return None;
        };
        let description = match m.get("error_description") {
            Some(Value::String(d)) => Some(sanitize_description(d)),
            _ => None,
        };
        Some(OAuthError::Protocol {
            endpoint: t.label.clone(),
            code: OAuthErrorCode::parse(code),
            description,
            status: self.status.as_u16(),
        })
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("HTTP {} {r}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Interprets a token or device endpoint reply as a JSON object or an error.
pub(crate) fn grant_json(t: &Target<'_>, reply: &Reply) -> Result<Map<String, Value>, OAuthError> {
    // Rate limits and server failures are transient even when they carry an OAuth error body.
    if reply.overloaded() {
        return Err(reply.transient_status(t));
    }
    if !(reply.status.is_client_error() || reply.status.is_success()) {
        return Err(reply.transient_status(t));
    }
    let body = reply.parse();
    // A success body never has `error`; GitHub sends device-flow errors with 200.
    if let Body::Object(m) = &body {
        if let Some(err) = reply.protocol_error(t, m) {
            return Err(err);
        }
    }
    if reply.status.is_client_error() {
        return Err(OAuthError::transient(format!(
            "{} answered {} without an OAuth error: a proxy or firewall?",
            t.label,
            status_text(reply.status)
        )));
    }
    match body {
        Body::Object(m) => Ok(m),
        Body::OtherJson => Err(OAuthError::InvalidResponse(format!(
            "{} answered with JSON that is not an object",
            t.label
        ))),
        Body::NotJson => Err(reply.not_json(t)),
    }
}

/// A urlencoded request body whose buffer is wiped once reqwest is done with it.
///
/// Holds a plain `String` (not a `form_urlencoded::Serializer`, whose encoding hook is not
/// `Sync`), so request futures stay `Send` for multi-threaded runtimes.
pub(crate) struct Form(String);

impl Form {
    pub(crate) fn new() -> Self {
        Form(String::with_capacity(FORM_CAPACITY))
    }

    fn append(&mut self, key: &str, value: &str) {
        form_urlencoded::Serializer::for_suffix(&mut self.0, 0).append_pair(key, value);
    }

    pub(crate) fn pair(&mut self, key: &str, value: &str) -> &mut Self {
        self.append(key, value);
        self
    }

    /// scope (space-joined, omitted when empty), audience, resource (repeated).
    pub(crate) fn params(&mut self, p: &TokenParams) -> &mut Self {
        if !p.scopes.is_empty() {
            self.append("scope", &p.scopes.join(" "));
        }
        if let Some(audience) = &p.audience {
            self.append("audience", audience);
        }
        for resource in &p.resources {
            self.append("resource", resource);
        }
        self
    }

    fn into_body(self) -> reqwest::Body {
        // Best effort: hyper and rustls copy the bytes into their own buffers, which we cannot wipe.
        let encoded = Zeroizing::new(self.0);
        reqwest::Body::from(Bytes::from_owner(encoded))
    }
}

/// `Authorization: Basic` value for client_secret_basic: RFC 6749 §2.3.1 says to
/// form-urlencode id and secret before joining them with ':' and Base64-encoding.
pub(crate) fn basic_auth_value(client_id: &str, secret: &SecretString) -> HeaderValue {
    let mut plain = Zeroizing::new(String::with_capacity(256));
    plain.extend(form_urlencoded::byte_serialize(client_id.as_bytes()));
    plain.push(':');
    plain.extend(form_urlencoded::byte_serialize(
        secret.expose_secret().as_bytes(),
    ));
    let value = Zeroizing::new(format!("Basic {}", STANDARD.encode(plain.as_bytes())));
    // Base64 output is always a valid header value.
    let mut header = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
    header.set_sensitive(true);
    header
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The proxy for https requests from `HTTPS_PROXY`/`ALL_PROXY`. Plain http (loopback only) and
/// loopback https never go through a proxy: a proxy must not see an unencrypted token request.
pub(crate) fn https_proxy_url(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Url>, OAuthError> {
    let raw = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|k| env(k).filter(|v| !v.trim().is_empty()));
    let Some(raw) = raw else { return Ok(None) };
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = Url::parse(&with_scheme).map_err(|_| {
        OAuthError::Config("HTTPS_PROXY (or ALL_PROXY) is not a valid proxy URL".into())
    })?;
    Ok(Some(url))
}

pub(crate) fn use_proxy(target: &Url) -> bool {
    target.scheme() == "https" && !is_loopback(target)
}

/// An HTTP client for identity providers: never follows redirects, always verifies TLS.
#[derive(Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // reqwest's Debug would print proxy URLs, which may carry credentials.
        f.debug_struct("OAuthClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// Builds the client: no redirects, TLS verification on, `ca_file` certificates added as
    /// extra roots, `User-Agent: tokctl/<version>`, connect and request timeouts.
    pub fn new(opts: &HttpOptions) -> Result<Self, OAuthError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(MAX_CONNECT_TIMEOUT));
        builder = match https_proxy_url(|k| std::env::var(k).ok())? {
            Some(proxy) => builder.proxy(
                Proxy::custom(move |url| use_proxy(url).then(|| proxy.clone()))
                    .no_proxy(reqwest::NoProxy::from_env()),
            ),
            None => builder.no_proxy(),
        };
        if let Some(path) = &opts.ca_file {
            for cert in load_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            OAuthError::Config(format!("cannot set up the HTTP client: {}", root_cause(&e)))
        })?;
        Ok(OAuthClient {
            http,
            timeout: opts.timeout,
        })
    }

    /// Client credentials grant (RFC 6749 §4.4).
    pub async fn client_credentials(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        p: &TokenParams,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = Form::new();
        form.pair("grant_type", "client_credentials").params(p);
        self.token_request(token_endpoint, client, form).await
    }

    /// Refresh token grant (RFC 6749 §6); `p` may narrow scope, audience or resource.
    pub async fn refresh(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        refresh_token: &SecretString,
        p: &TokenParams,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = Form::new();
        form.pair("grant_type", "refresh_token")
            .pair("refresh_token", refresh_token.expose_secret())
            .params(p);
        self.token_request(token_endpoint, client, form).await
    }

    /// Resource owner password grant (RFC 6749 §4.3); the password is only borrowed.
    pub async fn password(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        username: &str,
        password: &SecretString,
        p: &TokenParams,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = Form::new();
        form.pair("grant_type", "password")
            .pair("username", username)
            .pair("password", password.expose_secret())
            .params(p);
        self.token_request(token_endpoint, client, form).await
    }

    /// Device authorization request (RFC 8628 §3.1).
    pub async fn device_authorization(
        &self,
        device_endpoint: &Url,
        client: &ClientAuth,
        p: &TokenParams,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let t = Target::new(Ep::Device, device_endpoint)?;
        let mut form = Form::new();
        form.params(p);
        let reply = self.post_form(&t, client, form).await?;
        parse_device_authorization(grant_json(&t, &reply)?, &t.label)
    }

    /// One device access token poll (RFC 8628 §3.4). `authorization_pending`, `slow_down`,
    /// `access_denied` and `expired_token` come back as [`OAuthError::Protocol`]; the caller
    /// runs the loop.
    pub async fn device_token(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        device_code: &SecretString,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = Form::new();
        form.pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
            .pair("device_code", device_code.expose_secret());
        self.token_request(token_endpoint, client, form).await
    }

    /// Authorization code grant with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        code: &SecretString,
        redirect_uri: &str,
        verifier: &PkceVerifier,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = Form::new();
        form.pair("grant_type", "authorization_code")
            .pair("code", code.expose_secret())
            .pair("redirect_uri", redirect_uri)
            .pair("code_verifier", verifier.secret().expose_secret());
        self.token_request(token_endpoint, client, form).await
    }

    /// Token revocation (RFC 7009) with the same client authentication as the token endpoint.
    /// Any 2xx is success (the body is ignored); 503 and other overload answers are
    /// [`OAuthError::Transient`] with `Retry-After`; `unsupported_token_type` is a protocol error.
    pub async fn revoke(
        &self,
        revocation_endpoint: &Url,
        client: &ClientAuth,
        token: &SecretString,
        hint: TokenTypeHint,
    ) -> Result<(), OAuthError> {
        let t = Target::new(Ep::Revocation, revocation_endpoint)?;
        let mut form = Form::new();
        form.pair("token", token.expose_secret())
            .pair("token_type_hint", hint.as_str());
        let reply = self.post_form(&t, client, form).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        if reply.overloaded() {
            return Err(reply.transient_status(&t));
        }
        if reply.status.is_client_error() {
            if let Body::Object(m) = reply.parse() {
                if let Some(err) = reply.protocol_error(&t, &m) {
                    return Err(err);
                }
            }
        }
        Err(OAuthError::transient(format!(
            "{} answered {} without an OAuth error",
            t.label,
            status_text(reply.status)
        )))
    }

    async fn token_request(
        &self,
        token_endpoint: &Url,
        client: &ClientAuth,
        form: Form,
    ) -> Result<TokenSet, OAuthError> {
        let t = Target::new(Ep::Token, token_endpoint)?;
        let reply = self.post_form(&t, client, form).await?;
        parse_token_set(grant_json(&t, &reply)?, &t.label)
    }

    async fn post_form(
        &self,
        t: &Target<'_>,
        client: &ClientAuth,
        mut form: Form,
    ) -> Result<Reply, OAuthError> {
        let mut req = self
            .http
            .post(t.url.clone())
            .header(ACCEPT, "application/json");
        match &client.method {
            AuthMethod::None => {
                form.pair("client_id", &client.client_id);
            }
            AuthMethod::Post(secret) => {
                form.pair("client_id", &client.client_id)
                    .pair("client_secret", secret.expose_secret());
            }
            AuthMethod::Basic(secret) => {
                req = req.header(AUTHORIZATION, basic_auth_value(&client.client_id, secret));
            }
        }
        let req = req
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.into_body());
        self.execute(t, req).await
    }

    pub(crate) async fn get(&self, t: &Target<'_>) -> Result<Reply, OAuthError> {
        let req = self
            .http
            .get(t.url.clone())
            .header(ACCEPT, "application/json");
        self.execute(t, req).await
    }

    async fn execute(
        &self,
        t: &Target<'_>,
        req: reqwest::RequestBuilder,
    ) -> Result<Reply, OAuthError> {
        let mut resp = req.send().await.map_err(|e| self.send_error(t, &e))?;
        let status = resp.status();
        if status.is_redirection() {
            // Following would re-POST the refresh token or secret wherever we are sent (RFC 9700 §4.12).
            return Err(OAuthError::transient(format!(
                "{} answered {}: redirected, not followed",
                t.label,
                status_text(status)
            )));
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after =
            header(RETRY_AFTER).and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let content_type = header(CONTENT_TYPE);
        let body = self.read_capped(t, &mut resp).await?;
        Ok(Reply {
            status,
            retry_after,
            content_type,
            body,
        })
    }

    async fn read_capped(
        &self,
        t: &Target<'_>,
        resp: &mut reqwest::Response,
    ) -> Result<Zeroizing<Vec<u8>>, OAuthError> {
        let too_big = || {
            OAuthError::InvalidResponse(format!(
                "{} sent a response larger than {} KiB",
                t.label,
                BODY_CAP / 1024
            ))
        };
        let announced = resp.content_length().unwrap_or(0);
        if announced > BODY_CAP as u64 {
            return Err(too_big());
        }
        // Reserve up front so the buffer holding tokens is not copied around while growing.
        let mut body = Zeroizing::new(Vec::with_capacity((announced as usize).max(16 * 1024)));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.send_error(t, &e))? {
            if body.len() + chunk.len() > BODY_CAP {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn send_error(&self, t: &Target<'_>, e: &reqwest::Error) -> OAuthError {
        let host = t
            .url
            .host_str()
            .map(|h| sanitize_text(h, 100))
            .unwrap_or_default();
        // Only certificate rejections are final; other handshake failures may be a flaky network.
        if let Some(rustls::Error::InvalidCertificate(cert)) = find_rustls_error(e) {
            // Name the URL too: with several IdPs the host alone may not say which profile's
            // issuer needs a `ca_file`.
            return OAuthError::Tls(format!("{}: {}", t.label, certificate_message(&host, cert)));
        }
        if e.is_timeout() {
            return OAuthError::transient(format!(
                "{} did not answer within {:?}",
                t.label, self.timeout
            ));
        }
        if e.is_connect() {
            return OAuthError::transient(format!(
                "cannot connect to {}: {}",
                t.label,
                root_cause(e)
            ));
        }
        OAuthError::transient(format!("request to {} failed: {}", t.label, root_cause(e)))
    }
}

/// What to hint to the revocation endpoint (RFC 7009 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    /// `refresh_token`
    RefreshToken,
    /// `access_token`
    AccessToken,
}

impl TokenTypeHint {
    /// The value sent as `token_type_hint`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenTypeHint::RefreshToken => "refresh_token",
            TokenTypeHint::AccessToken => "access_token",
        }
    }
}

fn certificate_message(host: &str, err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match err {
        C::UnknownIssuer => format!(
            "certificate not trusted for {host} (unknown issuer): set ca_file for this profile to the CA that issued it"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "certificate presented by {host} is not valid for that host name: check the issuer URL"
        ),
        C::Expired | C::ExpiredContext { .. } => {
            format!("certificate presented by {host} has expired (or the local clock is wrong)")
        }
        C::NotValidYet | C::NotValidYetContext { .. } => format!(
            "certificate presented by {host} is not valid yet (or the local clock is wrong)"
        ),
        other => format!("certificate presented by {host} was rejected: {other}"),
    }
}

/// Finds a rustls error in reqwest's chain (seen as io::Error(Other, io::Error(InvalidData,
/// rustls::Error))). `io::Error::source` skips the error it wraps, so descend into it explicitly.
fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The innermost cause's text (e.g. "Connection refused"), sanitized; reqwest's own text
/// would repeat the URL.
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut last: &(dyn StdError + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    sanitize_text(&last.to_string(), 200)
}

fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, OAuthError> {
    let shown = sanitize_text(&path.display().to_string(), 200);
    let pem = std::fs::read(path)
        .map_err(|e| OAuthError::Config(format!("cannot read ca_file {shown}: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| OAuthError::Config(format!("ca_file {shown} is not a valid PEM file")))?;
    if certs.is_empty() {
        return Err(OAuthError::Config(format!(
            "ca_file {shown} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn basic_auth_urlencodes_id_and_secret_first() {
        let v = basic_auth_value("my:client id", &SecretString::from("a:b%c+d e"));
        assert!(v.is_sensitive());
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let plain = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(plain, "my%3Aclient+id:a%3Ab%25c%2Bd+e");
        // What a compliant server does: split at the first ':', then form-urldecode each half.
        let (id, secret) = plain.split_once(':').unwrap();
        let dec = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        };
        assert_eq!(dec(id), "my:client id");
        assert_eq!(dec(secret), "a:b%c+d e");
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(120))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn proxy_only_for_remote_https() {
        let env: HashMap<&str, &str> = [("https_proxy", "proxy.corp:3128")].into();
        let url = https_proxy_url(|k| env.get(k).map(|v| v.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(url.as_str(), "http://proxy.corp:3128/");
        let none: HashMap<&str, &str> = [("HTTPS_PROXY", "  ")].into();
        assert!(https_proxy_url(|k| none.get(k).map(|v| v.to_string()))
            .unwrap()
            .is_none());
        let bad: HashMap<&str, &str> = [("ALL_PROXY", "http://[::1")].into();
        assert!(matches!(
            https_proxy_url(|k| bad.get(k).map(|v| v.to_string())),
            Err(OAuthError::Config(_))
        ));
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(use_proxy(&u("https://idp.example.com/token")));
        assert!(!use_proxy(&u("http://127.0.0.1:8080/token")));
        assert!(!use_proxy(&u("https://127.0.0.1:8443/token")));
        assert!(!use_proxy(&u("https://localhost/token")));
    }

    fn reply(status: u16, body: &str, retry: Option<u64>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry.map(Duration::from_secs),
            content_type: Some("text/html".into()),
            body: Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn grant_reply_classification_matrix() {
        let url = Url::parse("https://idp.test/token").unwrap();
        let t = Target::new(Ep::Token, &url).unwrap();
        let classify = |status, body: &str| grant_json(&t, &reply(status, body, Some(7)));

        let e = classify(
            400,
            r#"{"error":"invalid_grant","error_description":"gone\u001b[2J"}"#,
        )
        .unwrap_err();
        match &e {
            OAuthError::Protocol {
                code,
                description,
                status,
                endpoint,
            } => {
                assert_eq!(*code, OAuthErrorCode::InvalidGrant);
                assert_eq!(description.as_deref(), Some("gone\\u{1b}[2J"));
                assert_eq!(*status, 400);
                assert_eq!(endpoint, "token endpoint https://idp.test/token");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(401, r#"{"error":"invalid_client"}"#),
            Err(OAuthError::Protocol { status: 401, .. })
        ));
        // Auth0 answers device-flow denials with 403, GitHub with 200.
        assert!(matches!(
            classify(403, r#"{"error":"access_denied"}"#),
            Err(OAuthError::Protocol { .. })
        ));
        assert!(matches!(
            classify(200, r#"{"error":"authorization_pending"}"#),
            Err(OAuthError::Protocol {
                code: OAuthErrorCode::AuthorizationPending,
                ..
            })
        ));
        // 5xx and 429 are transient even with an RFC error body, and keep Retry-After.
        for (status, body) in [
            (500, r#"{"error":"invalid_grant"}"#),
            (503, ""),
            (429, r#"{"error":"slow_down"}"#),
            (502, "<html>"),
        ] {
            let e = classify(status, body).unwrap_err();
            assert!(
                matches!(e, OAuthError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
                "{status}: {e:?}"
            );
        }
        // Not an RFC error: transient, never a grant-state change.
        for (status, body) in [
            (403, "<html>blocked</html>"),
            (400, r#"{"message":"nope"}"#),
            (200, "<html>portal</html>"),
            (404, ""),
        ] {
            let e = classify(status, body).unwrap_err();
            assert!(matches!(e, OAuthError::Transient { .. }), "{status}: {e:?}");
        }
        let e = classify(200, "<html>portal</html>").unwrap_err();
        assert!(e.to_string().contains("not JSON (text/html)"), "{e}");
        assert!(matches!(
            classify(200, "[1,2]"),
            Err(OAuthError::InvalidResponse(_))
        ));
        assert!(classify(200, r#"{"access_token":"x"}"#).is_ok());
    }
}
