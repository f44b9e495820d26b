//! Every grant against well-formed scripted answers: what is sent, and what comes back.

use crate::support::{token_json, Scripted, ScriptedIdp};
use crate::{client, public, secret};
use secrecy::ExposeSecret;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokctl_oauth::{
    AuthMethod, ClientAuth, ErrorClass, OAuthError, OAuthErrorCode, PkceVerifier, TokenParams,
    TokenTypeHint,
};

fn params() -> TokenParams {
    TokenParams {
        scopes: vec!["read".into(), "write".into()],
        audience: Some("https://api.test".into()),
        resources: vec!["https://r1.test".into(), "https://r2.test".into()],
    }
}

#[tokio::test]
async fn client_credentials_with_basic_auth_encodes_per_rfc6749_2_3_1() {
    let idp = ScriptedIdp::start(|_| Scripted::json(200, token_json("AT-1"))).await;
    let auth = ClientAuth {
        client_id: "my:client id".into(),
        method: AuthMethod::Basic(secret("a:b%c+d e")),
    };
    let t = client()
        .client_credentials(&idp.url("/token"), &auth, &params())
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-1");
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, Some(3600));

    let reqs = idp.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/token"));
    assert_eq!(
        r.basic_credentials(),
        Some(("my:client id".to_string(), "a:b%c+d e".to_string()))
    );
    assert_eq!(r.field("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(r.field("scope").as_deref(), Some("read write"));
    assert_eq!(r.field("audience").as_deref(), Some("https://api.test"));
    assert_eq!(r.form("resource"), ["https://r1.test", "https://r2.test"]);
    assert_eq!(r.field("client_secret"), None);
    assert_eq!(r.field("client_id"), None);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("accept").as_deref(), Some("application/json"));
    assert_eq!(
        r.header("user-agent"),
        Some(format!("tokctl/{}", env!("CARGO_PKG_VERSION")))
    );
}

#[tokio::test]
async fn client_secret_post_puts_both_in_the_body() {
    let idp = ScriptedIdp::start(|_| Scripted::json(200, token_json("AT"))).await;
    let auth = ClientAuth {
        client_id: "svc".into(),
        method: AuthMethod::Post(secret("s3cr3t&=+")),
    };
    client()
        .client_credentials(&idp.url("/token"), &auth, &TokenParams::default())
        .await
        .unwrap();
    let r = &idp.requests()[0];
    assert_eq!(r.field("client_id").as_deref(), Some("svc"));
    assert_eq!(r.field("client_secret").as_deref(), Some("s3cr3t&=+"));
    assert_eq!(r.header("authorization"), None);
    // No narrowing asked for: none sent.
    assert_eq!(r.field("scope"), None);
    assert_eq!(r.field("audience"), None);
    assert!(r.form("resource").is_empty());
}

