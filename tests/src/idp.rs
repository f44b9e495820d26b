//! The local identity provider: `tests/idp/idp.mjs` (oidc-provider) run per test.

use crate::error::{Error, Result};
use crate::http::{self, Browser, Reply};
use crate::proc::{self, SharedText, Sig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The device authorization grant type URN.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What the IdP offers when a test passes no `users`, `clients` or `resources`.
pub mod defaults {
    /// Default user `alice`.
    pub const ALICE: &str = "alice";
    /// Password of `alice`.
    pub const ALICE_PASSWORD: &str = "alice-password";
    /// Default user `bob`.
    pub const BOB: &str = "bob";
    /// Password of `bob`.
    pub const BOB_PASSWORD: &str = "bob-password";
    /// Client-credentials client using `client_secret_basic`.
    pub const CC_BASIC: &str = "cc-basic";
    /// Secret of [`CC_BASIC`].
    pub const CC_BASIC_SECRET: &str = "cc-basic-secret";
    /// Client-credentials client using `client_secret_post`.
    pub const CC_POST: &str = "cc-post";
    /// Secret of [`CC_POST`].
    pub const CC_POST_SECRET: &str = "cc-post-secret";
    /// Public native client for the device flow (+ refresh).
    pub const DEVICE_CLI: &str = "device-cli";
    /// Public native client for auth code + PKCE (+ refresh), redirect
    /// `http://127.0.0.1/callback` on any port.
    pub const NATIVE_CLI: &str = "native-cli";
    /// Confidential client (basic auth) for the password grant (+ refresh).
    pub const PASSWORD_CLI: &str = "password-cli";
    /// Secret of [`PASSWORD_CLI`].
    pub const PASSWORD_CLI_SECRET: &str = "password-cli-secret";
    /// Confidential client that may introspect and revoke any token; always registered.
    pub const INTROSPECTOR: &str = "introspector";
    /// Secret of [`INTROSPECTOR`].
    pub const INTROSPECTOR_SECRET: &str = "introspector-secret";
    /// The default resource (RFC 8707): opaque tokens, scopes `api api:read api:write`.
    pub const API_RESOURCE: &str = "urn:tokctl:api";
    /// A second resource with the same scopes, for down-scoping by resource.
    pub const HTTP_API_RESOURCE: &str = "http://127.0.0.1/api";
}

/// How long the IdP may take to print its issuer line (node loading oidc-provider is slow
/// on a busy 2-core machine).
/// Idle, it starts in about 0.5 s; with the cores busy compiling it took 15-25 s here.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A user of the test IdP.
#[derive(Clone)]
pub struct IdpUser {
    /// Login name (also the `sub`).
    pub username: String,
    /// Password.
    pub password: SecretString,
}

impl IdpUser {
    /// A user with this name and password.
    pub fn new(username: &str, password: &str) -> Self {
        IdpUser {
            username: username.into(),
            password: SecretString::from(password),
        }
    }
}

impl std::fmt::Debug for IdpUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpUser")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Serialize for IdpUser {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        json!({ "username": self.username, "password": self.password.expose_secret() }).serialize(s)
    }
}

/// A protected resource (RFC 8707) the IdP issues tokens for.
#[derive(Clone, Debug, Serialize)]
pub struct IdpResource {
    /// The resource indicator (an absolute URI).
    pub indicator: String,
    /// Space-separated scopes the resource accepts.
    pub scope: String,
    /// `opaque` (introspectable, the default) or `jwt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Access-token lifetime for this resource, seconds (default: `access_token_ttl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<u64>,
}

/// TLS for the IdP: it then serves `https://127.0.0.1:<port>`.
#[derive(Clone, Debug, Serialize)]
pub struct IdpTls {
    /// PEM certificate chain (must name IP 127.0.0.1).
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA the harness trusts for this IdP (default: `cert_file` itself).
    #[serde(skip)]
    pub ca_file: Option<PathBuf>,
}

/// Consent behaviour of the interaction pages.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Consent {
    /// Granted without a page (the default).
    Auto,
    /// An Allow/Deny page; the simulated user clicks Allow.
    Click,
}

