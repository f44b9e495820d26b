//! Request parameters and parsed responses of the token and device endpoints.

use crate::urls::check_url;
use crate::OAuthError;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use url::Url;

/// Longest lifetime we believe from `expires_in` (one year): absurd values are clamped so a
/// token is never cached "forever".
pub(crate) const MAX_EXPIRES_IN: u64 = 366 * 24 * 3600;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The registered client id.
    pub client_id: String,
    /// The authentication method and, for confidential clients, the secret.
    pub method: AuthMethod,
}

/// Client authentication method (RFC 6749 §2.3).
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// Public client: `client_id` in the body, no secret.
    None,
    /// `client_secret_basic`: id and secret each form-urlencoded (RFC 6749 §2.3.1), then Base64.
    Basic(SecretString),
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post(SecretString),
}

/// Optional narrowing of a token request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenParams {
    /// Sent space-joined as `scope`; omitted when empty.
    pub scopes: Vec<String>,
    /// Sent as `audience` (Auth0 style).
    pub audience: Option<String>,
    /// Each sent as `resource` (RFC 8707).
    pub resources: Vec<String>,
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The access token (1*VSCHAR).
    pub access_token: SecretString,
    /// Always `"Bearer"`: other types are refused.
    pub token_type: String,
    /// Lifetime in seconds from receipt, clamped to one year.
    pub expires_in: Option<u64>,
    /// A new refresh token, when the server issued one (1*VSCHAR).
    pub refresh_token: Option<SecretString>,
    /// The ID token (OpenID Connect), not yet validated.
    pub id_token: Option<SecretString>,
    /// The granted scope, when the server says.
    pub scope: Option<String>,
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The device code to poll with.
    pub device_code: SecretString,
    /// The code the user types; untrusted text: sanitize before display.
    pub user_code: String,
    /// Where the user goes (https, or http on loopback).
    pub verification_uri: String,
    /// The same with the user code filled in, when the server offers it.
    pub verification_uri_complete: Option<String>,
    /// Lifetime of the device code in seconds (clamped to one year).
    pub expires_in: u64,
    /// Minimum seconds between polls, when the server says (else 5, RFC 8628 §3.2).
    pub interval: Option<u64>,
}

/// Parses a token response body (an already decoded JSON object).
pub(crate) fn parse_token_set(
    mut m: Map<String, Value>,
    what: &str,
) -> Result<TokenSet, OAuthError> {
    let bad =
        |msg: String| OAuthError::InvalidResponse(format!("{what} sent a token response {msg}"));
    let access_token = take_vschar(&mut m, "access_token")
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("without access_token".into()))?;
    let token_type = match m.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
        Some(Value::String(t)) => {
            return Err(bad(format!(
                "with token_type {:?}; only Bearer is supported",
                crate::error::sanitize_text(t, 20)
            )))
        }
        Some(_) => return Err(bad("whose token_type is not a string".into())),
        None => return Err(bad("without token_type".into())),
    };
    let expires_in = seconds(&m, "expires_in").map_err(|e| bad(e.to_string()))?;
    let refresh_token = take_vschar(&mut m, "refresh_token").map_err(|e| bad(e.to_string()))?;
    let id_token = take_vschar(&mut m, "id_token").map_err(|e| bad(e.to_string()))?;
    let scope = match m.remove("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_vschar(&s) || s.is_empty() => Some(s),
        Some(_) => return Err(bad("with a scope that is not printable ASCII".into())),
    };
    Ok(TokenSet {
        access_token,
        token_type,
        expires_in,
        refresh_token,
        id_token,
        scope,
    })
}

/// Parses a device authorization response.
pub(crate) fn parse_device_authorization(
    mut m: Map<String, Value>,
    what: &str,
) -> Result<DeviceAuthorization, OAuthError> {
    let bad = |msg: String| {
        OAuthError::InvalidResponse(format!("{what} sent a device authorization response {msg}"))
    };
    let device_code = take_vschar(&mut m, "device_code")
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("without device_code".into()))?;
    let user_code = match m.remove("user_code") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(bad("without user_code".into())),
    };
    // Google sends `verification_url`, the RFC says `verification_uri`.
    let verification_uri = match (m.remove("verification_uri"), m.remove("verification_url")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s,
        _ => return Err(bad("without verification_uri".into())),
    };
    check_verification_uri(&verification_uri).map_err(bad)?;
    let verification_uri_complete = match m.remove("verification_uri_complete") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_verification_uri(&s).map_err(bad)?;
            Some(s)
        }
        Some(_) => return Err(bad("whose verification_uri_complete is not a string".into())),
    };
    let expires_in = seconds(&m, "expires_in")
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("without expires_in".into()))?;
    let interval = seconds(&m, "interval").map_err(|e| bad(e.to_string()))?;
    Ok(DeviceAuthorization {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
    })
}

