//! Request and response bodies of the `/v1` socket API (see `docs/protocol.md`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Machine-readable error class; each maps to one exit code of the command-line contract.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Anything not covered below (exit 1).
    Other,
    /// A malformed request or command line (exit 2).
    Usage,
    /// The configuration is wrong: unknown profile, bad config, rejected client (exit 2).
    Config,
    /// The daemon could not be reached or started (exit 3).
    DaemonUnreachable,
    /// No usable refresh token or secret: the user has to log in (exit 4).
    LoginRequired,
    /// The identity provider is unreachable or failing and no valid token is cached (exit 5).
    IdpUnavailable,
    /// The user denied the login, or it expired (exit 6).
    Denied,
}

impl ErrorCode {
    /// The process exit code of the command-line contract for this error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Other => 1,
            ErrorCode::Usage | ErrorCode::Config => 2,
            ErrorCode::DaemonUnreachable => 3,
            ErrorCode::LoginRequired => 4,
            ErrorCode::IdpUnavailable => 5,
            ErrorCode::Denied => 6,
        }
    }

    /// The HTTP status the daemon answers with for this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Other => 500,
            ErrorCode::Usage => 400,
            ErrorCode::Config => 422,
            ErrorCode::DaemonUnreachable => 503,
            ErrorCode::LoginRequired => 401,
            ErrorCode::IdpUnavailable => 502,
            ErrorCode::Denied => 403,
        }
    }
}

/// The body of every error response: `{"error": "<code>", "message": "…"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The error class.
    pub error: ErrorCode,
    /// One line for a human: what happened and what to do. Never contains a secret.
    pub message: String,
}

impl ApiError {
    /// Builds an error from a code and a message.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            error,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Query of `GET /v1/token`: which profile, and optionally a narrower (down-scoped) token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenQuery {
    /// Profile name; `None` means the config's `default_profile`.
    pub profile: Option<String>,
    /// Scopes for a down-scoped token; empty means the profile's own scopes.
    pub scopes: Vec<String>,
    /// Audience for a down-scoped token.
    pub audience: Option<String>,
    /// RFC 8707 resource indicators for a down-scoped token.
    pub resources: Vec<String>,
    /// The token returned must stay valid at least this many seconds.
    pub min_ttl_secs: u64,
}

/// The default `--min-ttl`, in seconds.
pub const DEFAULT_MIN_TTL_SECS: u64 = 30;

impl TokenQuery {
    /// Encodes the query as `application/x-www-form-urlencoded` (repeated keys for lists).
    pub fn to_query_string(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(p) = &self.profile {
            s.append_pair("profile", p);
        }
        for sc in &self.scopes {
            s.append_pair("scope", sc);
        }
        if let Some(a) = &self.audience {
            s.append_pair("audience", a);
        }
        for r in &self.resources {
            s.append_pair("resource", r);
        }
        s.append_pair("min_ttl", &self.min_ttl_secs.to_string());
        s.finish()
    }

    /// Decodes a query string; unknown keys and malformed numbers are errors, so a typo
    /// in a client never silently returns a token for the wrong request.
    pub fn from_query_string(q: &str) -> Result<Self, ApiError> {
        let mut out = TokenQuery {
            min_ttl_secs: DEFAULT_MIN_TTL_SECS,
            ..Default::default()
        };
        let mut seen_profile = false;
        let mut seen_audience = false;
        let mut seen_ttl = false;
        let dup = |k: &str| ApiError::new(ErrorCode::Usage, format!("`{k}` given twice"));
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "profile" if seen_profile => return Err(dup("profile")),
                "profile" => {
                    seen_profile = true;
                    out.profile = Some(v.into_owned());
                }
                "scope" => out
                    .scopes
                    .extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
                "audience" if seen_audience => return Err(dup("audience")),
                "audience" => {
                    seen_audience = true;
                    out.audience = Some(v.into_owned());
                }
                "resource" => out.resources.push(v.into_owned()),
                "min_ttl" if seen_ttl => return Err(dup("min_ttl")),
                "min_ttl" => {
                    seen_ttl = true;
                    out.min_ttl_secs = v.parse().map_err(|_| {
                        ApiError::new(
                            ErrorCode::Usage,
                            "`min_ttl` must be a whole number of seconds",
                        )
                    })?;
                }
                other => {
                    return Err(ApiError::new(
                        ErrorCode::Usage,
                        format!("unknown query parameter `{}`", printable(other, 40)),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// True when the query asks for a narrower token than the profile's own.
    pub fn is_down_scoped(&self) -> bool {
        !self.scopes.is_empty() || self.audience.is_some() || !self.resources.is_empty()
    }
}

/// Response of `GET /v1/token`; also the `--format json` output of `tokctl get`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// The token type as the IdP sent it (normally `Bearer`).
    pub token_type: String,
    /// Expiry in Unix seconds; `None` when the IdP gave no lifetime.
    pub expires_at: Option<u64>,
    /// Granted scopes, space separated, when known.
    pub scope: Option<String>,
    /// The profile that answered.
    pub profile: String,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("profile", &self.profile)
            .finish()
    }
}

/// What a profile can do right now, as `tokctl status` shows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProfileState {
    /// No refresh token or client secret is stored.
    LoggedOut,
    /// Credentials are present and the last attempt succeeded (or none was needed yet).
    Valid,
    /// A request to the token endpoint is in flight.
    Refreshing,
    /// The last attempt failed transiently; the next try waits.
    Backoff,
    /// The IdP rejected the refresh token (or none exists for an interactive grant).
    LoginRequired,
}

impl ProfileState {
    /// The snake_case name used in JSON and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileState::LoggedOut => "logged_out",
            ProfileState::Valid => "valid",
            ProfileState::Refreshing => "refreshing",
            ProfileState::Backoff => "backoff",
            ProfileState::LoginRequired => "login_required",
        }
    }
}