/// The IdP's configuration; every field is optional, `Default` gives the stock setup.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdpConfig {
    /// Port on 127.0.0.1; `None` or 0 picks a free one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Access-token lifetime in seconds (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<u64>,
    /// Client-credentials token lifetime in seconds (default: `access_token_ttl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_credentials_ttl: Option<u64>,
    /// Refresh-token lifetime in seconds (default 14 days).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl: Option<u64>,
    /// Rotate refresh tokens on use, with reuse detection (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_refresh_token: Option<bool>,
    /// Device-code lifetime in seconds (default 600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_code_ttl: Option<u64>,
    /// When set, the device authorization response carries this `interval` (oidc-provider
    /// sends none, so clients poll every 5 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_interval: Option<u64>,
    /// Answer `slow_down` to device-token polls that come faster than the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_slow_down: Option<bool>,
    /// ID-token lifetime in seconds (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_ttl: Option<u64>,
    /// Consent behaviour (default automatic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// Users; default alice and bob (see [`defaults`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<IdpUser>>,
    /// oidc-provider client metadata, passed through; replaces the default clients
    /// (the `introspector` client is always added unless listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<Value>>,
    /// Resources; the first is the default resource of every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<IdpResource>>,
    /// Serve over TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<IdpTls>,
    /// Canary mode: access and refresh tokens, authorization and device codes begin with
    /// `<prefix>-AT-`, `-RT-`, `-CC-` (client credentials), `-CODE-`, `-DC-`, and
    /// [`Idp::captured`] returns the PKCE verifiers and ID tokens the token endpoint saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_prefix: Option<String>,
}

/// What a canary-mode IdP ([`IdpConfig::token_prefix`]) kept from its token endpoint.
#[derive(Clone, Default, serde::Deserialize)]
pub struct Captured {
    /// Every `code_verifier` received, in order.
    pub code_verifiers: Vec<String>,
    /// Every `id_token` issued, in order.
    pub id_tokens: Vec<String>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: these are secrets under test.
        f.debug_struct("Captured")
            .field("code_verifiers", &self.code_verifiers.len())
            .field("id_tokens", &self.id_tokens.len())
            .finish()
    }
}

/// How a test client authenticates at the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// Public client: `client_id` in the body only.
    None,
    /// `client_secret_basic`.
    Basic(SecretString),
    /// `client_secret_post`.
    Post(SecretString),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "None",
            ClientAuth::Basic(_) => "Basic([redacted])",
            ClientAuth::Post(_) => "Post([redacted])",
        })
    }
}

/// A client the harness itself uses to talk to the IdP.
#[derive(Clone, Debug)]
pub struct TestClient {
    /// `client_id`.
    pub id: String,
    /// Its authentication.
    pub auth: ClientAuth,
}

impl TestClient {
    /// A public client.
    pub fn public(id: &str) -> Self {
        TestClient {
            id: id.into(),
            auth: ClientAuth::None,
        }
    }

    /// A confidential client using HTTP Basic.
    pub fn basic(id: &str, secret: &str) -> Self {
        TestClient {
            id: id.into(),
            auth: ClientAuth::Basic(secret.into()),
        }
    }

    /// A confidential client sending its secret in the body.
    pub fn post(id: &str, secret: &str) -> Self {
        TestClient {
            id: id.into(),
            auth: ClientAuth::Post(secret.into()),
        }
    }
}

/// A token endpoint response.
#[derive(Clone)]
pub struct TokenReply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (holds tokens: never print it).
    pub body: Value,
}

impl std::fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReply")
            .field("status", &self.status)
            .field("error", &self.error())
            .field("has_access_token", &self.access_token().is_some())
            .field("has_refresh_token", &self.refresh_token().is_some())
            .field("has_id_token", &self.id_token().is_some())
            .field("expires_in", &self.expires_in())
            .field("scope", &self.scope())
            .finish()
    }
}

impl TokenReply {
    fn str_field(&self, k: &str) -> Option<&str> {
        self.body.get(k).and_then(Value::as_str)
    }

