//! Discovery against scripted metadata: locations, exact issuer match, endpoint rules.

use crate::client;
use crate::support::{Scripted, ScriptedIdp};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokctl_oauth::{ErrorClass, OAuthError};

/// A server that answers `doc` at `path` only (404 elsewhere). The document is filled in once
/// the server's address is known.
async fn serve_at(path: &'static str) -> (ScriptedIdp, Arc<Mutex<Value>>) {
    let doc = Arc::new(Mutex::new(Value::Null));
    let d = doc.clone();
    let idp = ScriptedIdp::start(move |r| {
        if r.path == path {
            Scripted::json(200, d.lock().unwrap().clone())
        } else {
            Scripted::text(404, "text/plain", "not found")
        }
    })
    .await;
    (idp, doc)
}

fn metadata(issuer: &str, base: &str) -> Value {
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}token"),
        "device_authorization_endpoint": format!("{base}device"),
        "revocation_endpoint": format!("{base}revoke"),
        "jwks_uri": format!("{base}jwks"),
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        "authorization_response_iss_parameter_supported": true
    })
}

#[tokio::test]
async fn rfc8414_location_for_an_issuer_with_a_path() {
    let (idp, doc) = serve_at("/.well-known/oauth-authorization-server/tenant1").await;
    let issuer = idp.issuer("/tenant1");
    *doc.lock().unwrap() = metadata(&issuer, idp.base.as_str());
    let md = client().discover(&issuer).await.unwrap();
    assert_eq!(md.issuer, issuer);
    assert_eq!(md.token_endpoint, idp.url("/token"));
    assert_eq!(md.device_authorization_endpoint, Some(idp.url("/device")));
    assert_eq!(md.revocation_endpoint, Some(idp.url("/revoke")));
    assert_eq!(md.jwks_uri, Some(idp.url("/jwks")));
    assert_eq!(md.authorization_endpoint, None);
    assert!(md.authorization_response_iss_parameter_supported);
    assert_eq!(md.code_challenge_methods_supported, ["S256"]);
    let paths: Vec<String> = idp.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/tenant1/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant1"
        ]
    );
}

#[tokio::test]
async fn oidc_location_is_tried_first() {
    let (idp, doc) = serve_at("/realms/x/.well-known/openid-configuration").await;
    let issuer = idp.issuer("/realms/x");
    *doc.lock().unwrap() = metadata(&issuer, idp.base.as_str());
    client().discover(&issuer).await.unwrap();
    assert_eq!(idp.requests().len(), 1);
}

#[tokio::test]
async fn issuer_mismatch_is_refused() {
    let (idp, doc) = serve_at("/.well-known/openid-configuration").await;
    let configured = idp.issuer("");
    // The document says "…/" while the configuration says "…": no normalisation.
    *doc.lock().unwrap() = metadata(&format!("{configured}/"), idp.base.as_str());
    let e = client().discover(&configured).await.unwrap_err();
    assert!(matches!(e, OAuthError::Discovery(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(e.to_string().contains("refusing it"), "{e}");

    *doc.lock().unwrap() = metadata("https://other.test", idp.base.as_str());
    assert!(matches!(
        client().discover(&configured).await,
        Err(OAuthError::Discovery(_))
    ));
}

#[tokio::test]
async fn metadata_with_a_plain_http_endpoint_is_refused() {
    let (idp, doc) = serve_at("/.well-known/openid-configuration").await;
    let issuer = idp.issuer("");
    let mut md = metadata(&issuer, idp.base.as_str());
    md["token_endpoint"] = json!("http://evil.test/token");
    *doc.lock().unwrap() = md;
    let e = client().discover(&issuer).await.unwrap_err();
    assert!(matches!(e, OAuthError::Discovery(_)), "{e:?}");
    assert!(e.to_string().contains("token_endpoint"), "{e}");
}

#[tokio::test]
async fn no_metadata_anywhere_is_a_discovery_error() {
    let (idp, _doc) = serve_at("/nowhere").await;
    let e = client().discover(&idp.issuer("/t")).await.unwrap_err();
    assert!(matches!(e, OAuthError::Discovery(_)), "{e:?}");
    assert!(e.to_string().contains("check the issuer URL"), "{e}");
    assert_eq!(idp.requests().len(), 2);
}

#[tokio::test]
async fn failing_server_makes_discovery_transient() {
    let idp = ScriptedIdp::start(|_| Scripted::text(503, "text/plain", "")).await;
    let e = client().discover(&idp.issuer("")).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
}

#[tokio::test]
async fn html_at_the_oidc_location_falls_back_to_rfc8414() {
    // Single-page apps answer every path with their index.html.
    let doc = Arc::new(Mutex::new(Value::Null));
    let d = doc.clone();
    let idp = ScriptedIdp::start(move |r| {
        if r.path
            .starts_with("/.well-known/oauth-authorization-server")
        {
            Scripted::json(200, d.lock().unwrap().clone())
        } else {
            Scripted::text(200, "text/html", "<html>app</html>")
        }
    })
    .await;
    let issuer = idp.issuer("/app");
    *doc.lock().unwrap() = metadata(&issuer, idp.base.as_str());
    assert_eq!(client().discover(&issuer).await.unwrap().issuer, issuer);
}

#[tokio::test]
async fn bad_issuers_are_config_errors_without_a_request() {
    for issuer in [
        "http://idp.example.com",
        "not a url",
        "https://idp.test/?x=1",
    ] {
        let e = client().discover(issuer).await.unwrap_err();
        assert!(matches!(e, OAuthError::Config(_)), "{issuer}: {e:?}");
    }
}