#[tokio::test]
async fn refresh_sends_the_token_and_returns_rotation() {
    let idp = ScriptedIdp::start(|_| {
        Scripted::json(
            200,
            json!({"access_token": "AT-2", "token_type": "bearer", "expires_in": "600",
                   "refresh_token": "RT-2", "id_token": "h.p.s", "scope": "read", "unknown": [1, 2]}),
        )
    })
    .await;
    let t = client()
        .refresh(
            &idp.url("/token"),
            &public("cli"),
            &secret("RT-1"),
            &TokenParams {
                scopes: vec!["read".into()],
                ..TokenParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-2");
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, Some(600));
    assert_eq!(t.refresh_token.unwrap().expose_secret(), "RT-2");
    assert_eq!(t.id_token.unwrap().expose_secret(), "h.p.s");
    assert_eq!(t.scope.as_deref(), Some("read"));
    let r = &idp.requests()[0];
    assert_eq!(r.field("grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(r.field("refresh_token").as_deref(), Some("RT-1"));
    assert_eq!(r.field("client_id").as_deref(), Some("cli"));
    assert_eq!(r.field("scope").as_deref(), Some("read"));
}

#[tokio::test]
async fn refresh_without_rotation_returns_no_refresh_token() {
    let idp = ScriptedIdp::start(|_| Scripted::json(200, token_json("AT"))).await;
    let t = client()
        .refresh(
            &idp.url("/token"),
            &public("cli"),
            &secret("RT"),
            &TokenParams::default(),
        )
        .await
        .unwrap();
    assert!(t.refresh_token.is_none());
}

#[tokio::test]
async fn invalid_grant_means_login_required() {
    let idp = ScriptedIdp::start(|_| {
        Scripted::json(
            400,
            json!({"error": "invalid_grant", "error_description": "grant request is invalid"}),
        )
    })
    .await;
    let e = client()
        .refresh(
            &idp.url("/token"),
            &public("cli"),
            &secret("RT-dead"),
            &TokenParams::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::LoginRequired);
    assert_eq!(
        e.to_string(),
        format!(
            "token endpoint {}token rejected the grant: invalid_grant (grant request is invalid)",
            idp.base
        )
    );
    assert!(!format!("{e:?}").contains("RT-dead"));
}

#[tokio::test]
async fn password_grant_sends_username_and_password() {
    let idp = ScriptedIdp::start(|_| Scripted::json(200, token_json("AT"))).await;
    client()
        .password(
            &idp.url("/token"),
            &public("cli"),
            "alice",
            &secret("pw with spaces&"),
            &TokenParams::default(),
        )
        .await
        .unwrap();
    let r = &idp.requests()[0];
    assert_eq!(r.field("grant_type").as_deref(), Some("password"));
    assert_eq!(r.field("username").as_deref(), Some("alice"));
    assert_eq!(r.field("password").as_deref(), Some("pw with spaces&"));
}

#[tokio::test]
async fn device_flow_authorization_and_polls() {
    let polls = Arc::new(AtomicUsize::new(0));
    let n = polls.clone();
    let idp = ScriptedIdp::start(move |r| {
        if r.path == "/device" {
            return Scripted::json(
                200,
                json!({"device_code": "DC-1", "user_code": "WDJB-MJHT",
                       "verification_uri": "http://127.0.0.1/device",
                       "verification_uri_complete": "http://127.0.0.1/device?user_code=WDJB-MJHT",
                       "expires_in": 600, "interval": 2}),
            );
        }
        match n.fetch_add(1, Ordering::SeqCst) {
            0 => Scripted::json(400, json!({"error": "authorization_pending"})),
            1 => Scripted::json(400, json!({"error": "slow_down"})),
            2 => Scripted::json(403, json!({"error": "access_denied"})),
            3 => Scripted::json(400, json!({"error": "expired_token"})),
            _ => Scripted::json(200, token_json("AT-device")),
        }
    })
    .await;
    let c = client();
    let auth = public("tv");
    let d = c
        .device_authorization(&idp.url("/device"), &auth, &params())
        .await
        .unwrap();
    assert_eq!(d.device_code.expose_secret(), "DC-1");
    assert_eq!(d.user_code, "WDJB-MJHT");
    assert_eq!(d.interval, Some(2));
    assert_eq!(d.expires_in, 600);
    assert!(d.verification_uri_complete.is_some());

    let token = idp.url("/token");
    let expect = [
        (OAuthErrorCode::AuthorizationPending, ErrorClass::Pending),
        (OAuthErrorCode::SlowDown, ErrorClass::Pending),
        (OAuthErrorCode::AccessDenied, ErrorClass::Denied),
        (OAuthErrorCode::ExpiredToken, ErrorClass::Denied),
    ];
    for (code, class) in expect {
        let e = c
            .device_token(&token, &auth, &d.device_code)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OAuthError::Protocol { code: got, .. } if *got == code),
            "{e:?}"
        );
        assert_eq!(e.class(), class);
    }
    let t = c.device_token(&token, &auth, &d.device_code).await.unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-device");

    let reqs = idp.requests();
    assert_eq!(reqs.len(), 6);
    let dev = &reqs[0];
    assert_eq!(dev.field("client_id").as_deref(), Some("tv"));
    assert_eq!(dev.field("scope").as_deref(), Some("read write"));
    assert_eq!(dev.field("grant_type"), None);
    for poll in &reqs[1..] {
        assert_eq!(
            poll.field("grant_type").as_deref(),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(poll.field("device_code").as_deref(), Some("DC-1"));
        assert_eq!(poll.field("client_id").as_deref(), Some("tv"));
    }
}

#[tokio::test]
async fn device_authorization_with_http_verification_uri_is_refused() {
    let idp = ScriptedIdp::start(|_| {
        Scripted::json(
            200,
            json!({"device_code": "DC", "user_code": "U", "verification_uri": "http://phish.test/device", "expires_in": 600}),
        )
    })
    .await;
    let e = client()
        .device_authorization(&idp.url("/device"), &public("tv"), &TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::InvalidResponse(_)), "{e:?}");
    assert!(e.to_string().contains("not https"), "{e}");
}

#[tokio::test]
async fn exchange_code_sends_a_verifier_matching_the_challenge() {
    let idp = ScriptedIdp::start(|_| Scripted::json(200, token_json("AT-code"))).await;
    let verifier = PkceVerifier::new();
    let challenge = verifier.challenge();
    let t = client()
        .exchange_code(
            &idp.url("/token"),
            &public("cli"),
            &secret("CODE-1"),
            "http://127.0.0.1:4711/cb",
            &verifier,
        )
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-code");
    let r = &idp.requests()[0];
    assert_eq!(r.field("grant_type").as_deref(), Some("authorization_code"));
    assert_eq!(r.field("code").as_deref(), Some("CODE-1"));
    assert_eq!(
        r.field("redirect_uri").as_deref(),
        Some("http://127.0.0.1:4711/cb")
    );
    // What the server checks (RFC 7636 §4.6): S256(received verifier) == stored challenge.
    let sent = r.field("code_verifier").unwrap();
    let recomputed = PkceVerifier::from_secret(secret(&sent))
        .unwrap()
        .challenge();
    assert_eq!(recomputed, challenge);
}

#[tokio::test]
async fn revoke_outcomes() {
    let idp = ScriptedIdp::start(|r| match r.path.as_str() {
        "/ok" => Scripted::text(200, "text/plain", "whatever"),
        "/busy" => Scripted::text(503, "text/plain", "").header("retry-after", "30"),
        _ => Scripted::json(400, json!({"error": "unsupported_token_type"})),
    })
    .await;
    let c = client();
    let auth = ClientAuth {
        client_id: "cli".into(),
        method: AuthMethod::Basic(secret("sec")),
    };
    let rt = secret("RT-revoke");
    c.revoke(&idp.url("/ok"), &auth, &rt, TokenTypeHint::RefreshToken)
        .await
        .unwrap();
    let r = &idp.requests()[0];
    assert_eq!(r.field("token").as_deref(), Some("RT-revoke"));
    assert_eq!(r.field("token_type_hint").as_deref(), Some("refresh_token"));
    assert_eq!(r.basic_credentials(), Some(("cli".into(), "sec".into())));

    let e = c
        .revoke(&idp.url("/busy"), &auth, &rt, TokenTypeHint::RefreshToken)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));

    let e = c
        .revoke(&idp.url("/other"), &auth, &rt, TokenTypeHint::AccessToken)
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        OAuthError::Protocol {
            code: OAuthErrorCode::UnsupportedTokenType,
            status: 400,
            ..
        }
    ));
    assert_eq!(
        idp.requests()[2].field("token_type_hint").as_deref(),
        Some("access_token")
    );
}