    /// True for a 200 with an access token.
    pub fn is_success(&self) -> bool {
        self.status == 200 && self.access_token().is_some()
    }

    /// `access_token`.
    pub fn access_token(&self) -> Option<&str> {
        self.str_field("access_token")
    }

    /// `refresh_token`.
    pub fn refresh_token(&self) -> Option<&str> {
        self.str_field("refresh_token")
    }

    /// `id_token`.
    pub fn id_token(&self) -> Option<&str> {
        self.str_field("id_token")
    }

    /// `scope`.
    pub fn scope(&self) -> Option<&str> {
        self.str_field("scope")
    }

    /// `expires_in`.
    pub fn expires_in(&self) -> Option<u64> {
        self.body.get("expires_in").and_then(Value::as_u64)
    }

    /// The OAuth `error` code.
    pub fn error(&self) -> Option<&str> {
        self.str_field("error")
    }

    /// The token as a result: `Err` names the status and error code only.
    pub fn expect_success(self, what: &str) -> Result<TokenReply> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::protocol(
                what,
                format!("HTTP {}, error {:?}", self.status, self.error()),
            ))
        }
    }
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Clone)]
pub struct DeviceAuthorization {
    /// `device_code` (secret).
    pub device_code: String,
    /// `user_code`.
    pub user_code: String,
    /// `verification_uri`.
    pub verification_uri: String,
    /// `verification_uri_complete`.
    pub verification_uri_complete: Option<String>,
    /// `expires_in`.
    pub expires_in: u64,
    /// `interval`, when the IdP sends one.
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &"[redacted]")
            .field("user_code", &"[redacted]")
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

/// Request counts of one endpoint, from `GET /test/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct EndpointStats {
    /// All requests.
    pub total: u64,
    /// Successful ones.
    pub ok: u64,
    /// By `grant_type` (token endpoint only).
    pub by_grant_type: BTreeMap<String, u64>,
    /// By client id.
    pub by_client: BTreeMap<String, u64>,
    /// Failed ones by OAuth error code.
    pub errors: BTreeMap<String, u64>,
}

impl EndpointStats {
    /// Requests with this grant type.
    pub fn grant(&self, grant_type: &str) -> u64 {
        self.by_grant_type.get(grant_type).copied().unwrap_or(0)
    }

    /// Requests from this client.
    pub fn client(&self, client_id: &str) -> u64 {
        self.by_client.get(client_id).copied().unwrap_or(0)
    }

    /// Failures with this error code.
    pub fn error(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

/// An endpoint whose next requests [`Idp::inject_failure`] makes fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/token`.
    Token,
    /// `/token/revocation`.
    Revocation,
    /// `/token/introspection`.
    Introspection,
    /// `/device/auth`.
    DeviceAuthorization,
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// `/me`.
    Userinfo,
}

/// An injected failure: the next `count` requests to `endpoint` get `status`.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// HTTP status to answer with.
    pub status: u16,
    /// How many requests fail; `None` means all until [`Idp::clear_failures`].
    pub count: Option<u32>,
    /// OAuth error code in the JSON body (default by status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `Retry-After` header, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Delay before answering, milliseconds.
    pub delay_ms: u64,
    /// Answer with an HTML page instead of JSON (a misbehaving proxy). Sent as the IdP's
    /// `body` key (`"html"` | `"json"`).
    #[serde(rename = "body", serialize_with = "ser_html")]
    pub html: bool,
}

fn ser_html<S: Serializer>(html: &bool, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(if *html { "html" } else { "json" })
}

impl Failure {
    /// `count` failures with `status` at `endpoint`, JSON body, no delay.
    pub fn new(endpoint: Endpoint, status: u16, count: u32) -> Self {
        Failure {
            endpoint,
            status,
            count: Some(count),
            error: None,
            retry_after: None,
            delay_ms: 0,
            html: false,
        }
    }
}

/// How the simulated user ends an interactive login.
#[derive(Clone, Copy)]
enum UserAction<'a> {
    Login(&'a str, &'a str),
    Deny,
}

