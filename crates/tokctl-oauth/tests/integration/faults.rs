//! Answers no real identity provider gives, injected by the scripted server: each must be
//! classified so that the refresh token survives (transient) or the bad data is refused.

use crate::support::{token_json, Scripted, ScriptedIdp};
use crate::{client, public, secret};
use serde_json::json;
use std::time::{Duration, SystemTime};
use tokctl_oauth::{ErrorClass, HttpOptions, OAuthClient, OAuthError, TokenParams, TokenSet};

const CANARY_RT: &str = "CANARY-RT-5f0c2a";

async fn refresh_at(idp: &ScriptedIdp, path: &str) -> Result<TokenSet, OAuthError> {
    client()
        .refresh(
            &idp.url(path),
            &public("cli"),
            &secret(CANARY_RT),
            &TokenParams::default(),
        )
        .await
}

/// No error text or Debug output may carry the refresh token or the body.
fn assert_clean(e: &OAuthError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(CANARY_RT), "{text}");
        assert!(!text.contains("CANARY-AT"), "{text}");
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
    }
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient_with_retry_after() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let idp = ScriptedIdp::start(move |r| match r.path.as_str() {
        "/500" => Scripted::json(500, json!({"error": "invalid_grant"})),
        "/503" => Scripted::text(503, "text/plain", "down").header("retry-after", "30"),
        "/503date" => Scripted::text(503, "text/plain", "down").header("retry-after", &date),
        _ => Scripted::json(429, json!({"error": "slow_down"})).header("retry-after", "7"),
    })
    .await;

    let e = refresh_at(&idp, "/500").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
    assert_eq!(e.retry_after(), None);
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    assert_clean(&e);

    let e = refresh_at(&idp, "/503").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert!(e.to_string().ends_with("(retry after 30 s)"), "{e}");

    let e = refresh_at(&idp, "/503date").await.unwrap_err();
    let wait = e.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );

    let e = refresh_at(&idp, "/429").await.unwrap_err();
    assert!(
        matches!(e, OAuthError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7))
    );
}

#[tokio::test]
async fn captive_portal_html_is_transient() {
    let idp = ScriptedIdp::start(|r| match r.path.as_str() {
        "/portal" => Scripted::text(200, "text/html", "<html>Sign in to Wi-Fi</html>"),
        _ => Scripted::text(403, "text/html", "<html>WAF says no</html>"),
    })
    .await;
    let e = refresh_at(&idp, "/portal").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.to_string().contains("not JSON (text/html)"), "{e}");
    assert!(!e.to_string().contains("Wi-Fi"));
    let e = refresh_at(&idp, "/waf").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(!e.to_string().contains("WAF says"));
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let attacker = ScriptedIdp::start(|_| Scripted::json(200, token_json("CANARY-AT"))).await;
    let steal = attacker.url("/steal").to_string();
    let idp = ScriptedIdp::start(move |_| {
        Scripted::text(307, "text/plain", "").header("location", &steal)
    })
    .await;
    let e = refresh_at(&idp, "/token").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.to_string().contains("redirected, not followed"), "{e}");
    assert!(!e.to_string().contains("steal"));
    assert_clean(&e);
    assert_eq!(idp.requests().len(), 1);
    assert_eq!(
        attacker.requests().len(),
        0,
        "the refresh token was re-posted"
    );
}

#[tokio::test]
async fn wrong_token_type_and_bad_characters_are_refused() {
    let idp = ScriptedIdp::start(|r| match r.path.as_str() {
        "/mac" => Scripted::json(200, json!({"access_token": "CANARY-AT", "token_type": "mac"})),
        "/newline" => Scripted::json(
            200,
            json!({"access_token": "CANARY-AT\nX-Injected: 1", "token_type": "Bearer"}),
        ),
        "/esc" => Scripted::json(
            200,
            json!({"access_token": "ok", "token_type": "Bearer", "refresh_token": "CANARY-AT\u{1b}[2J"}),
        ),
        _ => Scripted::json(200, json!({"access_token": "CANARY-ATé", "token_type": "Bearer"})),
    })
    .await;
    for path in ["/mac", "/newline", "/esc", "/nonascii"] {
        let e = refresh_at(&idp, path).await.unwrap_err();
        assert!(matches!(e, OAuthError::InvalidResponse(_)), "{path}: {e:?}");
        assert_clean(&e);
    }
}

#[tokio::test]
async fn error_descriptions_are_sanitized_and_truncated() {
    let long = format!("\u{1b}]0;pwned\u{7}{}", "x".repeat(500));
    let idp = ScriptedIdp::start(move |_| {
        Scripted::json(
            401,
            json!({"error": "invalid_client", "error_description": long}),
        )
    })
    .await;
    let e = refresh_at(&idp, "/token").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config);
    let OAuthError::Protocol {
        description: Some(d),
        status,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*status, 401);
    assert!(d.starts_with("\\u{1b}]0;pwned\\u{7}"), "{d}");
    assert!(d.chars().count() <= 201, "{}", d.chars().count());
    assert_clean(&e);
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let idp = ScriptedIdp::start(|_| {
        let mut v = token_json("AT");
        v["padding"] = json!("p".repeat(2 << 20));
        Scripted::json(200, v)
    })
    .await;
    let e = refresh_at(&idp, "/token").await.unwrap_err();
    assert!(matches!(e, OAuthError::InvalidResponse(_)), "{e:?}");
    assert!(e.to_string().contains("larger than 1024 KiB"), "{e}");
}

#[tokio::test]
async fn unreachable_and_stalled_servers_are_transient() {
    // Bind then drop: nothing listens on this port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = url::Url::parse(&format!("http://127.0.0.1:{port}/token")).unwrap();
    let e = client()
        .refresh(
            &dead,
            &public("cli"),
            &secret(CANARY_RT),
            &TokenParams::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(
        e.to_string()
            .starts_with("cannot connect to token endpoint"),
        "{e}"
    );
    assert_clean(&e);

    let idp = ScriptedIdp::start(|_| {
        Scripted::json(200, token_json("AT")).delayed(Duration::from_secs(5))
    })
    .await;
    let impatient = OAuthClient::new(&HttpOptions {
        ca_file: None,
        timeout: Duration::from_millis(500),
    })
    .unwrap();
    let e = impatient
        .refresh(
            &idp.url("/token"),
            &public("cli"),
            &secret(CANARY_RT),
            &TokenParams::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.to_string().contains("did not answer within"), "{e}");
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_before_sending() {
    let url = url::Url::parse("http://idp.example.com/token").unwrap();
    let e = client()
        .refresh(
            &url,
            &public("cli"),
            &secret(CANARY_RT),
            &TokenParams::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Config(_)), "{e:?}");
}
