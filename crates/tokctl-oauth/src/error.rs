//! Typed errors of every exchange with an identity provider, and their classification.

use std::fmt;
use std::time::Duration;

/// Longest `error_description` kept from an identity provider, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest unknown `error` code kept, in characters.
const MAX_CODE_CHARS: usize = 64;

/// Everything that can go wrong when talking to an identity provider.
///
/// The `Display` text is one line naming the endpoint and what went wrong; it never holds a
/// token, a secret or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// An RFC 6749 §5.2 (or RFC 8628 §3.5, RFC 7009 §2.2.1) error response.
    #[error("{endpoint} {}: {code}{}", code.verb(), paren(description.as_deref()))]
    Protocol {
        /// Which endpoint answered, e.g. `token endpoint https://idp/token`.
        endpoint: String,
        /// The `error` member.
        code: OAuthErrorCode,
        /// The `error_description` member: controls escaped, at most 200 characters.
        description: Option<String>,
        /// The HTTP status of the response.
        status: u16,
    },
    /// Worth retrying later: no connection, timeout, 5xx, 429, a body that is not JSON, a redirect.
    #[error("{reason}{}", retry_suffix(*retry_after))]
    Transient {
        /// What happened, naming the endpoint.
        reason: String,
        /// How long the server asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// A JSON answer that is not a valid token, device or metadata response.
    #[error("{0}")]
    InvalidResponse(String),
    /// Discovery failed: issuer mismatch, no metadata, an endpoint that is not https.
    #[error("{0}")]
    Discovery(String),
    /// A local configuration problem: bad URL, plain http to a non-loopback host, unreadable `ca_file`.
    #[error("{0}")]
    Config(String),
    /// The identity provider's TLS certificate was not accepted; retrying will not help.
    #[error("{0}")]
    Tls(String),
    /// An ID token failed validation: signature, issuer, audience, expiry or nonce.
    #[error("{0}")]
    IdToken(String),
}

/// What the caller should do about an [`OAuthError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The grant is dead (`invalid_grant`): the user has to log in again.
    LoginRequired,
    /// The configuration (client, scopes, endpoints, trust) must be fixed; retrying will not help.
    Config,
    /// The user denied the request or the login expired.
    Denied,
    /// Retry later with backoff; keep the refresh token.
    Transient,
    /// Device flow: not yet authorized (`authorization_pending`, `slow_down`); keep polling.
    Pending,
}

impl OAuthError {
    /// Classifies the error for the refresh engine and the exit codes.
    pub fn class(&self) -> ErrorClass {
        match self {
            OAuthError::Protocol { code, .. } => code.class(),
            // A body that is not an RFC error never changes grant state (RFC 9700 notes, pizauth
            // precedent): the refresh token stays and we retry.
            OAuthError::Transient { .. } | OAuthError::InvalidResponse(_) => ErrorClass::Transient,
            OAuthError::Discovery(_)
            | OAuthError::Config(_)
            | OAuthError::Tls(_)
            | OAuthError::IdToken(_) => ErrorClass::Config,
        }
    }

    /// The `Retry-After` delay of a transient error, if the server sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OAuthError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        OAuthError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// The `error` member of an OAuth error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// `invalid_request`
    InvalidRequest,
    /// `invalid_client`
    InvalidClient,
    /// `invalid_grant`
    InvalidGrant,
    /// `unauthorized_client`
    UnauthorizedClient,
    /// `unsupported_grant_type`
    UnsupportedGrantType,
    /// `invalid_scope`
    InvalidScope,
    /// `invalid_target` (RFC 8707)
    InvalidTarget,
    /// `authorization_pending` (RFC 8628)
    AuthorizationPending,
    /// `slow_down` (RFC 8628)
    SlowDown,
    /// `access_denied`
    AccessDenied,
    /// `expired_token` (RFC 8628)
    ExpiredToken,
    /// `unsupported_token_type` (RFC 7009)
    UnsupportedTokenType,
    /// `server_error`: some servers send it from the token endpoint with a 400.
    ServerError,
    /// `temporarily_unavailable`: likewise.
    TemporarilyUnavailable,
    /// Any other code, controls escaped and truncated.
    Other(String),
}