fn check_verification_uri(s: &str) -> Result<(), String> {
    // The user is sent there to type a code: a phishing-grade hazard if it is not https.
    let url = Url::parse(s).map_err(|_| "with a verification URI that is not a URL".to_string())?;
    check_url(&url, "verification URI").map_err(|_| {
        format!(
            "with verification URI {} that is not https",
            crate::urls::display_url(&url)
        )
    })
}

/// RFC 6749 Appendix A: access-token and refresh-token are 1*VSCHAR (%x20-7E).
pub(crate) fn is_vschar(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn take_vschar(
    m: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<SecretString>, FieldError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let secret = SecretString::from(s);
            if is_vschar(secret.expose_secret()) {
                Ok(Some(secret))
            } else {
                Err(FieldError::BadChars(key))
            }
        }
        Some(_) => Err(FieldError::NotString(key)),
    }
}

/// A number of seconds that may arrive as a JSON number or a numeric string; clamped.
fn seconds(m: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, FieldError> {
    let n = match m.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                u
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 => f as u64,
                    _ => return Err(FieldError::BadNumber(key)),
                }
            }
        }
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(_) => return Err(FieldError::BadNumber(key)),
    };
    Ok(Some(n.min(MAX_EXPIRES_IN)))
}

#[derive(Debug, thiserror::Error)]
enum FieldError {
    #[error("whose {0} has characters outside printable ASCII")]
    BadChars(&'static str),
    #[error("whose {0} is not a string")]
    NotString(&'static str),
    #[error("whose {0} is not a non-negative number")]
    BadNumber(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Every type here that holds a secret formats it as redacted (the daemon logs these
    /// types' Debug output at trace level, and a panic message may include it).
    #[test]
    fn debug_of_every_secret_holder_is_redacted() {
        let canary = "CANARY-debug-7f3a";
        let set = parse_token_set(
            obj(json!({"access_token": canary, "token_type": "bearer",
                       "refresh_token": format!("{canary}-rt"), "id_token": format!("{canary}-id")})),
            "te",
        )
        .unwrap();
        let da = parse_device_authorization(
            obj(json!({"device_code": canary, "user_code": "U", "verification_uri": "https://idp/d", "expires_in": 60})),
            "de",
        )
        .unwrap();
        let auths = [
            ClientAuth {
                client_id: "c".into(),
                method: AuthMethod::Basic(SecretString::from(canary)),
            },
            ClientAuth {
                client_id: "c".into(),
                method: AuthMethod::Post(SecretString::from(canary)),
            },
        ];
        let outputs = [
            format!("{set:?}"),
            format!("{set:#?}"),
            format!("{da:?}"),
            format!("{auths:?}"),
            format!("{:?}", crate::PkceVerifier::new()),
        ];
        for o in &outputs {
            assert!(!o.contains(canary), "{o}");
        }
        assert!(outputs[0].contains("REDACTED"), "{}", outputs[0]);
    }

    #[test]
    fn token_type_is_case_insensitive_and_normalised() {
        for tt in ["bearer", "Bearer", "BEARER"] {
            let t = parse_token_set(
                obj(json!({"access_token": "at", "token_type": tt, "extra": {"x": 1}})),
                "token endpoint",
            )
            .unwrap();
            assert_eq!(t.token_type, "Bearer");
            assert_eq!(t.access_token.expose_secret(), "at");
            assert!(t.refresh_token.is_none() && t.expires_in.is_none());
        }
        for tt in [json!("mac"), json!("DPoP"), json!(1)] {
            let e = parse_token_set(obj(json!({"access_token": "at", "token_type": tt})), "te")
                .unwrap_err();
            assert!(matches!(e, OAuthError::InvalidResponse(_)), "{e}");
        }
        assert!(parse_token_set(obj(json!({"access_token": "at"})), "te").is_err());
    }

    #[test]
    fn tokens_must_be_vschar_and_errors_do_not_echo_them() {
        for bad in ["a\nb", "a\rb", "a\u{0}b", "a\u{1b}b", "é", ""] {
            let e = parse_token_set(
                obj(json!({"access_token": bad, "token_type": "bearer"})),
                "token endpoint https://idp/t",
            )
            .unwrap_err();
            assert!(matches!(e, OAuthError::InvalidResponse(_)));
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad));
            }
            let rt = if bad.is_empty() {
                String::new()
            } else {
                format!("RT{bad}")
            };
            let e = parse_token_set(
                obj(json!({"access_token": "ok", "token_type": "bearer", "refresh_token": rt})),
                "te",
            )
            .unwrap_err();
            assert!(e.to_string().contains("refresh_token"), "{e}");
        }
        let t = parse_token_set(
            obj(json!({"access_token": "a b~", "token_type": "bearer", "refresh_token": "r", "id_token": "h.p.s", "scope": "openid api"})),
            "te",
        )
        .unwrap();
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "r");
        assert_eq!(t.id_token.unwrap().expose_secret(), "h.p.s");
        assert_eq!(t.scope.as_deref(), Some("openid api"));
    }