/// One profile in `GET /v1/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProfileStatus {
    /// Profile name.
    pub name: String,
    /// Grant type from the config (`client_credentials`, `device_code`, …).
    pub grant: String,
    /// Issuer URL.
    pub issuer: String,
    /// Current state.
    pub state: ProfileState,
    /// Expiry of the cached access token, Unix seconds.
    pub expires_at: Option<u64>,
    /// When the next background refresh is due, Unix seconds.
    pub refresh_at: Option<u64>,
    /// Configured scopes.
    pub scopes: Vec<String>,
    /// The last error, one line, no secrets.
    pub last_error: Option<String>,
    /// Number of cached down-scoped variants.
    pub variants: usize,
}

/// Response of `GET /v1/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatusResponse {
    /// Daemon version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Secret store backend in use (`keychain (Secret Service)`, `file (…)`).
    pub store: String,
    /// Config file the daemon loaded.
    pub config: String,
    /// Every configured profile, in name order.
    pub profiles: Vec<ProfileStatus>,
}

/// Body of `POST /v1/secret`: store a client secret for a profile.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    /// Profile name.
    pub profile: String,
    /// The client secret.
    pub secret: String,
}

impl fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRequest")
            .field("profile", &self.profile)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Body of `POST /v1/login`.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct LoginRequest {
    /// Profile name.
    pub profile: String,
    /// Log in again even when a valid refresh token exists.
    #[serde(default)]
    pub force: bool,
    /// Password grant: the user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password grant: the password (read from stdin by the client, used once).
    #[serde(default)]
    pub password: Option<String>,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("profile", &self.profile)
            .field("force", &self.force)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// One NDJSON line streamed by `POST /v1/login`; also `tokctl login --json` output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LoginEvent {
    /// Device flow: show these to the user.
    DeviceAuthorization {
        /// Where the user goes.
        verification_uri: String,
        /// The same with the code filled in, when the IdP offers it.
        verification_uri_complete: Option<String>,
        /// The code the user types.
        user_code: String,
        /// Seconds until the code expires.
        expires_in: u64,
    },
    /// Authorization code flow: the client opens this URL in the browser.
    Browser {
        /// The authorization URL.
        url: String,
    },
    /// Something the user should read (a warning, "already logged in").
    Info {
        /// One line of text.
        message: String,
    },
    /// The login finished and the credentials are stored.
    Done {
        /// Profile name.
        profile: String,
    },
    /// The login failed.
    Error {
        /// The error class.
        error: ErrorCode,
        /// One line for a human.
        message: String,
    },
}

/// Body of `POST /v1/logout`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    /// Profile name.
    pub profile: String,
    /// Revoke the refresh token at the IdP first (default true).
    #[serde(default = "yes")]
    pub revoke: bool,
}

fn yes() -> bool {
    true
}

/// Response of `POST /v1/logout`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// Whether the IdP confirmed the revocation.
    pub revoked: bool,
    /// What happened, one line (e.g. "the IdP has no revocation endpoint").
    pub message: String,
}

/// Query of `GET /v1/route?url=…`: the URL a helper asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteQuery {
    /// The URL as the helper sent it; the daemon parses it.
    pub url: String,
}