impl OAuthErrorCode {
    /// Parses an `error` member; unknown codes become [`OAuthErrorCode::Other`], sanitized.
    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            "invalid_target" => Self::InvalidTarget,
            "authorization_pending" => Self::AuthorizationPending,
            "slow_down" => Self::SlowDown,
            "access_denied" => Self::AccessDenied,
            "expired_token" => Self::ExpiredToken,
            "unsupported_token_type" => Self::UnsupportedTokenType,
            "server_error" => Self::ServerError,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            other => Self::Other(sanitize_text(other, MAX_CODE_CHARS)),
        }
    }

    /// The code as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::AccessDenied => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::Other(s) => s,
        }
    }

    /// What the caller should do about this code.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidGrant => ErrorClass::LoginRequired,
            Self::AccessDenied | Self::ExpiredToken => ErrorClass::Denied,
            Self::AuthorizationPending | Self::SlowDown => ErrorClass::Pending,
            Self::ServerError | Self::TemporarilyUnavailable => ErrorClass::Transient,
            // An unknown code is still an explicit refusal: stop (RFC 8628 §3.5 "any other
            // error") and show it, rather than hammer the server.
            Self::InvalidRequest
            | Self::InvalidClient
            | Self::UnauthorizedClient
            | Self::UnsupportedGrantType
            | Self::InvalidScope
            | Self::InvalidTarget
            | Self::UnsupportedTokenType
            | Self::Other(_) => ErrorClass::Config,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            Self::InvalidRequest => "rejected the request",
            Self::InvalidClient => "rejected the client",
            Self::InvalidGrant => "rejected the grant",
            Self::UnauthorizedClient => "does not allow this client that grant",
            Self::UnsupportedGrantType => "does not support the grant type",
            Self::InvalidScope => "rejected the scope",
            Self::InvalidTarget => "rejected the resource or audience",
            Self::AuthorizationPending => "is still waiting for the user",
            Self::SlowDown => "asks to poll more slowly",
            Self::AccessDenied => "says access was denied",
            Self::ExpiredToken => "says the device code expired",
            Self::UnsupportedTokenType => "does not support that token type",
            Self::ServerError | Self::TemporarilyUnavailable => "is failing",
            Self::Other(_) => "returned an error",
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes untrusted text from an identity provider safe for one line of terminal output: C0/C1
/// controls, DEL and bidirectional overrides are escaped as `\u{..}`, and the result is cut to
/// at most `max_chars` characters, ending in `…` when something was dropped.
pub fn sanitize_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut len = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = if is_unsafe_char(c) {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.to_string()
        };
        let piece_len = piece.chars().count();
        // Keep room for the ellipsis unless this is the last character.
        let room = if chars.peek().is_some() {
            max_chars.saturating_sub(1)
        } else {
            max_chars
        };
        if len + piece_len > room {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        len += piece_len;
    }
    out
}

pub(crate) fn sanitize_description(text: &str) -> String {
    sanitize_text(text, MAX_DESCRIPTION_CHARS)
}

fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn paren(description: Option<&str>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

fn retry_suffix(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {} s)", d.as_secs()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_rfc6749_and_rfc8628() {
        use ErrorClass::*;
        let cases = [
            ("invalid_grant", LoginRequired),
            ("invalid_client", Config),
            ("unauthorized_client", Config),
            ("unsupported_grant_type", Config),
            ("invalid_scope", Config),
            ("invalid_target", Config),
            ("invalid_request", Config),
            ("access_denied", Denied),
            ("expired_token", Denied),
            ("authorization_pending", Pending),
            ("slow_down", Pending),
            ("temporarily_unavailable", Transient),
            ("server_error", Transient),
            ("interaction_required", Config),
        ];
        for (code, class) in cases {
            let err = OAuthError::Protocol {
                endpoint: "token endpoint https://idp/token".into(),
                code: OAuthErrorCode::parse(code),
                description: None,
                status: 400,
            };
            assert_eq!(err.class(), class, "{code}");
            assert_eq!(OAuthErrorCode::parse(code).as_str(), code);
        }
        assert_eq!(OAuthError::transient("x").class(), Transient);
        assert_eq!(OAuthError::InvalidResponse("x".into()).class(), Transient);
        assert_eq!(OAuthError::Discovery("x".into()).class(), Config);
        assert_eq!(OAuthError::Tls("x".into()).class(), Config);
        assert_eq!(OAuthError::Config("x".into()).class(), Config);
    }

    #[test]
    fn protocol_error_display_is_one_line_naming_the_endpoint() {
        let err = OAuthError::Protocol {
            endpoint: "token endpoint https://idp/token".into(),
            code: OAuthErrorCode::InvalidClient,
            description: Some("client authentication failed".into()),
            status: 401,
        };
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp/token rejected the client: invalid_client (client authentication failed)"
        );
        let err = OAuthError::Transient {
            reason: "token endpoint https://idp/token answered HTTP 503".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp/token answered HTTP 503 (retry after 30 s)"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn sanitize_escapes_controls_and_bidi_and_truncates() {
        assert_eq!(sanitize_text("ok text", 200), "ok text");
        assert_eq!(
            sanitize_text("a\x1b[2Jb\r\nc", 200),
            "a\\u{1b}[2Jb\\u{d}\\u{a}c"
        );
        assert_eq!(
            sanitize_text("x\u{202e}y\u{9b}z\u{7f}", 200),
            "x\\u{202e}y\\u{9b}z\\u{7f}"
        );
        let long = "é".repeat(300);
        let cut = sanitize_text(&long, 200);
        assert_eq!(cut.chars().count(), 200);
        assert!(cut.ends_with('…'));
        assert_eq!(sanitize_text(&"x".repeat(200), 200), "x".repeat(200));
        assert_eq!(sanitize_text(&"x".repeat(201), 200).chars().count(), 200);
        // Escapes count towards the limit and are never cut in half.
        let escaped = sanitize_text(&"\u{1b}".repeat(100), 200);
        assert!(escaped.chars().count() <= 200);
        assert!(escaped.ends_with("}…"), "{escaped}");
    }

    #[test]
    fn unknown_codes_are_sanitized() {
        let code = OAuthErrorCode::parse("weird\ncode");
        assert_eq!(code, OAuthErrorCode::Other("weird\\u{a}code".into()));
        assert_eq!(code.class(), ErrorClass::Config);
    }
}