    #[test]
    fn expires_in_number_string_and_clamped() {
        let exp = |v: Value| {
            parse_token_set(
                obj(json!({"access_token": "a", "token_type": "bearer", "expires_in": v})),
                "te",
            )
            .map(|t| t.expires_in)
        };
        assert_eq!(exp(json!(3600)).unwrap(), Some(3600));
        assert_eq!(exp(json!("3600")).unwrap(), Some(3600));
        assert_eq!(exp(json!(3599.7)).unwrap(), Some(3599));
        assert_eq!(exp(json!(1e12)).unwrap(), Some(MAX_EXPIRES_IN));
        assert_eq!(
            exp(json!("99999999999999999999999")).unwrap(),
            Some(MAX_EXPIRES_IN)
        );
        assert_eq!(exp(Value::Null).unwrap(), None);
        assert!(exp(json!(-1)).is_err());
        assert!(exp(json!("-1")).is_err());
        assert!(exp(json!("soon")).is_err());
        assert!(exp(json!(true)).is_err());
    }

    #[test]
    fn device_authorization_accepts_google_and_checks_uris() {
        let d = parse_device_authorization(
            obj(json!({"device_code": "dc", "user_code": "WDJB-MJHT", "verification_url": "https://www.google.com/device", "expires_in": "1800", "interval": 5})),
            "device endpoint",
        )
        .unwrap();
        assert_eq!(d.verification_uri, "https://www.google.com/device");
        assert_eq!(d.expires_in, 1800);
        assert_eq!(d.interval, Some(5));
        assert_eq!(d.device_code.expose_secret(), "dc");

        let d = parse_device_authorization(
            obj(json!({"device_code": "dc", "user_code": "U\u{1b}[2J", "verification_uri": "http://127.0.0.1:3000/device", "verification_uri_complete": "http://127.0.0.1:3000/device?user_code=U", "expires_in": 600})),
            "device endpoint",
        )
        .unwrap();
        assert_eq!(d.interval, None);
        // Kept verbatim: display code sanitizes, the library does not guess.
        assert_eq!(d.user_code, "U\u{1b}[2J");

        for bad in [
            json!({"device_code": "dc", "user_code": "U", "verification_uri": "http://evil.test/device", "expires_in": 600}),
            json!({"device_code": "dc", "user_code": "U", "verification_uri": "https://idp/device", "verification_uri_complete": "http://evil.test/d", "expires_in": 600}),
            json!({"device_code": "dc", "user_code": "U", "verification_uri": "https://idp/device"}),
            json!({"user_code": "U", "verification_uri": "https://idp/device", "expires_in": 600}),
            json!({"device_code": "d\nc", "user_code": "U", "verification_uri": "https://idp/device", "expires_in": 600}),
            json!({"device_code": "dc", "verification_uri": "https://idp/device", "expires_in": 600}),
        ] {
            let e = parse_device_authorization(obj(bad), "device endpoint").unwrap_err();
            assert!(matches!(e, OAuthError::InvalidResponse(_)), "{e}");
        }
    }
}
