//! Authorization server metadata: RFC 8414 and OpenID Connect Discovery.

use crate::client::{Body, Ep, Reply, Target};
use crate::error::sanitize_text;
use crate::urls::{check_url, display_url};
use crate::{OAuthClient, OAuthError};
use serde_json::{Map, Value};
use url::Url;

/// The parts of the server metadata tokctl uses; unknown members are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The issuer, equal to the configured one character for character.
    pub issuer: String,
    /// Token endpoint.
    pub token_endpoint: Url,
    /// Authorization endpoint (authorization code flow).
    pub authorization_endpoint: Option<Url>,
    /// Device authorization endpoint (RFC 8628).
    pub device_authorization_endpoint: Option<Url>,
    /// Revocation endpoint (RFC 7009).
    pub revocation_endpoint: Option<Url>,
    /// Introspection endpoint (RFC 7662).
    pub introspection_endpoint: Option<Url>,
    /// Where the ID token signing keys are.
    pub jwks_uri: Option<Url>,
    /// PKCE methods the server supports.
    pub code_challenge_methods_supported: Vec<String>,
    /// Whether the server sends `iss` in authorization responses (RFC 9207).
    pub authorization_response_iss_parameter_supported: bool,
    /// Grant types the server supports.
    pub grant_types_supported: Vec<String>,
}

/// The well-known URLs to try for an issuer, in order: OIDC (suffix appended to the path),
/// then RFC 8414 (suffix inserted between host and path). Without a path both are at the root.
pub(crate) fn discovery_urls(issuer: &Url) -> [Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    [oidc, rfc8414]
}