impl RouteQuery {
    /// Encodes the query as `url=…` (`application/x-www-form-urlencoded`).
    pub fn to_query_string(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("url", &self.url)
            .finish()
    }

    /// Decodes a query string: exactly one `url` and nothing else.
    pub fn from_query_string(q: &str) -> Result<Self, ApiError> {
        let mut url = None;
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match (&*k, &url) {
                ("url", None) => url = Some(v.into_owned()),
                ("url", Some(_)) => {
                    return Err(ApiError::new(ErrorCode::Usage, "`url` given twice"))
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Usage,
                        "unknown query parameter; only `url`",
                    ))
                }
            }
        }
        let url = url.ok_or_else(|| ApiError::new(ErrorCode::Usage, "`url` is required"))?;
        Ok(RouteQuery { url })
    }
}

/// Answer of `GET /v1/route?url=…`: which profile and username a helper uses for a URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteResponse {
    /// The matching route; `None` when no `[[route]]` covers the URL.
    pub route: Option<RouteMatch>,
}

/// One matched `[[route]]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// The profile that answers.
    pub profile: String,
    /// The username the helper reports.
    pub username: String,
}

/// Answer of `GET /v1/routes`: every `[[route]]` in file order (a helper's `list`). Holds
/// no secrets: only URLs, profile names and usernames from the config file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutesResponse {
    /// The configured routes.
    pub routes: Vec<RouteEntry>,
}

/// One configured `[[route]]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// The URL prefix, as the daemon normalised it (`https://host[:port]/path`).
    pub url: String,
    /// The profile that answers.
    pub profile: String,
    /// The username the helper reports.
    pub username: String,
}

/// Body of `POST /v1/invalidate`: drop cached access tokens, never refresh tokens.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct InvalidateRequest {
    /// Profile name; `None` means the default profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// When set, only a cached token equal to this one is dropped (a helper's `erase`).
    #[serde(default)]
    pub access_token: Option<String>,
}

