//! Profiles at run time: cached access tokens, the refresh token in memory, single-flight
//! fetching, backoff, and the background scheduler that refreshes before expiry.

use crate::clock::{unix_secs, Deadline};
use crate::config::{ClientAuthKind, Config, Grant, Profile};
use crate::secrets::{store_error, Secrets};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokctl_oauth::{
    AuthMethod, ClientAuth, ErrorClass, HttpOptions, Metadata, OAuthClient, OAuthError,
    TokenParams, TokenSet,
};
use tokctl_proto::{
    ApiError, ErrorCode, ProfileState, ProfileStatus, StatusResponse, TokenQuery, TokenResponse,
};
use tokctl_store::SecretKind;
use tokio::sync::Notify;
use url::Url;
use zeroize::Zeroizing;

/// The scheduler wakes at least this often, so a suspend is noticed within a minute.
const MAX_TICK: Duration = Duration::from_secs(60);
/// Lifetime assumed when the IdP sends no `expires_in`.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);
/// Longest wait between retries after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Test-only crash points for the end-to-end crash-safety tests: when the environment
/// variable `TOKCTL_TEST_CRASH_AT` names `point` (`before_request`, `after_response`,
/// `after_store`), the daemon sends itself SIGKILL there, as a `kill -9` at that moment
/// would. Without the variable this does nothing; never set it outside tests.
fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("TOKCTL_TEST_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        tracing::warn!("TOKCTL_TEST_CRASH_AT={point}: killing myself (test-only)");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::Kill);
        std::process::abort();
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded data stays consistent because no
/// code panics while holding these locks with a half-updated state.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Identifies a token variant: the profile's own request, or a narrower one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VariantKey {
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
}

/// A cached access token.
pub struct Cached {
    access_token: SecretString,
    /// The `GET /v1/token` answer (JSON) for this token, serialized once when it is cached:
    /// serving a cached token is then a reference-count increment, not a serialization and
    /// five string copies per request. The buffer is wiped when its last holder drops it.
    answer: bytes::Bytes,
    /// `None` when the IdP gave no lifetime.
    expires_at: Option<SystemTime>,
    expires: Deadline,
    lifetime: Duration,
    refresh_at: Deadline,
}

impl Cached {
    fn new(
        ts: TokenSet,
        profile: &str,
        requested_scope: &[String],
        margin: Option<Duration>,
    ) -> Arc<Cached> {
        let lifetime = ts
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(UNKNOWN_LIFETIME);
        let expires = Deadline::after(lifetime);
        let margin = margin.unwrap_or_else(|| default_margin(lifetime));
        let scope = ts
            .scope
            .or_else(|| (!requested_scope.is_empty()).then(|| requested_scope.join(" ")));
        let expires_at = ts.expires_in.map(|_| expires.wall);
        let answer = answer_json(TokenResponse {
            access_token: ts.access_token.expose_secret().to_string(),
            token_type: ts.token_type,
            expires_at: expires_at.map(unix_secs),
            scope,
            profile: profile.to_string(),
        });
        Arc::new(Cached {
            access_token: ts.access_token,
            answer,
            expires_at,
            expires,
            lifetime,
            refresh_at: expires.earlier(margin.min(lifetime)),
        })
    }

    /// The `GET /v1/token` answer body for this token.
    pub fn answer(&self) -> bytes::Bytes {
        self.answer.clone()
    }

    /// True when the token stays valid for `min_ttl`, or, when the IdP issues tokens that
    /// live shorter than that, when it was issued just now.
    fn usable(&self, min_ttl: Duration) -> bool {
        let left = self.expires.remaining();
        if self.lifetime <= min_ttl {
            let age = self.lifetime.saturating_sub(left);
            return !left.is_zero() && age <= Duration::from_secs(2);
        }
        left >= min_ttl
    }
}

/// Serializes a token answer into a buffer that is wiped when the last `Bytes` referring
/// to it is dropped; `resp`'s copy of the token is wiped here too.
fn answer_json(mut resp: TokenResponse) -> bytes::Bytes {
    // Room for the worst case of JSON escaping, so the buffer never reallocates and leaves
    // an unwiped copy of the token behind in freed memory.
    let cap = 2 * (resp.access_token.len() + resp.token_type.len() + resp.profile.len())
        + 2 * resp.scope.as_ref().map_or(0, String::len)
        + 128;
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    // Serializing plain strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &resp);
    zeroize::Zeroize::zeroize(&mut resp.access_token);
    bytes::Bytes::from_owner(buf)
}

/// The default refresh margin: the larger of 60 s and 10 % of the lifetime, never more
/// than half the lifetime (short-lived tokens would otherwise refresh in a loop), with up
/// to 10 % of jitter so many profiles do not refresh in lockstep.
fn default_margin(lifetime: Duration) -> Duration {
    let base = Duration::from_secs(60).max(lifetime / 10).min(lifetime / 2);
    let jitter = rand::thread_rng().gen_range(0.0..0.1);
    base + base.mul_f64(jitter)
}

/// The backoff after `failures` transient failures in a row: exponential with jitter,
/// capped, and never shorter than what the IdP asked for.
fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1)).min(MAX_BACKOFF);
    let jittered = exp.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
    jittered
        .max(retry_after.unwrap_or(Duration::ZERO))
        .min(Duration::from_secs(3600))
}

#[derive(Default)]
struct Slot {
    token: Option<Arc<Cached>>,
    /// Bumped by every completed fetch, so waiters can tell a fetch finished while they waited.
    generation: u64,
    last_error: Option<ApiError>,
    refreshing: bool,
    /// Served since the last fetch; down-scoped variants are only refreshed ahead when used.
    served: bool,
}

struct Variant {
    key: VariantKey,
    slot: Mutex<Slot>,
    flight: tokio::sync::Mutex<()>,
}