impl OAuthClient {
    /// Fetches and checks the issuer's metadata (RFC 8414 and OIDC discovery, path-aware).
    /// The document's `issuer` must equal `issuer` exactly, and every endpoint in it must pass
    /// [`check_url`](crate::check_url).
    pub async fn discover(&self, issuer: &str) -> Result<Metadata, OAuthError> {
        let shown = sanitize_text(issuer, 200);
        let issuer_url = Url::parse(issuer)
            .map_err(|_| OAuthError::Config(format!("issuer {shown:?} is not a URL")))?;
        check_url(&issuer_url, "issuer")?;
        if issuer_url.query().is_some() {
            return Err(OAuthError::Config(format!(
                "issuer {shown} must not have a query (RFC 8414 §2)"
            )));
        }
        let urls = discovery_urls(&issuer_url);
        let mut transient = None;
        for url in &urls {
            let t = Target::new(Ep::Discovery, url)?;
            let outcome = self.get(&t).await.and_then(|r| metadata_json(&t, &r));
            match outcome {
                Ok(Some(m)) => return parse_metadata(m, issuer, &t),
                Ok(None) => {}
                // Try the other location; report the transient failure only if it fails too.
                Err(e @ OAuthError::Transient { .. }) => transient = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(transient.unwrap_or_else(|| {
            OAuthError::Discovery(format!(
                "no metadata for issuer {shown} at {} or {}: check the issuer URL",
                display_url(&urls[0]),
                display_url(&urls[1])
            ))
        }))
    }
}

/// `Ok(None)` when there is no document at this location (a 4xx).
pub(crate) fn metadata_json(
    t: &Target<'_>,
    reply: &Reply,
) -> Result<Option<Map<String, Value>>, OAuthError> {
    let status = reply.status;
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(reply.transient_status(t));
    }
    if status.is_client_error() {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(reply.transient_status(t));
    }
    match reply.parse() {
        Body::Object(m) => Ok(Some(m)),
        Body::OtherJson => Err(OAuthError::Discovery(format!(
            "{} is JSON but not an object",
            t.label
        ))),
        Body::NotJson => Err(reply.not_json(t)),
    }
}

pub(crate) fn parse_metadata(
    m: Map<String, Value>,
    issuer: &str,
    t: &Target<'_>,
) -> Result<Metadata, OAuthError> {
    let fail = |msg: String| OAuthError::Discovery(format!("{} {msg}", t.label));
    match m.get("issuer") {
        // RFC 8414 §3.3 / OIDC Discovery §4.3: exact comparison, no normalisation (mix-up defence).
        Some(Value::String(s)) if s == issuer => {}
        Some(Value::String(s)) => {
            return Err(fail(format!(
                "names issuer {:?}, not the configured {:?}: refusing it",
                sanitize_text(s, 200),
                sanitize_text(issuer, 200)
            )))
        }
        _ => return Err(fail("has no issuer".into())),
    }
    // Every endpoint, even those tokctl does not use yet, must be https (or loopback http).
    for (key, value) in &m {
        if !(key.ends_with("_endpoint") || key == "jwks_uri") {
            continue;
        }
        let key = sanitize_text(key, 60);
        let Value::String(s) = value else {
            return Err(fail(format!("has a {key} that is not a string")));
        };
        let url = Url::parse(s).map_err(|_| fail(format!("has a {key} that is not a URL")))?;
        check_url(&url, &key).map_err(|e| fail(format!("is unusable: {e}")))?;
    }
    let endpoint = |key: &str| -> Option<Url> {
        match m.get(key) {
            Some(Value::String(s)) => Url::parse(s).ok(),
            _ => None,
        }
    };
    let strings = |key: &str| -> Vec<String> {
        match m.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    Ok(Metadata {
        issuer: issuer.to_owned(),
        token_endpoint: endpoint("token_endpoint")
            .ok_or_else(|| fail("has no token_endpoint".into()))?,
        authorization_endpoint: endpoint("authorization_endpoint"),
        device_authorization_endpoint: endpoint("device_authorization_endpoint"),
        revocation_endpoint: endpoint("revocation_endpoint"),
        introspection_endpoint: endpoint("introspection_endpoint"),
        jwks_uri: endpoint("jwks_uri"),
        code_challenge_methods_supported: strings("code_challenge_methods_supported"),
        authorization_response_iss_parameter_supported: m
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        grant_types_supported: strings("grant_types_supported"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn urls(issuer: &str) -> [String; 2] {
        discovery_urls(&Url::parse(issuer).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn well_known_locations_are_path_aware() {
        assert_eq!(
            urls("https://h/p"),
            [
                "https://h/p/.well-known/openid-configuration",
                "https://h/.well-known/oauth-authorization-server/p"
            ]
        );
        assert_eq!(
            urls("https://h/realms/x/"),
            [
                "https://h/realms/x/.well-known/openid-configuration",
                "https://h/.well-known/oauth-authorization-server/realms/x"
            ]
        );
        for root in ["https://h", "https://h/"] {
            assert_eq!(
                urls(root),
                [
                    "https://h/.well-known/openid-configuration",
                    "https://h/.well-known/oauth-authorization-server"
                ]
            );
        }
        assert_eq!(
            urls("http://127.0.0.1:8080/issuer1"),
            [
                "http://127.0.0.1:8080/issuer1/.well-known/openid-configuration",
                "http://127.0.0.1:8080/.well-known/oauth-authorization-server/issuer1"
            ]
        );
    }

    fn parse(doc: Value, issuer: &str) -> Result<Metadata, OAuthError> {
        let url = Url::parse("https://a.test/.well-known/openid-configuration").unwrap();
        let t = Target::new(Ep::Discovery, &url).unwrap();
        match doc {
            Value::Object(m) => parse_metadata(m, issuer, &t),
            _ => unreachable!(),
        }
    }

    #[test]
    fn issuer_must_match_exactly() {
        let doc = |iss: &str| json!({"issuer": iss, "token_endpoint": "https://a.test/token"});
        assert!(parse(doc("https://a.test"), "https://a.test").is_ok());
        for other in [
            "https://a.test/",
            "https://A.test",
            "https://b.test",
            "http://a.test",
        ] {
            let e = parse(doc(other), "https://a.test").unwrap_err();
            assert!(matches!(e, OAuthError::Discovery(_)), "{other}");
        }
        let e = parse(
            json!({"token_endpoint": "https://a.test/token"}),
            "https://a.test",
        )
        .unwrap_err();
        assert!(e.to_string().contains("has no issuer"));
    }

    #[test]
    fn every_endpoint_must_be_https() {
        let base = json!({
            "issuer": "https://a.test",
            "token_endpoint": "https://a.test/token",
            "authorization_endpoint": "https://a.test/auth",
            "device_authorization_endpoint": "https://a.test/device",
            "revocation_endpoint": "https://a.test/revoke",
            "introspection_endpoint": "https://a.test/introspect",
            "jwks_uri": "https://a.test/jwks",
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["refresh_token", 7],
            "authorization_response_iss_parameter_supported": true,
            "unknown_member": {"x": [1]},
            "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.a.test/token"}
        });
        let md = parse(base.clone(), "https://a.test").unwrap();
        assert_eq!(md.token_endpoint.as_str(), "https://a.test/token");
        assert_eq!(md.jwks_uri.unwrap().as_str(), "https://a.test/jwks");
        assert_eq!(md.code_challenge_methods_supported, ["plain", "S256"]);
        assert_eq!(md.grant_types_supported, ["refresh_token"]);
        assert!(md.authorization_response_iss_parameter_supported);
        for key in [
            "token_endpoint",
            "revocation_endpoint",
            "jwks_uri",
            "userinfo_endpoint",
            "end_session_endpoint",
        ] {
            let mut doc = base.clone();
            doc[key] = json!("http://a.test/x");
            let e = parse(doc, "https://a.test").unwrap_err();
            assert!(matches!(e, OAuthError::Discovery(_)), "{key}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let mut doc = base.clone();
        doc["token_endpoint"] = json!(42);
        assert!(parse(doc, "https://a.test").is_err());
        let mut doc = base;
        doc.as_object_mut().unwrap().remove("token_endpoint");
        assert!(parse(doc, "https://a.test")
            .unwrap_err()
            .to_string()
            .contains("no token_endpoint"));
    }
}