/// Where a browser-less authorization-code login ended: the redirect to the client.
#[derive(Clone)]
pub struct Redirect {
    /// The URL the IdP redirected to (holds the code: never print it).
    pub url: String,
    /// Status of the client's answer to that redirect, when it was fetched.
    pub status: Option<u16>,
    /// Body of the client's answer, when it was fetched.
    pub body: Option<String>,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("url", &"[redacted]")
            .field("status", &self.status)
            .finish()
    }
}

impl Redirect {
    /// A query parameter of the redirect URL (`code`, `state`, `error`, `iss`).
    pub fn param(&self, name: &str) -> Option<String> {
        url::Url::parse(&self.url)
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A running test IdP. Killed (by pid) on drop.
pub struct Idp {
    child: Mutex<Child>,
    pid: u32,
    issuer: String,
    port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: SharedText,
    agent: ureq::Agent,
    marks: AtomicU64,
    // Paused or stopped: `events()` then skips its marker request, which would hang.
    frozen: AtomicBool,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("issuer", &self.issuer)
            .field("pid", &self.pid)
            .finish()
    }
}

/// The directory of the IdP script (`tests/idp`).
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

impl Idp {
    /// Starts the IdP with `cfg` and waits for its issuer line.
    pub fn start(cfg: IdpConfig) -> Result<Idp> {
        let script_dir = idp_dir();
        if !script_dir
            .join("node_modules")
            .join("oidc-provider")
            .is_dir()
        {
            return Err(Error::Setup(format!(
                "{} has no node_modules: run `npm ci --prefix tests/idp`",
                script_dir.display()
            )));
        }
        let agent_ca = match &cfg.tls {
            None => None,
            Some(tls) => {
                let ca = tls.ca_file.as_ref().unwrap_or(&tls.cert_file);
                Some(fs::read(ca).map_err(|e| Error::io(format!("reading {}", ca.display()), e))?)
            }
        };
        let agent = http::agent_with_timeout(&agent_ca, Duration::from_secs(30))?;
        let dir = tempfile::Builder::new()
            .prefix("tokctl-idp")
            .tempdir()
            .map_err(|e| Error::io("creating the IdP's temp dir", e))?;
        let cfg_path = dir.path().join("idp.json");
        let cfg_json = serde_json::to_vec_pretty(&cfg).expect("config serializes");
        fs::write(&cfg_path, cfg_json).map_err(|e| Error::io("writing the IdP config", e))?;

        let mut child = Command::new("node")
            .arg(script_dir.join("idp.mjs"))
            .arg(&cfg_path)
            .current_dir(&script_dir)
            .env("NODE_NO_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| crate::keychain::missing_tool(e, "node", "nodejs"))?;
        let pid = child.id();
        let stderr: SharedText = Arc::default();
        let stderr_done = proc::drain_to(child.stderr.take().expect("piped"), stderr.clone());
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let ev = events.clone();
        let first = proc::first_line_then(child.stdout.take().expect("piped"), move |line| {
            let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "raw": line }));
            ev.lock().unwrap_or_else(|e| e.into_inner()).push(v);
        });