impl Variant {
    fn new(key: VariantKey) -> Arc<Variant> {
        Arc::new(Variant {
            key,
            slot: Mutex::new(Slot::default()),
            flight: tokio::sync::Mutex::new(()),
        })
    }

    /// The cached token if it stays usable for `min_ttl` (marked as served when a caller
    /// gets it); otherwise the slot's generation, to tell later whether a fetch completed.
    fn cached(&self, min_ttl: Duration, caller: bool) -> Result<Arc<Cached>, u64> {
        let mut s = lock(&self.slot);
        match s.token.as_ref().filter(|t| t.usable(min_ttl)).cloned() {
            Some(t) => {
                s.served |= caller;
                Ok(t)
            }
            None => Err(s.generation),
        }
    }
}

/// Whether a lasting credential (refresh token or client secret) is known to exist.
#[derive(Default)]
struct Cred {
    /// The refresh token, once read from (or written to) the store.
    refresh_token: Option<SecretString>,
    /// A rotated refresh token the store has not accepted yet.
    unsaved: bool,
    /// Client secret: outer `None` = not looked up yet.
    client_secret: Option<Option<SecretString>>,
    /// Whether the store holds the profile's lasting credential: `None` = unknown.
    present: Option<bool>,
}

#[derive(Default)]
struct Health {
    login_required: bool,
    backoff_until: Option<SystemTime>,
    failures: u32,
    last_error: Option<String>,
}

/// Gives each [`Engine`] its own id.
static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(0);

/// How many query strings a serving thread remembers; clients send very few distinct ones.
const RESOLVED_MAX: usize = 16;