impl fmt::Debug for InvalidateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateRequest")
            .field("profile", &self.profile)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Response of `POST /v1/invalidate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InvalidateResponse {
    /// How many cached access tokens were dropped.
    pub dropped: usize,
}

/// Response of `POST /v1/reload` and of `POST /v1/secret`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OkResponse {
    /// What happened, one line.
    pub message: String,
}

/// How one `tokctl doctor` check came out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Worth a look, but tokens can still be served.
    Warn,
    /// A problem: something does not work until it is fixed.
    Fail,
}

/// One check in `GET /v1/doctor`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DoctorCheck {
    /// What was checked: `config`, `keychain`, `issuer NAME`, `profile NAME`, `clock`.
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found, one line, no secrets.
    pub detail: String,
    /// What to do about it, when the status is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Response of `GET /v1/doctor`: the checks only the daemon can make (it holds the
/// config, the keychain and the HTTP client); the client adds its socket checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DoctorResponse {
    /// Daemon version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// The checks, in the order they should be shown.
    pub checks: Vec<DoctorCheck>,
}

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, and the bidi
/// controls (U+061C, U+200E/F, U+202A–202E, U+2066–2069) that reorder what is shown (A11,
/// "Trojan Source"). The one set every print site of the client uses.
pub fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Escapes control, escape and bidi characters and truncates, so text from a peer can be
/// shown on a terminal or put in an error line safely.
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max_chars {
            out.push('…');
            break;
        }
        if is_unsafe_for_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes serialized JSON safe for a terminal without changing its value: serde_json writes
/// C1 controls, DEL and bidi characters inside strings raw, so each becomes a `\uXXXX`
/// escape (all of them are in the BMP). Only for JSON text, where such characters can occur
/// only inside strings.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe_for_terminal(c) && c != '\n' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_round_trips_lists_and_specials() {
        let q = TokenQuery {
            profile: Some("wörk".into()),
            scopes: vec!["read".into(), "write:x".into()],
            audience: Some("https://api/a?b=c&d".into()),
            resources: vec!["https://r1/".into(), "https://r2/x y".into()],
            min_ttl_secs: 90,
        };
        let back = TokenQuery::from_query_string(&q.to_query_string()).unwrap();
        assert_eq!(back, q);
        assert!(back.is_down_scoped());
    }

    #[test]
    fn token_query_rejects_unknown_and_duplicates() {
        assert_eq!(
            TokenQuery::from_query_string("bogus=1").unwrap_err().error,
            ErrorCode::Usage
        );
        assert!(TokenQuery::from_query_string("profile=a&profile=b").is_err());
        assert!(TokenQuery::from_query_string("min_ttl=-3").is_err());
        let d = TokenQuery::from_query_string("").unwrap();
        assert_eq!(d.min_ttl_secs, DEFAULT_MIN_TTL_SECS);
        assert!(!d.is_down_scoped());
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(ErrorCode::Config.exit_code(), 2);
        assert_eq!(ErrorCode::LoginRequired.exit_code(), 4);
        assert_eq!(ErrorCode::IdpUnavailable.exit_code(), 5);
        assert_eq!(ErrorCode::Denied.exit_code(), 6);
        let j = serde_json::to_string(&ApiError::new(ErrorCode::IdpUnavailable, "x")).unwrap();
        assert_eq!(j, r#"{"error":"idp_unavailable","message":"x"}"#);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = SecretRequest {
            profile: "p".into(),
            secret: "CANARY".into(),
        };
        assert!(!format!("{s:?}").contains("CANARY"));
        let t = TokenResponse {
            access_token: "CANARY".into(),
            token_type: "Bearer".into(),
            expires_at: None,
            scope: None,
            profile: "p".into(),
        };
        assert!(!format!("{t:?}").contains("CANARY"));
        let l = LoginRequest {
            password: Some("CANARY".into()),
            ..Default::default()
        };
        assert!(!format!("{l:?}").contains("CANARY"));
    }

    /// Every character the brief names as unsafe: C0, DEL, C1 and the bidi set.
    fn unsafe_chars() -> Vec<char> {
        let mut v: Vec<char> = (0u32..0x20)
            .chain(0x7f..0xa0)
            .filter_map(char::from_u32)
            .collect();
        v.extend(['\u{061c}', '\u{200e}', '\u{200f}']);
        v.extend('\u{202a}'..='\u{202e}');
        v.extend('\u{2066}'..='\u{2069}');
        v
    }

    #[test]
    fn printable_escapes_all_c0_del_c1_and_bidi() {
        let all = unsafe_chars();
        assert_eq!(all.len(), 32 + 1 + 32 + 3 + 5 + 4);
        for c in all {
            assert!(is_unsafe_for_terminal(c), "{:x}", c as u32);
            let shown = printable(&format!("a{c}b"), 100);
            assert!(
                !shown.contains(c),
                "U+{:04X} passed through: {shown:?}",
                c as u32
            );
            assert!(
                shown.chars().all(|x| !is_unsafe_for_terminal(x)),
                "{shown:?}"
            );
            assert!(shown.starts_with('a') && shown.ends_with('b'), "{shown:?}");
            assert!(shown.contains('\\'), "escaped form shown: {shown:?}");
        }
        // Ordinary text, including non-Latin letters and the ellipsis, is untouched.
        for ok in [
            "WDJB-MJHT",
            "ünïcødé ✓",
            "شكرا",
            "https://idp/x?a=1&b=2",
            "…",
        ] {
            assert_eq!(printable(ok, 100), ok);
        }
        assert_eq!(printable("\u{9b}31m", 100), "\\u{9b}31m");
        assert_eq!(printable("\u{061c}", 100), "\\u{61c}");
    }

    #[test]
    fn json_for_terminal_keeps_the_value_and_drops_raw_controls() {
        for c in unsafe_chars() {
            let v = serde_json::json!({ "user_code": format!("A{c}B") });
            let raw = serde_json::to_string(&v).unwrap();
            let safe = json_for_terminal(&raw);
            assert!(
                safe.chars().all(|x| !is_unsafe_for_terminal(x)),
                "U+{:04X}: {safe:?}",
                c as u32
            );
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            assert_eq!(back, v, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("a\x1b[2Jb", 100), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\u{202e}y", 100), "x\\u{202e}y");
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    #[test]
    fn login_events_are_tagged() {
        let e = LoginEvent::Done {
            profile: "p".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"done","profile":"p"}"#
        );
    }

    #[test]
    fn route_query_takes_exactly_one_url() {
        let q = RouteQuery {
            url: "https://git.test/a b?c=d&e".into(),
        };
        assert_eq!(RouteQuery::from_query_string(&q.to_query_string()), Ok(q));
        for (bad, why) in [
            ("", "`url` is required"),
            ("url=a&url=b", "`url` given twice"),
            ("url=a&profile=x", "unknown query parameter; only `url`"),
        ] {
            let e = RouteQuery::from_query_string(bad).unwrap_err();
            assert_eq!(
                (e.error, e.message.as_str()),
                (ErrorCode::Usage, why),
                "{bad}"
            );
        }
    }
}
