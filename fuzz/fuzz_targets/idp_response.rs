//! Identity provider replies, through the client's own classification and parsers
//! (`tokctl_oauth::fuzzing`): token endpoint success/error, device authorization, and
//! discovery metadata with its issuer and endpoint checks.
//!
//! Input: byte 0 picks the reply kind (and the issuer for discovery), bytes 1-2 the HTTP
//! status, byte 3 whether a Content-Type is set, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokctl_oauth::fuzzing::{device_reply, discovery_reply, token_reply};
use tokctl_oauth::{check_url, ErrorClass, OAuthError, OAuthErrorCode};

const ISSUERS: [&str; 3] = [
    "https://idp.test",
    "https://idp.test/",
    "https://idp.test/realms/x",
];

/// RFC 6749 App. A: access and refresh tokens are 1*VSCHAR.
fn vschar(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Every string in a JSON value, keys included.
fn strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push_str(k);
            out.push('\n');
            strings(x, out);
        }),
        _ => {}
    }
}

/// Properties every error shares, whatever the reply.
fn check_error(e: &OAuthError, status: u16, body: &[u8]) {
    let shown = e.to_string();
    // One line, no terminal controls or bidi overrides from the IdP's text.
    assert!(
        !shown
            .chars()
            .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{shown:?}"
    );
    // Rate limits and server failures are transient whatever the body says.
    if status == 429 || (500..600).contains(&status) {
        assert_eq!(e.class(), ErrorClass::Transient, "{status}: {shown}");
        assert!(matches!(e, OAuthError::Transient { .. }));
    }
    if let OAuthError::Protocol {
        code, description, ..
    } = e
    {
        assert_eq!(e.class(), code.class());
        // The code round-trips through its wire name (unknown ones are sanitized first).
        assert_eq!(OAuthErrorCode::parse(code.as_str()).as_str(), code.as_str());
        if let Some(d) = description {
            assert!(d.chars().count() <= 200, "description not capped");
        }
        assert!(
            matches!(code.class(), ErrorClass::Transient)
                == matches!(
                    code,
                    OAuthErrorCode::ServerError | OAuthErrorCode::TemporarilyUnavailable
                )
        );
    }
    // The error never repeats a token from the body, unless the IdP also put that text
    // somewhere else (a description or an unrelated member).
    if let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) {
        let mut secrets = Vec::new();
        for k in ["access_token", "refresh_token", "id_token", "device_code"] {
            if let Some(Value::String(s)) = m.remove(k) {
                secrets.push(s);
            }
        }
        let mut rest = String::new();
        strings(&Value::Object(m), &mut rest);
        // Text every message may hold anyway: the endpoint labels and member names.
        let fixed = "token endpoint https://idp.test/token \
                     device authorization endpoint https://idp.test/device \
                     discovery document https://idp.test/.well-known/openid-configuration \
                     access_token refresh_token id_token token_type expires_in scope \
                     device_code user_code verification_uri verification_uri_complete \
                     verification_url interval issuer error_description \
                     text/html; charset=\\u{1b}[31m";
        // Long, space-free values only: short ones occur in any English message.
        for s in secrets.iter().filter(|s| s.len() >= 12 && !s.contains(' ')) {
            assert!(
                !shown.contains(s.as_str())
                    || rest.contains(s.as_str())
                    || fixed.contains(s.as_str()),
                "error shows a token: {shown:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = u16::from_be_bytes([data[1], data[2]]) % 1000;
    let content_type = (data[3] & 1 == 1).then_some("text/html; charset=\u{1b}[31m");
    let body = &data[4..];
    match data[0] % 3 {
        0 => match token_reply(status, content_type, body) {
            None => {}
            Some(Ok(t)) => {
                assert!(
                    (200..300).contains(&status),
                    "token accepted with status {status}"
                );
                assert!(vschar(t.access_token.expose_secret()));
                assert_eq!(t.token_type, "Bearer");
                if let Some(rt) = &t.refresh_token {
                    assert!(vschar(rt.expose_secret()));
                }
                if let Some(s) = &t.scope {
                    assert!(s.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                }
                // A success body never carries an OAuth error.
                let v: Value = serde_json::from_slice(body).expect("accepted non-JSON");
                assert!(!matches!(v.get("error"), Some(Value::String(_))));
                assert!(t.expires_in.is_none_or(|s| s <= 366 * 24 * 3600));
            }
            Some(Err(e)) => check_error(&e, status, body),
        },
        1 => match device_reply(status, content_type, body) {
            None => {}
            Some(Ok(d)) => {
                assert!((200..300).contains(&status));
                assert!(vschar(d.device_code.expose_secret()) && !d.user_code.is_empty());
                // The user is sent to these: https (or loopback http) only.
                let u = url::Url::parse(&d.verification_uri).expect("URI");
                check_url(&u, "verification_uri").expect("https verification URI");
                if let Some(c) = &d.verification_uri_complete {
                    check_url(&url::Url::parse(c).expect("URI"), "complete").expect("https");
                }
            }
            Some(Err(e)) => check_error(&e, status, body),
        },
        _ => {
            let issuer = ISSUERS[usize::from(data[0] / 3) % ISSUERS.len()];
            match discovery_reply(issuer, status, content_type, body) {
                None => {}
                Some(Ok(None)) => {
                    assert!((400..500).contains(&status) && status != 429, "{status}")
                }
                Some(Ok(Some(m))) => {
                    assert!((200..300).contains(&status));
                    // S9: exactly the configured issuer; S10: every endpoint usable.
                    assert_eq!(m.issuer, issuer);
                    let v: Value = serde_json::from_slice(body).expect("JSON");
                    assert_eq!(v["issuer"], issuer);
                    for u in [
                        Some(&m.token_endpoint),
                        m.authorization_endpoint.as_ref(),
                        m.device_authorization_endpoint.as_ref(),
                        m.revocation_endpoint.as_ref(),
                        m.introspection_endpoint.as_ref(),
                        m.jwks_uri.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        check_url(u, "endpoint").expect("endpoint passes check_url");
                    }
                }
                Some(Err(e)) => check_error(&e, status, body),
            }
        }
    }
});