thread_local! {
    /// This serving thread's remembered query strings (see [`Engine::token_for_query`]).
    static RESOLVED: std::cell::RefCell<Vec<Resolved>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The profile, variant and `min_ttl` a `GET /v1/token` query string names.
type Named = (Arc<ProfileRt>, Arc<Variant>, Duration);

/// What a `GET /v1/token` query string named when it was last parsed.
struct Resolved {
    query: Box<str>,
    engine: u64,
    epoch: u64,
    profile_epoch: u64,
    profile: Arc<ProfileRt>,
    variant: Arc<Variant>,
    min_ttl: Duration,
}

impl Resolved {
    /// True while neither `engine`'s config nor the profile's variants have changed.
    fn valid(&self, engine: &Engine) -> bool {
        self.engine == engine.id
            && self.epoch == engine.epoch.load(Ordering::Acquire)
            && self.profile_epoch == self.profile.epoch.load(Ordering::Acquire)
    }
}

/// One configured profile at run time.
pub struct ProfileRt {
    /// The profile's config.
    pub cfg: Profile,
    http: Mutex<Option<OAuthClient>>,
    meta: tokio::sync::Mutex<Option<Arc<Metadata>>>,
    /// Serializes every use of the refresh token, so a rotation is never raced.
    pub rt_lock: tokio::sync::Mutex<()>,
    /// One interactive login per profile at a time.
    pub login_lock: tokio::sync::Mutex<()>,
    cred: Mutex<Cred>,
    health: Mutex<Health>,
    variants: Mutex<HashMap<VariantKey, Arc<Variant>>>,
    /// Bumped after `variants` is emptied, so a remembered [`Resolved`] variant is dropped.
    epoch: AtomicU64,
}

impl ProfileRt {
    fn new(cfg: Profile) -> Arc<ProfileRt> {
        Arc::new(ProfileRt {
            cfg,
            http: Mutex::new(None),
            meta: tokio::sync::Mutex::new(None),
            rt_lock: tokio::sync::Mutex::new(()),
            login_lock: tokio::sync::Mutex::new(()),
            cred: Mutex::new(Cred::default()),
            health: Mutex::new(Health::default()),
            variants: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        })
    }

    /// Empties the variant map (and so every cached token of the profile).
    fn clear_variants(&self) {
        lock(&self.variants).clear();
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn err(&self, code: ErrorCode, msg: impl std::fmt::Display) -> ApiError {
        ApiError::new(code, format!("profile {}: {msg}", self.cfg.name))
    }

    /// The HTTP client for this IdP (built once; `ca_file` problems are config errors).
    pub fn http(&self) -> Result<OAuthClient, ApiError> {
        let mut g = lock(&self.http);
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        // Profiles without a `ca_file` share one client: each client parses the system trust
        // store (about 150 KiB of memory here), so memory grew with every profile that held a
        // token (issue #8, idle RSS). Sharing also reuses connections to the same IdP. The
        // proxy settings it reads from the environment are the same for every profile.
        static SHARED: Mutex<Option<OAuthClient>> = Mutex::new(None);
        let mut shared = self.cfg.ca_file.is_none().then(|| lock(&SHARED));
        if let Some(Some(c)) = shared.as_deref() {
            *g = Some(c.clone());
            return Ok(c.clone());
        }
        let opts = HttpOptions {
            ca_file: self.cfg.ca_file.clone(),
            ..HttpOptions::default()
        };
        let c = OAuthClient::new(&opts).map_err(|e| self.oauth_err(&e))?;
        if let Some(shared) = shared.as_deref_mut() {
            *shared = Some(c.clone());
        }
        *g = Some(c.clone());
        Ok(c)
    }

    /// Maps an IdP error to the API's error classes.
    pub fn oauth_err(&self, e: &OAuthError) -> ApiError {
        let (code, hint) = match e.class() {
            ErrorClass::LoginRequired => (
                ErrorCode::LoginRequired,
                format!("; run `tokctl login {}`", self.cfg.name),
            ),
            // A rejected certificate is about trust, not the client: name the issuer whose
            // ca_file is missing or wrong (the message already says to set ca_file).
            ErrorClass::Config if matches!(e, OAuthError::Tls(_)) => (
                ErrorCode::Config,
                format!(" (issuer {}); nothing was sent to it", self.cfg.issuer),
            ),
            ErrorClass::Config => (
                ErrorCode::Config,
                String::from("; check the profile's settings and client registration"),
            ),
            ErrorClass::Denied => (ErrorCode::Denied, String::new()),
            // `Pending` only occurs while polling a device login, which handles it itself.
            ErrorClass::Transient | ErrorClass::Pending => {
                (ErrorCode::IdpUnavailable, String::new())
            }
        };
        self.err(code, format!("{e}{hint}"))
    }

    /// The IdP's endpoints: discovery (cached), overridden by explicit config endpoints.
    pub async fn endpoints(&self) -> Result<Arc<Metadata>, ApiError> {
        let mut g = self.meta.lock().await;
        if let Some(m) = &*g {
            return Ok(m.clone());
        }
        let ep = &self.cfg.endpoints;
        let mut meta = if let Some(token) = &ep.token {
            // Explicit endpoints: no discovery needed.
            Metadata {
                issuer: self.cfg.issuer.clone(),
                token_endpoint: token.clone(),
                authorization_endpoint: None,
                device_authorization_endpoint: None,
                revocation_endpoint: None,
                introspection_endpoint: None,
                jwks_uri: None,
                code_challenge_methods_supported: Vec::new(),
                authorization_response_iss_parameter_supported: false,
                grant_types_supported: Vec::new(),
            }
        } else {
            self.http()?
                .discover(&self.cfg.issuer)
                .await
                .map_err(|e| self.oauth_err(&e))?
        };
        if let Some(u) = &ep.device_authorization {
            meta.device_authorization_endpoint = Some(u.clone());
        }
        if let Some(u) = &ep.authorization {
            meta.authorization_endpoint = Some(u.clone());
        }
        if let Some(u) = &ep.revocation {
            meta.revocation_endpoint = Some(u.clone());
        }
        if let Some(u) = &ep.jwks {
            meta.jwks_uri = Some(u.clone());
        }
        let m = Arc::new(meta);
        *g = Some(m.clone());
        Ok(m)
    }

    /// The client secret, if one is stored (read once, then kept in memory).
    pub async fn client_secret(&self, secrets: &Secrets) -> Result<Option<SecretString>, ApiError> {
        if self.cfg.client_auth == ClientAuthKind::None {
            return Ok(None);
        }
        if let Some(s) = lock(&self.cred).client_secret.clone() {
            return Ok(s);
        }
        let s = secrets
            .get(&self.cfg.name, SecretKind::ClientSecret)
            .await
            .map_err(|e| store_error(&e))?;
        let mut c = lock(&self.cred);
        c.client_secret = Some(s.clone());
        if !self.cfg.grant.uses_refresh_token() {
            c.present = Some(s.is_some());
        }
        Ok(s)
    }

    /// How this client authenticates: with the stored secret if there is one.
    pub async fn client_auth(&self, secrets: &Secrets) -> Result<ClientAuth, ApiError> {
        let method = match self.client_secret(secrets).await? {
            None => AuthMethod::None,
            Some(s) => match self.cfg.client_auth {
                ClientAuthKind::ClientSecretPost => AuthMethod::Post(s),
                _ => AuthMethod::Basic(s),
            },
        };
        Ok(ClientAuth {
            client_id: self.cfg.client_id.clone(),
            method,
        })
    }

    /// The refresh token, from memory or the store. `Ok(None)` means the store truly has
    /// none; a store failure is an error, never "logged out".
    async fn refresh_token(&self, secrets: &Secrets) -> Result<Option<SecretString>, ApiError> {
        if let Some(rt) = lock(&self.cred).refresh_token.clone() {
            return Ok(Some(rt));
        }
        let rt = secrets
            .get(&self.cfg.name, SecretKind::RefreshToken)
            .await
            .map_err(|e| store_error(&e))?;
        let mut c = lock(&self.cred);
        c.present = Some(rt.is_some());
        c.refresh_token = rt.clone();
        Ok(rt)
    }

    /// True when a refresh token is stored and the IdP has not rejected it.
    pub async fn logged_in(&self, secrets: &Secrets) -> Result<bool, ApiError> {
        if lock(&self.health).login_required {
            return Ok(false);
        }
        Ok(self.refresh_token(secrets).await?.is_some())
    }

    /// Saves a new refresh token: store first, memory always. A failed write keeps the
    /// token in memory (marked unsaved) so the scheduler retries and nothing is lost.
    pub async fn save_refresh_token(
        &self,
        secrets: &Secrets,
        rt: SecretString,
    ) -> Result<(), ApiError> {
        {
            let mut c = lock(&self.cred);
            c.refresh_token = Some(rt.clone());
            c.unsaved = true;
            c.present = Some(true);
        }
        match secrets
            .set(&self.cfg.name, SecretKind::RefreshToken, &rt)
            .await
        {
            Ok(()) => {
                let mut c = lock(&self.cred);
                // Only clear the flag if no newer token replaced ours meanwhile.
                if c.refresh_token
                    .as_ref()
                    .map(|t| t.expose_secret() == rt.expose_secret())
                    == Some(true)
                {
                    c.unsaved = false;
                }
                Ok(())
            }
            Err(e) => {
                let msg =
                    format!("could not save the new refresh token (kept in memory, retrying): {e}");
                tracing::error!(profile = %self.cfg.name, "{msg}");
                lock(&self.health).last_error = Some(msg.clone());
                Err(self.err(ErrorCode::Other, msg))
            }
        }
    }

    /// Retries saving an unsaved rotated refresh token.
    async fn flush_unsaved(&self, secrets: &Secrets) {
        let pending = {
            let c = lock(&self.cred);
            if c.unsaved {
                c.refresh_token.clone()
            } else {
                None
            }
        };
        if let Some(rt) = pending {
            if self.save_refresh_token(secrets, rt).await.is_ok() {
                tracing::info!(profile = %self.cfg.name, "saved the rotated refresh token after an earlier failure");
                lock(&self.health).last_error = None;
            }
        }
    }

    /// True when an unsaved rotated refresh token waits for the store.
    fn has_unsaved(&self) -> bool {
        lock(&self.cred).unsaved
    }

    /// Forgets everything cached in memory (tokens, credentials, errors).
    pub fn forget(&self) {
        *lock(&self.cred) = Cred::default();
        *lock(&self.health) = Health::default();
        self.clear_variants();
    }

    /// Marks that a fresh login or secret was stored.
    pub fn credentials_changed(
        &self,
        refresh_token: Option<SecretString>,
        client_secret: Option<SecretString>,
    ) {
        // A new client secret alone does not revive a refresh token the IdP rejected with
        // `invalid_grant`: the profile stays `login_required`, so `tokctl login` logs in
        // instead of answering "already logged in".
        let keep_login_required = refresh_token.is_none()
            && client_secret.is_some()
            && self.cfg.grant.uses_refresh_token()
            && lock(&self.health).login_required;
        {
            let mut c = lock(&self.cred);
            if refresh_token.is_some() {
                c.refresh_token = refresh_token;
                c.unsaved = false;
            }
            if client_secret.is_some() {
                c.client_secret = Some(client_secret);
            }
            c.present = Some(true);
        }
        let mut h = lock(&self.health);
        let last_error = h.last_error.take().filter(|_| keep_login_required);
        *h = Health {
            login_required: keep_login_required,
            last_error,
            ..Health::default()
        };
        drop(h);
        self.clear_variants();
    }

    /// Caches a token for the profile's own variant (after a login).
    pub fn cache_base_token(&self, ts: TokenSet) {
        let v = self.variant(VariantKey::default());
        let mut s = lock(&v.slot);
        s.token = Some(Cached::new(
            ts,
            &self.cfg.name,
            &self.cfg.scopes,
            self.cfg.refresh_margin,
        ));
        s.generation += 1;
        s.last_error = None;
    }

    fn variant(&self, key: VariantKey) -> Arc<Variant> {
        let mut variants = lock(&self.variants);
        // Looked up before inserting: a hit, nearly every request, copies no key.
        if let Some(v) = variants.get(&key) {
            return v.clone();
        }
        let v = Variant::new(key.clone());
        variants.insert(key, v.clone());
        v
    }

    /// The token parameters of a variant.
    pub fn params(&self, key: &VariantKey) -> TokenParams {
        if *key == VariantKey::default() {
            TokenParams {
                scopes: self.cfg.scopes.clone(),
                audience: self.cfg.audience.clone(),
                resources: self.cfg.resources.clone(),
            }
        } else {
            TokenParams {
                scopes: if key.scopes.is_empty() {
                    self.cfg.scopes.clone()
                } else {
                    key.scopes.clone()
                },
                audience: key.audience.clone().or_else(|| self.cfg.audience.clone()),
                resources: if key.resources.is_empty() {
                    self.cfg.resources.clone()
                } else {
                    key.resources.clone()
                },
            }
        }
    }

    /// Checks a down-scoping request against the profile's grant and names its variant.
    fn variant_key(&self, q: &TokenQuery) -> Result<VariantKey, ApiError> {
        if !q.is_down_scoped() {
            // The profile's own token, what a plain `tokctl get` asks for: nothing to check,
            // and no per-request copies of the profile's scopes to compare with.
            return Ok(VariantKey::default());
        }
        let wider = |what: &str, v: &str, have: &[String]| {
            self.err(
                ErrorCode::Usage,
                format!(
                    "{what} `{}` is wider than this profile's grant ({}); a down-scoped token can only narrow it",
                    tokctl_proto::printable(v, 80),
                    if have.is_empty() { "none".to_string() } else { have.join(" ") }
                ),
            )
        };
        let mut scopes = q.scopes.clone();
        scopes.sort();
        scopes.dedup();
        if !self.cfg.scopes.is_empty() {
            if let Some(s) = scopes.iter().find(|s| !self.cfg.scopes.contains(s)) {
                return Err(wider("scope", s, &self.cfg.scopes));
            }
        }
        let mut resources = q.resources.clone();
        resources.sort();
        resources.dedup();
        for r in &resources {
            let ok = Url::parse(r)
                .map(|u| u.fragment().is_none())
                .unwrap_or(false);
            if !ok {
                return Err(self.err(
                    ErrorCode::Usage,
                    format!(
                        "resource `{}` must be an absolute URI without a fragment",
                        tokctl_proto::printable(r, 80)
                    ),
                ));
            }
            if !self.cfg.resources.is_empty() && !self.cfg.resources.contains(r) {
                return Err(wider("resource", r, &self.cfg.resources));
            }
        }
        if let (Some(have), Some(want)) = (&self.cfg.audience, &q.audience) {
            if have != want {
                return Err(wider("audience", want, std::slice::from_ref(have)));
            }
        }
        let mut own_scopes = self.cfg.scopes.clone();
        own_scopes.sort();
        own_scopes.dedup();
        let mut own_res = self.cfg.resources.clone();
        own_res.sort();
        own_res.dedup();
        let same = (scopes.is_empty() || scopes == own_scopes)
            && (resources.is_empty() || resources == own_res)
            && (q.audience.is_none() || q.audience == self.cfg.audience);
        if same {
            return Ok(VariantKey::default());
        }
        Ok(VariantKey {
            scopes,
            audience: q.audience.clone(),
            resources,
        })
    }

    fn status(&self) -> ProfileStatus {
        let base = lock(&self.variants).get(&VariantKey::default()).cloned();
        let (expires_at, refresh_at, refreshing, has_token) = match &base {
            Some(v) => {
                let s = lock(&v.slot);
                let live = s.token.as_ref().filter(|t| !t.expires.passed());
                (
                    live.and_then(|t| t.expires_at).map(unix_secs),
                    live.map(|t| unix_secs(t.refresh_at.wall)),
                    s.refreshing,
                    live.is_some(),
                )
            }
            None => (None, None, false, false),
        };
        let variants = lock(&self.variants)
            .len()
            .saturating_sub(usize::from(base.is_some()));
        let h = lock(&self.health);
        let present = lock(&self.cred).present;
        let in_backoff = h.backoff_until.is_some_and(|t| t > SystemTime::now());
        let state = if h.login_required {
            ProfileState::LoginRequired
        } else if refreshing {
            ProfileState::Refreshing
        } else if in_backoff {
            ProfileState::Backoff
        } else if has_token || present == Some(true) {
            ProfileState::Valid
        } else {
            ProfileState::LoggedOut
        };
        ProfileStatus {
            name: self.cfg.name.clone(),
            grant: self.cfg.grant.as_str().to_string(),
            issuer: self.cfg.issuer.clone(),
            state,
            expires_at,
            refresh_at,
            scopes: self.cfg.scopes.clone(),
            last_error: h.last_error.clone(),
            variants,
        }
    }
}

/// The daemon's token engine.
pub struct Engine {
    config: RwLock<Arc<Config>>,
    profiles: Mutex<HashMap<String, Arc<ProfileRt>>>,
    /// The secret store.
    pub secrets: Secrets,
    wake: Notify,
    started: Instant,
    /// Tells this engine's [`Resolved`] entries from another's (tests run several).
    id: u64,
    /// Bumped after every config swap, so remembered profiles and defaults are dropped.
    epoch: AtomicU64,
}

impl Engine {
    /// An engine for `config`; nothing is fetched until asked.
    pub fn new(config: Config, secrets: Secrets) -> Arc<Engine> {
        let profiles = config
            .profiles
            .values()
            .map(|p| (p.name.clone(), ProfileRt::new(p.clone())))
            .collect();
        Arc::new(Engine {
            config: RwLock::new(Arc::new(config)),
            profiles: Mutex::new(profiles),
            secrets,
            wake: Notify::new(),
            started: Instant::now(),
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
        })
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new config: unchanged profiles keep their tokens, changed ones start
    /// afresh (their stored secrets stay), removed ones are dropped from memory.
    pub fn replace_config(&self, new: Config) {
        let mut profiles = lock(&self.profiles);
        let mut next = HashMap::new();
        for (name, p) in &new.profiles {
            match profiles.remove(name) {
                Some(old) if old.cfg == *p => {
                    next.insert(name.clone(), old);
                }
                _ => {
                    next.insert(name.clone(), ProfileRt::new(p.clone()));
                }
            }
        }
        *profiles = next;
        drop(profiles);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.epoch.fetch_add(1, Ordering::Release);
        self.wake.notify_one();
    }

    /// The run-time state of a profile (or the default profile).
    pub fn profile(&self, name: Option<&str>) -> Result<Arc<ProfileRt>, ApiError> {
        let cfg = self.config();
        let p = cfg
            .profile(name)
            .map_err(|m| ApiError::new(ErrorCode::Config, m))?;
        lock(&self.profiles).get(&p.name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Config,
                format!("profile {} is being reloaded; try again", p.name),
            )
        })
    }

    /// The answer to a `GET /v1/token` query string this thread has resolved before, when
    /// its token is usable: no parsing, no map lookup, nothing to await.
    pub fn cached_answer(&self, raw: &str) -> Option<bytes::Bytes> {
        self.remembered(raw)?.ok()
    }

    /// What this thread remembers of `raw`: the answer when its token is usable, else
    /// the profile, variant and `min_ttl` it names; `None` when not remembered (or stale).
    fn remembered(&self, raw: &str) -> Option<Result<bytes::Bytes, Named>> {
        RESOLVED.with(|r| {
            let r = r.borrow();
            let e = r.iter().find(|e| &*e.query == raw && e.valid(self))?;
            Some(match e.variant.cached(e.min_ttl, true) {
                Ok(t) => Ok(t.answer()),
                Err(_) => Err((e.profile.clone(), e.variant.clone(), e.min_ttl)),
            })
        })
    }

    /// `GET /v1/token` by its raw query string: the JSON answer for a cached token with at
    /// least `min_ttl` left, or for a fresh one. What a query string names (profile,
    /// variant, `min_ttl`) is remembered per serving thread until the config or the
    /// profile's variants change, so a repeated query skips the parsing and the map
    /// lookups; with a usable cached token the answer needs no await.
    pub async fn token_for_query(self: &Arc<Self>, raw: &str) -> Result<bytes::Bytes, ApiError> {
        let (prof, v, min_ttl) = match self.remembered(raw) {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(found)) => found,
            None => {
                // Read before resolving: a change made meanwhile makes the entry stale.
                let epoch = self.epoch.load(Ordering::Acquire);
                let q = TokenQuery::from_query_string(raw)?;
                let prof = self.profile(q.profile.as_deref())?;
                let profile_epoch = prof.epoch.load(Ordering::Acquire);
                let v = prof.variant(prof.variant_key(&q)?);
                let min_ttl = Duration::from_secs(q.min_ttl_secs);
                RESOLVED.with(|r| {
                    let mut r = r.borrow_mut();
                    r.retain(|e| e.engine != self.id || e.valid(self));
                    if r.len() >= RESOLVED_MAX {
                        r.remove(0);
                    }
                    r.push(Resolved {
                        query: raw.into(),
                        engine: self.id,
                        epoch,
                        profile_epoch,
                        profile: prof.clone(),
                        variant: v.clone(),
                        min_ttl,
                    });
                });
                (prof, v, min_ttl)
            }
        };
        Ok(self.ensure(&prof, &v, min_ttl, true).await?.answer())
    }

    /// Single flight: returns a usable token, fetching at most once per wave of callers.
    async fn ensure(
        self: &Arc<Self>,
        prof: &Arc<ProfileRt>,
        v: &Arc<Variant>,
        min_ttl: Duration,
        caller: bool,
    ) -> Result<Arc<Cached>, ApiError> {
        let gen0 = match v.cached(min_ttl, caller) {
            Ok(t) => return Ok(t),
            Err(generation) => generation,
        };
        let _flight = v.flight.lock().await;
        {
            let mut s = lock(&v.slot);
            if let Some(t) = s.token.as_ref().filter(|t| t.usable(min_ttl)).cloned() {
                s.served |= caller;
                return Ok(t);
            }
            if s.generation != gen0 {
                // A fetch completed while we waited and did not give a usable token: share
                // its outcome instead of asking the IdP again.
                if let Some(e) = &s.last_error {
                    return Err(e.clone());
                }
            }
        }
        {
            let h = lock(&prof.health);
            if h.login_required {
                let msg = h
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "login required".into());
                return Err(ApiError::new(ErrorCode::LoginRequired, msg));
            }
            if let Some(until) = h.backoff_until.filter(|t| *t > SystemTime::now()) {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                return Err(prof.err(
                    ErrorCode::IdpUnavailable,
                    format!(
                        "identity provider unavailable, next try in {}s: {}",
                        wait.as_secs().max(1),
                        h.last_error.as_deref().unwrap_or("unknown error")
                    ),
                ));
            }
        }
        lock(&v.slot).refreshing = true;
        let res = self.fetch(prof, &v.key).await;
        let mut s = lock(&v.slot);
        s.refreshing = false;
        s.generation += 1;
        match res {
            Ok(ts) => {
                let c = Cached::new(
                    ts,
                    &prof.cfg.name,
                    &prof.params(&v.key).scopes,
                    prof.cfg.refresh_margin,
                );
                s.token = Some(c.clone());
                s.last_error = None;
                s.served = caller;
                drop(s);
                self.wake.notify_one();
                Ok(c)
            }
            Err(e) => {
                s.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// One request to the token endpoint for a variant, with health bookkeeping.
    async fn fetch(&self, prof: &Arc<ProfileRt>, key: &VariantKey) -> Result<TokenSet, ApiError> {
        let res = self.fetch_inner(prof, key).await;
        // Only a credential that existed and was rejected is news for the desktop.
        let had_credential = res.is_err() && lock(&prof.cred).present == Some(true);
        let mut h = lock(&prof.health);
        match &res {
            Ok(_) => {
                h.failures = 0;
                h.backoff_until = None;
                if !prof.has_unsaved() {
                    h.last_error = None;
                }
            }
            Err((e, retry_after)) => {
                h.last_error = Some(e.message.clone());
                match e.error {
                    ErrorCode::IdpUnavailable => {
                        h.failures += 1;
                        let d = backoff(h.failures, *retry_after);
                        h.backoff_until = Some(SystemTime::now() + d);
                        tracing::warn!(profile = %prof.cfg.name, retry_in_ms = d.as_millis() as u64, "{}", e.message);
                    }
                    ErrorCode::LoginRequired => {
                        let newly = !h.login_required;
                        h.login_required = true;
                        tracing::warn!(profile = %prof.cfg.name, "{}", e.message);
                        if newly && had_credential {
                            crate::notify::login_required(&prof.cfg.name);
                        }
                    }
                    _ => tracing::warn!(profile = %prof.cfg.name, "{}", e.message),
                }
            }
        }
        res.map_err(|(e, _)| e)
    }

    async fn fetch_inner(
        &self,
        prof: &Arc<ProfileRt>,
        key: &VariantKey,
    ) -> Result<TokenSet, (ApiError, Option<Duration>)> {
        let plain = |e: ApiError| (e, None);
        let meta = prof.endpoints().await.map_err(plain)?;
        let http = prof.http().map_err(plain)?;
        let auth = prof.client_auth(&self.secrets).await.map_err(plain)?;
        let params = prof.params(key);
        let oauth = |e: OAuthError| {
            let ra = match &e {
                OAuthError::Transient { retry_after, .. } => *retry_after,
                _ => None,
            };
            (prof.oauth_err(&e), ra)
        };
        if prof.cfg.grant == Grant::ClientCredentials {
            if matches!(auth.method, AuthMethod::None) {
                return Err(plain(prof.err(
                    ErrorCode::LoginRequired,
                    format!(
                        "no client secret stored; run `tokctl secret set {}`",
                        prof.cfg.name
                    ),
                )));
            }
            tracing::debug!(profile = %prof.cfg.name, "client credentials request");
            return http
                .client_credentials(&meta.token_endpoint, &auth, &params)
                .await
                .map_err(oauth);
        }
        let _rt_guard = prof.rt_lock.lock().await;
        let Some(rt) = prof.refresh_token(&self.secrets).await.map_err(plain)? else {
            return Err(plain(prof.err(
                ErrorCode::LoginRequired,
                format!("not logged in; run `tokctl login {}`", prof.cfg.name),
            )));
        };
        tracing::debug!(profile = %prof.cfg.name, "refresh request");
        crash_point("before_request");
        let mut ts = http
            .refresh(&meta.token_endpoint, &auth, &rt, &params)
            .await
            .map_err(oauth)?;
        crash_point("after_response");
        if let Some(new_rt) = ts.refresh_token.take() {
            // Rotation: the new refresh token is saved before the access token is served.
            if new_rt.expose_secret() != rt.expose_secret() {
                let _ = prof.save_refresh_token(&self.secrets, new_rt).await;
            }
        }
        crash_point("after_store");
        Ok(ts)
    }

    /// `POST /v1/secret`: stores a client secret and starts using it.
    pub async fn set_secret(&self, profile: &str, secret: SecretString) -> Result<(), ApiError> {
        let prof = self.profile(Some(profile))?;
        self.secrets
            .set(&prof.cfg.name, SecretKind::ClientSecret, &secret)
            .await
            .map_err(|e| store_error(&e))?;
        prof.credentials_changed(None, Some(secret));
        Ok(())
    }

    /// `POST /v1/invalidate`: drops cached access tokens (all of the profile's, or only
    /// one equal to `token`). Refresh tokens are never touched.
    pub fn invalidate(
        &self,
        profile: Option<&str>,
        token: Option<&str>,
    ) -> Result<usize, ApiError> {
        let prof = self.profile(profile)?;
        let mut dropped = 0;
        for v in lock(&prof.variants).values() {
            let mut s = lock(&v.slot);
            let hit = match (&s.token, token) {
                (Some(_), None) => true,
                (Some(t), Some(want)) => t.access_token.expose_secret() == want,
                (None, _) => false,
            };
            if hit {
                s.token = None;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> StatusResponse {
        let cfg = self.config();
        let mut profs: Vec<Arc<ProfileRt>> = lock(&self.profiles).values().cloned().collect();
        profs.sort_by(|a, b| a.cfg.name.cmp(&b.cfg.name));
        for p in &profs {
            // Learn once whether a lasting credential exists, so status can tell logged_out
            // from valid; a store failure leaves it unknown.
            if lock(&p.cred).present.is_none() {
                let kind = if p.cfg.grant.uses_refresh_token() {
                    SecretKind::RefreshToken
                } else {
                    SecretKind::ClientSecret
                };
                if let Ok(v) = self.secrets.get(&p.cfg.name, kind).await {
                    lock(&p.cred).present = Some(v.is_some());
                }
            }
        }
        StatusResponse {
            version: tokctl_proto::VERSION.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: self.secrets.describe().await,
            config: cfg.path.display().to_string(),
            profiles: profs.iter().map(|p| p.status()).collect(),
        }
    }

    /// The background scheduler: refreshes tokens ahead of expiry, retries after backoff
    /// and unsaved rotations; sleeps at most [`MAX_TICK`] so wall-clock jumps are seen.
    pub async fn run_scheduler(self: Arc<Self>) {
        loop {
            let mut next = MAX_TICK;
            let profs: Vec<Arc<ProfileRt>> = lock(&self.profiles).values().cloned().collect();
            for prof in profs {
                if prof.has_unsaved() {
                    let (e, p) = (self.clone(), prof.clone());
                    tokio::spawn(async move { p.flush_unsaved(&e.secrets).await });
                    next = next.min(Duration::from_secs(5));
                }
                let (login_required, backoff_left) = {
                    let h = lock(&prof.health);
                    let left = h
                        .backoff_until
                        .and_then(|t| t.duration_since(SystemTime::now()).ok());
                    (h.login_required, left)
                };
                if login_required {
                    continue;
                }
                let variants: Vec<Arc<Variant>> = lock(&prof.variants).values().cloned().collect();
                for v in variants {
                    let due = {
                        let s = lock(&v.slot);
                        let wanted = v.key == VariantKey::default() || s.served;
                        match (&s.token, s.refreshing, wanted) {
                            (Some(t), false, true)
                                if !t.expires.passed() || v.key == VariantKey::default() =>
                            {
                                Some(t.refresh_at.remaining())
                            }
                            _ => None,
                        }
                    };
                    let Some(mut due) = due else { continue };
                    if let Some(b) = backoff_left {
                        due = due.max(b);
                    }
                    if due.is_zero() {
                        let (e, p, v) = (self.clone(), prof.clone(), v.clone());
                        tokio::spawn(async move { e.background_refresh(&p, &v).await });
                    } else {
                        next = next.min(due);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next.max(Duration::from_millis(200))) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// A refresh ahead of expiry: on failure the cached token stays until it expires.
    async fn background_refresh(self: &Arc<Self>, prof: &Arc<ProfileRt>, v: &Arc<Variant>) {
        let _flight = v.flight.lock().await;
        {
            let s = lock(&v.slot);
            // Someone refreshed while we queued.
            if s.token.as_ref().is_some_and(|t| !t.refresh_at.passed()) {
                return;
            }
        }
        lock(&v.slot).refreshing = true;
        let res = self.fetch(prof, &v.key).await;
        let mut s = lock(&v.slot);
        s.refreshing = false;
        s.generation += 1;
        match res {
            Ok(ts) => {
                tracing::debug!(profile = %prof.cfg.name, "refreshed ahead of expiry");
                s.token = Some(Cached::new(
                    ts,
                    &prof.cfg.name,
                    &prof.params(&v.key).scopes,
                    prof.cfg.refresh_margin,
                ));
                s.last_error = None;
                s.served = false;
            }
            Err(e) => {
                if s.token.as_ref().is_some_and(|t| t.expires.passed()) {
                    s.token = None;
                }
                let transient = e.error == ErrorCode::IdpUnavailable;
                s.last_error = Some(e);
                if !transient {
                    // Login required or a configuration error: nothing to reschedule soon;
                    // the next tick (at most a minute) looks again, so there is no loop.
                    return;
                }
            }
        }
        drop(s);
        // The scheduler planned its sleep without this variant (it was due): wake it so
        // it plans the next refresh of the new token, or the retry after the backoff.
        self.wake.notify_one();
    }

    /// Saves rotated refresh tokens the store refused earlier; called at shutdown.
    pub async fn persist(&self) {
        let profs: Vec<Arc<ProfileRt>> = lock(&self.profiles).values().cloned().collect();
        for p in profs.iter().filter(|p| p.has_unsaved()) {
            p.flush_unsaved(&self.secrets).await;
            if p.has_unsaved() {
                tracing::error!(profile = %p.cfg.name, "the rotated refresh token could not be saved before exit; run `tokctl login {}` after the restart", p.cfg.name);
            }
        }
    }

    /// Wakes the scheduler (after a login stored new tokens).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_rule() {
        for _ in 0..100 {
            let m = default_margin(Duration::from_secs(3600));
            assert!(
                m >= Duration::from_secs(360) && m <= Duration::from_secs(396),
                "{m:?}"
            );
            let m = default_margin(Duration::from_secs(300));
            assert!(
                m >= Duration::from_secs(60) && m <= Duration::from_secs(66),
                "{m:?}"
            );
            // Short tokens never get a margin larger than half their life.
            let m = default_margin(Duration::from_secs(20));
            assert!(
                m >= Duration::from_secs(10) && m <= Duration::from_secs(11),
                "{m:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        assert!(backoff(1, None) <= Duration::from_secs(1));
        assert!(
            backoff(4, None) >= Duration::from_secs(4)
                && backoff(4, None) <= Duration::from_secs(8)
        );
        assert!(backoff(30, None) <= MAX_BACKOFF);
        assert!(backoff(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }

    fn cached(lifetime: u64) -> Cached {
        let c = Cached::new(
            TokenSet {
                access_token: SecretString::from("t"),
                token_type: "Bearer".into(),
                expires_in: Some(lifetime),
                refresh_token: None,
                id_token: None,
                scope: None,
            },
            "p",
            &[],
            None,
        );
        Arc::try_unwrap(c).unwrap_or_else(|_| panic!("sole owner"))
    }

    #[test]
    fn usable_respects_min_ttl_and_short_lifetimes() {
        let mut c = cached(3600);
        assert!(c.usable(Duration::from_secs(30)));
        // Asking for more than the lifetime is met by a fresh token only.
        assert!(c.usable(Duration::from_secs(3601)));
        c.expires = Deadline::after(Duration::from_secs(3000));
        assert!(c.usable(Duration::from_secs(2999)));
        assert!(!c.usable(Duration::from_secs(3001)));
        assert!(!c.usable(Duration::from_secs(3601)));
        // A 20 s token satisfies a 30 s min-ttl only when freshly issued.
        let c = cached(20);
        assert!(c.usable(Duration::from_secs(30)));
        let mut old = cached(20);
        old.expires = Deadline::after(Duration::from_secs(15));
        assert!(!old.usable(Duration::from_secs(30)));
        assert!(old.usable(Duration::from_secs(10)));
    }

    #[test]
    fn the_cached_answer_is_the_token_response() {
        let c = cached(3600);
        let r: TokenResponse = serde_json::from_slice(&c.answer()).expect("JSON answer");
        assert_eq!(r.access_token, "t");
        assert_eq!(r.token_type, "Bearer");
        assert_eq!(r.profile, "p");
        assert_eq!(r.expires_at, c.expires_at.map(unix_secs));
        // A token with quotes and backslashes (VSCHAR allows them) still gives valid JSON.
        let odd = answer_json(TokenResponse {
            access_token: r#"a"b\c"#.into(),
            token_type: "Bearer".into(),
            expires_at: None,
            scope: Some("x y".into()),
            profile: "p".into(),
        });
        let r: TokenResponse = serde_json::from_slice(&odd).expect("escaped JSON");
        assert_eq!(r.access_token, r#"a"b\c"#);
    }

    fn token_set(t: &str) -> TokenSet {
        TokenSet {
            access_token: SecretString::from(t),
            token_type: "Bearer".into(),
            expires_in: Some(3600),
            refresh_token: None,
            id_token: None,
            scope: None,
        }
    }

    fn served(r: Result<bytes::Bytes, ApiError>) -> Option<String> {
        let b = r.ok()?;
        Some(
            serde_json::from_slice::<TokenResponse>(&b)
                .ok()?
                .access_token,
        )
    }

    /// The remembered query strings must never outlive what they resolved to: a logout
    /// (variants emptied), a new login and a config change each show at the next request.
    #[tokio::test]
    async fn a_remembered_query_follows_logouts_logins_and_reloads() {
        let text = |scope: &str| {
            format!(
                "default_profile = \"a\"\n[profile.a]\nissuer = \"http://127.0.0.1:9/\"\n\
                 client_id = \"c\"\ngrant = \"client_credentials\"\nscopes = [\"{scope}\"]\n"
            )
        };
        let path = std::path::Path::new("/nonexistent/config.toml");
        let e = Engine::new(
            Config::parse(path, &text("s1")).unwrap(),
            Secrets::new(tokctl_store::Backend::File("/nonexistent/x".into())),
        );
        let q = "profile=a&min_ttl=30";
        e.profile(Some("a"))
            .unwrap()
            .cache_base_token(token_set("one"));
        assert_eq!(served(e.token_for_query(q).await).as_deref(), Some("one"));
        // An empty query names the default profile: an entry of its own, the same token.
        assert_eq!(served(e.token_for_query("").await).as_deref(), Some("one"));
        assert_eq!(served(e.token_for_query(q).await).as_deref(), Some("one"));

        // Logged out: the token is gone, so the next request must not answer it (with no
        // credentials and no IdP it fails instead).
        e.profile(Some("a")).unwrap().forget();
        assert_eq!(served(e.token_for_query(q).await), None);
        e.profile(Some("a"))
            .unwrap()
            .credentials_changed(None, Some(SecretString::from("s")));
        e.profile(Some("a"))
            .unwrap()
            .cache_base_token(token_set("two"));
        assert_eq!(served(e.token_for_query(q).await).as_deref(), Some("two"));

        // A changed profile starts afresh: its new runtime state has no token.
        e.replace_config(Config::parse(path, &text("s2")).unwrap());
        assert_eq!(served(e.token_for_query(q).await), None);
        e.profile(Some("a"))
            .unwrap()
            .cache_base_token(token_set("three"));
        assert_eq!(served(e.token_for_query(q).await).as_deref(), Some("three"));
        // A malformed query is still refused, remembered entries or not.
        let err = e.token_for_query("profile=a&bogus=1").await.err().unwrap();
        assert_eq!(err.error, ErrorCode::Usage);
    }

    #[test]
    fn no_profiles_is_a_config_error() {
        let e = Engine::new(
            Config::default(),
            Secrets::new(tokctl_store::Backend::File("/nonexistent/x".into())),
        );
        let err = e.profile(None).err().unwrap();
        assert_eq!(err.error, ErrorCode::Config);
    }
}
