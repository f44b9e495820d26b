//! PKCE (RFC 7636), `state`/`nonce` values and the authorization request URL.

use crate::{OAuthError, TokenParams};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;
use zeroize::Zeroizing;

/// A PKCE code verifier: 32 random bytes, base64url (43 characters), kept secret.
#[derive(Debug, Clone)]
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    /// A fresh verifier with 256 bits from the OS random generator.
    pub fn new() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        PkceVerifier(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    /// Wraps an existing verifier; it must be 43 to 128 unreserved characters (RFC 7636 §4.1).
    pub fn from_secret(verifier: SecretString) -> Result<Self, OAuthError> {
        let v = verifier.expose_secret();
        let valid_chars = v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !(43..=128).contains(&v.len()) || !valid_chars {
            return Err(OAuthError::Config(
                "PKCE verifier must be 43 to 128 unreserved characters".into(),
            ));
        }
        Ok(PkceVerifier(verifier))
    }

    /// The S256 code challenge: BASE64URL(SHA256(verifier)).
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }

    /// The verifier itself, for the token request.
    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl Default for PkceVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh `state` (or `nonce`) value: 256 random bits, base64url (43 characters).
pub fn random_state() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds the authorization request URL: response_type=code, client_id, redirect_uri, scope,
/// state, code_challenge, code_challenge_method=S256, nonce (when given), audience and
/// resource. Query parameters already in `endpoint` are kept (RFC 6749 §3.1).
pub fn authorization_url(
    endpoint: &Url,
    client_id: &str,
    redirect_uri: &str,
    p: &TokenParams,
    state: &str,
    challenge: &str,
    nonce: Option<&str>,
) -> Url {
    let mut url = endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !p.scopes.is_empty() {
            q.append_pair("scope", &p.scopes.join(" "));
        }
        q.append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(nonce) = nonce {
            q.append_pair("nonce", nonce);
        }
        if let Some(audience) = &p.audience {
            q.append_pair("audience", audience);
        }
        for resource in &p.resources {
            q.append_pair("resource", resource);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = PkceVerifier::from_secret(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ))
        .unwrap();
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn fresh_verifiers_are_43_unreserved_chars_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let v = PkceVerifier::new();
            let s = v.secret().expose_secret().to_owned();
            assert_eq!(s.len(), 43);
            assert!(PkceVerifier::from_secret(SecretString::from(s.clone())).is_ok());
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn verifier_rules_and_redacted_debug() {
        assert!(PkceVerifier::from_secret(SecretString::from("short")).is_err());
        assert!(PkceVerifier::from_secret(SecretString::from("a".repeat(129))).is_err());
        assert!(
            PkceVerifier::from_secret(SecretString::from(format!("{}+", "a".repeat(43)))).is_err()
        );
        let v = PkceVerifier::from_secret(SecretString::from("A".repeat(43))).unwrap();
        assert!(!format!("{v:?}").contains("AAAA"));
    }

    #[test]
    fn state_has_256_bits() {
        let a = random_state();
        assert_eq!(a.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_state());
    }

    #[test]
    fn authorization_url_carries_every_parameter() {
        let endpoint = Url::parse("https://idp.test/authorize?tenant=t1").unwrap();
        let p = TokenParams {
            scopes: vec!["openid".into(), "offline_access".into()],
            audience: Some("https://api".into()),
            resources: vec!["https://r1".into(), "https://r2".into()],
        };
        let url = authorization_url(
            &endpoint,
            "cli",
            "http://127.0.0.1:4711/cb",
            &p,
            "st",
            "ch",
            Some("nn"),
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(a, _)| a == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("tenant"), ["t1"]);
        assert_eq!(get("response_type"), ["code"]);
        assert_eq!(get("client_id"), ["cli"]);
        assert_eq!(get("redirect_uri"), ["http://127.0.0.1:4711/cb"]);
        assert_eq!(get("scope"), ["openid offline_access"]);
        assert_eq!(get("state"), ["st"]);
        assert_eq!(get("code_challenge"), ["ch"]);
        assert_eq!(get("code_challenge_method"), ["S256"]);
        assert_eq!(get("nonce"), ["nn"]);
        assert_eq!(get("audience"), ["https://api"]);
        assert_eq!(get("resource"), ["https://r1", "https://r2"]);

        let bare = authorization_url(
            &endpoint,
            "cli",
            "r",
            &TokenParams::default(),
            "s",
            "c",
            None,
        );
        let keys: Vec<String> = bare.query_pairs().map(|(k, _)| k.into_owned()).collect();
        assert!(!keys
            .iter()
            .any(|k| k == "scope" || k == "nonce" || k == "audience" || k == "resource"));
    }
}