        let fail = |child: &mut Child, why: String| {
            proc::kill_child(child);
            // Let the reader catch the last words (a config error) before reporting.
            let _ = stderr_done.recv_timeout(Duration::from_secs(2));
            Error::Exited {
                what: format!("the test IdP ({why})"),
                status: format!("{:?}", child.try_wait()),
                output: stderr.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }
        };
        let line = match first.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => return Err(fail(&mut child, "no issuer line".into())),
        };
        let hello: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => return Err(fail(&mut child, format!("bad issuer line: {e}"))),
        };
        let (Some(issuer), Some(port)) = (
            hello.get("issuer").and_then(Value::as_str),
            hello.get("port").and_then(Value::as_u64),
        ) else {
            return Err(fail(&mut child, "issuer line lacks issuer or port".into()));
        };
        Ok(Idp {
            child: Mutex::new(child),
            pid,
            issuer: issuer.to_string(),
            port: u16::try_from(port).unwrap_or_default(),
            events,
            stderr,
            agent,
            marks: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
            _dir: dir,
        })
    }

    /// Starts the IdP with the default configuration.
    pub fn start_default() -> Result<Idp> {
        Self::start(IdpConfig::default())
    }

    /// The issuer, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `issuer` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path)
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> String {
        self.url("/token")
    }

    /// Every event logged so far (one JSON object per IdP log line).
    ///
    /// Consistent with the requests made before the call: a marker event is logged and
    /// awaited first. A paused or stopped IdP gives what was read so far.
    pub fn events(&self) -> Vec<Value> {
        let id = self.marks.fetch_add(1, Ordering::Relaxed).to_string();
        let marked = !self.frozen.load(Ordering::Relaxed)
            && http::post_form(
                &self.agent,
                &self.url(&format!("/test/mark?id={id}")),
                &[],
                &[],
            )
            .is_ok_and(|r| r.status == 200);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.events.lock().unwrap_or_else(|e| e.into_inner());
            let seen = all
                .iter()
                .any(|e| e["event"] == "mark" && e["id"] == id.as_str());
            if seen || !marked || Instant::now() > end {
                return all
                    .iter()
                    .filter(|e| e["event"] != "mark")
                    .cloned()
                    .collect();
            }
            drop(all);
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Events whose `event` field is `kind` (`token`, `revocation`, `introspection`,
    /// `device_authorization`, `authorization`, `login`, `consent`, `grant_revoked`…).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e.get("event").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    /// Waits until an event matching `pred` has been logged.
    pub fn wait_for_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if Instant::now() > end {
                return Err(Error::Timeout {
                    what: format!("IdP event: {what}"),
                    after: timeout,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the IdP wrote to stderr (warnings; never secrets).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The raw `/test/stats` document.
    pub fn stats(&self) -> Result<Value> {
        let r = http::get(&self.agent, &self.url("/test/stats"), &[])?;
        expect_status(&r, 200, "GET /test/stats")?;
        r.json("GET /test/stats")
    }

    /// Counts for one endpoint (`token`, `revocation`, `introspection`,
    /// `device_authorization`, `authorization`, `userinfo`, `discovery`).
    pub fn endpoint_stats(&self, endpoint: &str) -> Result<EndpointStats> {
        let all = self.stats()?;
        let one = all
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::protocol("GET /test/stats", format!("no `{endpoint}`")))?;
        serde_json::from_value(one).map_err(|e| Error::protocol("GET /test/stats", e.to_string()))
    }

    /// Token endpoint request counts.
    pub fn token_requests(&self) -> Result<EndpointStats> {
        self.endpoint_stats("token")
    }

    /// The PKCE verifiers and ID tokens the token endpoint saw (canary mode only: the
    /// IdP must have been started with [`IdpConfig::token_prefix`]).
    pub fn captured(&self) -> Result<Captured> {
        let r = http::get(&self.agent, &self.url("/test/captured"), &[])?;
        expect_status(&r, 200, "GET /test/captured")?;
        let v = r.json("GET /test/captured")?;
        serde_json::from_value(v).map_err(|e| Error::protocol("GET /test/captured", e.to_string()))
    }

    /// Zeroes every counter.
    pub fn reset_stats(&self) -> Result<()> {
        let r = http::post_form(&self.agent, &self.url("/test/reset-stats"), &[], &[])?;
        expect_status(&r, 200, "POST /test/reset-stats")
    }

    /// Makes the next requests to an endpoint fail (see [`Failure`]).
    pub fn inject_failure(&self, f: &Failure) -> Result<()> {
        let body = serde_json::to_value(f).expect("failure serializes");
        let r = http::post_json(&self.agent, &self.url("/test/fail"), &body)?;
        expect_status(&r, 200, "POST /test/fail")
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) -> Result<()> {
        let r = http::post_form(&self.agent, &self.url("/test/clear-failures"), &[], &[])?;
        expect_status(&r, 200, "POST /test/clear-failures")
    }

    /// Introspects `token` as the `introspector` client (RFC 7662).
    pub fn introspect(&self, token: &str) -> Result<Value> {
        let auth = http::basic_auth(defaults::INTROSPECTOR, defaults::INTROSPECTOR_SECRET);
        let r = http::post_form(
            &self.agent,
            &self.url("/token/introspection"),
            &[("authorization", &auth)],
            &[("token", token)],
        )?;
        expect_status(&r, 200, "introspection")?;
        r.json("introspection")
    }

    /// Revokes `token` as the `introspector` client, which may revoke anything: the IdP
    /// side of "an admin revoked this session". Revoking a refresh token ends its grant.
    pub fn revoke(&self, token: &str, token_type_hint: Option<&str>) -> Result<()> {
        let auth = http::basic_auth(defaults::INTROSPECTOR, defaults::INTROSPECTOR_SECRET);
        let mut form = vec![("token", token)];
        if let Some(h) = token_type_hint {
            form.push(("token_type_hint", h));
        }
        let r = http::post_form(
            &self.agent,
            &self.url("/token/revocation"),
            &[("authorization", &auth)],
            &form,
        )?;
        expect_status(&r, 200, "revocation")
    }

    /// POSTs `params` to the token endpoint as `client`.
    pub fn token(&self, client: &TestClient, params: &[(&str, &str)]) -> Result<TokenReply> {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let mut headers = Vec::new();
        let auth;
        match &client.auth {
            ClientAuth::None => form.push(("client_id", &client.id)),
            ClientAuth::Post(secret) => {
                form.push(("client_id", &client.id));
                form.push(("client_secret", secret.expose_secret()));
            }
            ClientAuth::Basic(secret) => {
                auth = http::basic_auth(&client.id, secret.expose_secret());
                headers.push(("authorization", auth.as_str()));
            }
        }
        let r = http::post_form(&self.agent, &self.token_endpoint(), &headers, &form)?;
        let body = r.json("token endpoint")?;
        Ok(TokenReply {
            status: r.status,
            body,
        })
    }

    /// A client-credentials request.
    pub fn client_credentials(
        &self,
        client: &TestClient,
        scope: Option<&str>,
    ) -> Result<TokenReply> {
        let mut p = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            p.push(("scope", s));
        }
        self.token(client, &p)
    }

    /// A password-grant request.
    pub fn password_grant(
        &self,
        client: &TestClient,
        username: &str,
        password: &str,
        scope: Option<&str>,
    ) -> Result<TokenReply> {
        let mut p = vec![
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ];
        if let Some(s) = scope {
            p.push(("scope", s));
        }
        self.token(client, &p)
    }

    /// A refresh-token request.
    pub fn refresh(
        &self,
        client: &TestClient,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Result<TokenReply> {
        let mut p = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(s) = scope {
            p.push(("scope", s));
        }
        self.token(client, &p)
    }

    /// Starts a device authorization (RFC 8628 §3.1) as `client`.
    pub fn start_device_authorization(
        &self,
        client: &TestClient,
        scope: Option<&str>,
    ) -> Result<DeviceAuthorization> {
        let mut form = vec![("client_id", client.id.as_str())];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let auth;
        let mut headers = Vec::new();
        match &client.auth {
            ClientAuth::None => {}
            ClientAuth::Post(secret) => form.push(("client_secret", secret.expose_secret())),
            ClientAuth::Basic(secret) => {
                form.clear();
                if let Some(s) = scope {
                    form.push(("scope", s));
                }
                auth = http::basic_auth(&client.id, secret.expose_secret());
                headers.push(("authorization", auth.as_str()));
            }
        }
        let r = http::post_form(&self.agent, &self.url("/device/auth"), &headers, &form)?;
        expect_status(&r, 200, "device authorization")?;
        let v = r.json("device authorization")?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::protocol("device authorization", format!("no `{k}`")))
        };
        Ok(DeviceAuthorization {
            device_code: s("device_code")?,
            user_code: s("user_code")?,
            verification_uri: s("verification_uri")?,
            verification_uri_complete: s("verification_uri_complete").ok(),
            expires_in: v.get("expires_in").and_then(Value::as_u64).unwrap_or(0),
            interval: v.get("interval").and_then(Value::as_u64),
        })
    }

    /// One device-token poll.
    pub fn poll_device_token(&self, client: &TestClient, device_code: &str) -> Result<TokenReply> {
        self.token(
            client,
            &[("grant_type", DEVICE_GRANT), ("device_code", device_code)],
        )
    }

    /// Acts as the user in a browser: enters `user_code` at `/device`, confirms, logs in
    /// as `username`/`password` and consents, until "Sign-in Success".
    pub fn complete_device_login(
        &self,
        user_code: &str,
        username: &str,
        password: &str,
    ) -> Result<()> {
        self.device_flow(user_code, UserAction::Login(username, password))
    }

    /// Acts as the user, but cancels at the login page: the device code then ends with
    /// `access_denied`.
    pub fn deny_device_login(&self, user_code: &str) -> Result<()> {
        self.device_flow(user_code, UserAction::Deny)
    }

    /// Acts as the user who clicks "Abort" on the device confirmation page.
    pub fn abort_device_code(&self, user_code: &str) -> Result<()> {
        let mut b = Browser::new(&self.issuer, self.agent.clone());
        let device = self.url("/device");
        let page = b.get(&device)?;
        expect_status(&page, 200, "GET /device")?;
        let xsrf = http::input_value(&page.body, "xsrf")
            .ok_or_else(|| Error::protocol("GET /device", "no xsrf field"))?;
        let r = b.post(
            &device,
            &[("xsrf", &xsrf), ("user_code", user_code), ("abort", "yes")],
        )?;
        match http::page_error(&r.body).as_deref() {
            Some("aborted") => Ok(()),
            other => Err(Error::protocol(
                "device abort",
                format!("HTTP {}, page error {other:?}", r.status),
            )),
        }
    }

    fn device_flow(&self, user_code: &str, action: UserAction<'_>) -> Result<()> {
        let mut b = Browser::new(&self.issuer, self.agent.clone());
        let device = self.url("/device");
        let page = b.get(&device)?;
        expect_status(&page, 200, "GET /device")?;
        let xsrf = http::input_value(&page.body, "xsrf")
            .ok_or_else(|| Error::protocol("GET /device", "no xsrf field"))?;
        let r = b.post(
            &device,
            &[
                ("xsrf", &xsrf),
                ("user_code", user_code),
                ("confirm", "yes"),
            ],
        )?;
        match self.drive(&mut b, &device, r, action)? {
            Outcome::DeviceSuccess => Ok(()),
            Outcome::DeviceDenied if matches!(action, UserAction::Deny) => Ok(()),
            Outcome::DeviceDenied => {
                Err(Error::LoginRejected("the device login ended denied".into()))
            }
            Outcome::Redirect(_) => Err(Error::protocol(
                "device login",
                "redirected away from the IdP",
            )),
        }
    }

    /// Acts as the user for an authorization-code login: opens `authorization_url`, logs
    /// in, consents, and follows the redirect to the client's loopback listener (fetching
    /// it, as a browser would). Returns where it ended.
    pub fn complete_browser_login(
        &self,
        authorization_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Redirect> {
        self.browser_flow(authorization_url, UserAction::Login(username, password))
    }

    /// Like [`Idp::complete_browser_login`], but the user clicks "Cancel" on the login
    /// page: the client receives `error=access_denied`.
    pub fn deny_browser_login(&self, authorization_url: &str) -> Result<Redirect> {
        self.browser_flow(authorization_url, UserAction::Deny)
    }

    fn browser_flow(&self, authorization_url: &str, action: UserAction<'_>) -> Result<Redirect> {
        let mut b = Browser::new(&self.issuer, self.agent.clone());
        let r = b.get(authorization_url)?;
        match self.drive(&mut b, authorization_url, r, action)? {
            Outcome::Redirect(r) => Ok(r),
            _ => Err(Error::protocol(
                "browser login",
                "ended on an IdP page instead of redirecting to the client",
            )),
        }
    }

    /// Follows redirects and fills the IdP's pages until the flow leaves the IdP or ends.
    fn drive(
        &self,
        b: &mut Browser,
        start_url: &str,
        mut reply: Reply,
        action: UserAction<'_>,
    ) -> Result<Outcome> {
        let mut url = start_url.to_string();
        let mut submitted_login = false;
        for _ in 0..30 {
            if (300..400).contains(&reply.status) {
                let loc = reply
                    .location
                    .clone()
                    .ok_or_else(|| Error::protocol("login flow", "redirect without Location"))?;
                url = b.resolve(&url, &loc)?;
                if !url.starts_with(&format!("{}/", self.issuer)) {
                    // Left the IdP: this is the client's redirect URI. Fetch it like a
                    // browser would, but a dead listener is the caller's business.
                    let fetched = b.get(&url).ok();
                    return Ok(Outcome::Redirect(Redirect {
                        url,
                        status: fetched.as_ref().map(|r| r.status),
                        body: fetched.map(|r| r.body),
                    }));
                }
                reply = b.get(&url)?;
                continue;
            }
            let body = &reply.body;
            if reply.status == 200 && body.contains("id=\"login-form\"") {
                if submitted_login {
                    return Err(Error::LoginRejected(format!(
                        "the IdP showed the login form again ({:?})",
                        http::page_error(body)
                    )));
                }
                match action {
                    UserAction::Login(user, pass) => {
                        let target = form_action(b, &url, body, "id=\"login-form\"")?;
                        submitted_login = true;
                        reply = b.post(&target, &[("username", user), ("password", pass)])?;
                    }
                    UserAction::Deny => {
                        let target = form_action(b, &url, body, "id=\"abort-form\"")?;
                        reply = b.post(&target, &[])?;
                    }
                }
                continue;
            }
            if reply.status == 200 && body.contains("id=\"consent-form\"") {
                let target = form_action(b, &url, body, "id=\"consent-form\"")?;
                reply = b.post(&target, &[])?;
                continue;
            }
            if reply.status == 200 && http::page_title(body) == "Sign-in Success" {
                return Ok(Outcome::DeviceSuccess);
            }
            let err = http::page_error(body);
            // A cancelled device login comes back to the code entry page as "aborted".
            if matches!(err.as_deref(), Some("access_denied" | "aborted")) {
                return Ok(Outcome::DeviceDenied);
            }
            return Err(Error::protocol(
                "login flow",
                format!(
                    "stuck at HTTP {} page {:?} (error {:?})",
                    reply.status,
                    http::page_title(body),
                    err
                ),
            ));
        }
        Err(Error::protocol("login flow", "more than 30 steps"))
    }

    /// Freezes the IdP (SIGSTOP): connections are accepted by the kernel but never answered.
    pub fn pause(&self) -> Result<()> {
        self.frozen.store(true, Ordering::Relaxed);
        proc::signal(self.pid, Sig::Stop)
    }

    /// Lets a paused IdP run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        proc::signal(self.pid, Sig::Cont)?;
        self.frozen.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Kills the IdP (SIGKILL): connections are refused from now on. All its grants are
    /// lost (they live in memory).
    pub fn stop(&self) -> Result<()> {
        self.frozen.store(true, Ordering::Relaxed);
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        proc::kill_child(&mut c);
        Ok(())
    }

    /// True while the node process runs.
    pub fn is_running(&self) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(c.try_wait(), Ok(None))
    }
}

enum Outcome {
    DeviceSuccess,
    DeviceDenied,
    Redirect(Redirect),
}

fn form_action(b: &Browser, page_url: &str, body: &str, marker: &str) -> Result<String> {
    let action = http::attr_after(body, marker, "action")
        .ok_or_else(|| Error::protocol("login flow", format!("no form {marker}")))?;
    b.resolve(page_url, &action)
}

fn expect_status(r: &Reply, want: u16, what: &str) -> Result<()> {
    if r.status == want {
        return Ok(());
    }
    let code = serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
    Err(Error::protocol(
        what,
        format!("HTTP {} (expected {want}), error {code:?}", r.status),
    ))
}

impl Drop for Idp {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        proc::kill_child(&mut c);
    }
}
