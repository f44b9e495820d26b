//! OpenID Connect ID token validation (OIDC Core §3.1.3.7) against the issuer's JWKS.

use crate::client::{Body, Ep, Reply, Target};
use crate::error::sanitize_text;
use crate::{OAuthClient, OAuthError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use url::Url;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 60;
/// At most this many keys are tried when the token names no `kid`.
const MAX_CANDIDATE_KEYS: usize = 10;

/// The validated claims of an ID token that tokctl may show or use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// Subject: the user's stable id at the issuer.
    pub sub: String,
    /// Issuer (equal to the expected one).
    pub iss: String,
    /// Audiences (one of them is our client id).
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: Option<u64>,
    /// Authorized party.
    pub azp: Option<String>,
    /// When the user authenticated, Unix seconds.
    pub auth_time: Option<u64>,
    /// E-mail address, if released.
    pub email: Option<String>,
    /// Whether the issuer verified the e-mail address.
    pub email_verified: Option<bool>,
    /// Display name, if released.
    pub name: Option<String>,
    /// Preferred user name, if released.
    pub preferred_username: Option<String>,
}

/// Claims as decoded. The ones jsonwebtoken requires are optional here so that a missing one
/// is reported as such (jsonwebtoken deserializes before it validates).
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    iss: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    aud: Vec<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    nonce: Option<String>,
    azp: Option<String>,
    auth_time: Option<u64>,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    preferred_username: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn id_err(msg: impl Into<String>) -> OAuthError {
    OAuthError::IdToken(msg.into())
}

/// The header's `alg`, restricted to asymmetric signatures: never `none`, never HMAC (a public
/// client's "secret" would be a key anyone can sign with).
fn signing_alg(token: &str) -> Result<Algorithm, OAuthError> {
    let header_b64 = token.split('.').next().unwrap_or_default();
    let header: Value = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| id_err("ID token is not a JWS"))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(id_err(format!(
                "ID token is signed with alg {:?}, which tokctl does not accept",
                sanitize_text(other, 20)
            )))
        }
    })
}

/// Whether a JWKS entry may verify a token with `alg` and `kid`.
fn key_fits(jwk: &Jwk, alg: Algorithm, kid: Option<&str>) -> bool {
    let c = &jwk.common;
    if let Some(kid) = kid {
        if c.key_id.as_deref() != Some(kid) {
            return false;
        }
    }
    if matches!(&c.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    if matches!(&c.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return false;
    }
    // A key that declares its algorithm is used with that algorithm only.
    if let Some(key_alg) = c.key_algorithm {
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), a) => matches!(
            a,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// The keys of a JWKS reply; entries this crate cannot parse (other key types) are skipped.
fn jwks_keys(t: &Target<'_>, reply: &Reply) -> Result<Vec<Jwk>, OAuthError> {
    if reply.status.as_u16() == 429 || reply.status.is_server_error() {
        return Err(reply.transient_status(t));
    }
    if !reply.status.is_success() {
        return Err(OAuthError::Discovery(format!(
            "{} answered HTTP {}: check jwks_uri",
            t.label,
            reply.status.as_u16()
        )));
    }
    let doc = match reply.parse() {
        Body::Object(m) => m,
        Body::OtherJson => Map::new(),
        Body::NotJson => return Err(reply.not_json(t)),
    };
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err(OAuthError::Discovery(format!(
            "{} has no keys array",
            t.label
        )));
    };
    Ok(keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect())
}

fn describe(kind: &ErrorKind, issuer: &str, client_id: &str) -> String {
    match kind {
        ErrorKind::InvalidSignature => {
            "ID token signature does not verify with the issuer's keys".into()
        }
        ErrorKind::ExpiredSignature => "ID token has expired".into(),
        ErrorKind::ImmatureSignature => "ID token is not valid yet (nbf in the future)".into(),
        ErrorKind::InvalidIssuer => {
            format!("ID token was not issued by {}", sanitize_text(issuer, 200))
        }
        ErrorKind::InvalidAudience => format!(
            "ID token is not meant for client {}",
            sanitize_text(client_id, 100)
        ),
        ErrorKind::MissingRequiredClaim(c) => {
            format!("ID token lacks the {} claim", sanitize_text(c, 20))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            format!("ID token claim {} has the wrong type", sanitize_text(c, 20))
        }
        ErrorKind::Json(_) => "ID token claims are malformed".into(),
        _ => "ID token is invalid".into(),
    }
}

/// Errors raised before the signature was accepted; any other error means a key verified it.
fn is_key_error(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidAlgorithm
    )
}

impl OAuthClient {
    /// Fetches the JWKS and validates an ID token: asymmetric signature (RS*, PS*, ES256/384,
    /// EdDSA; never `none` or HMAC), `iss` equal to `issuer`, `aud` containing `client_id`
    /// (and `azp` equal to it when present or when there are several audiences), `exp` in the
    /// future with 60 s leeway, and `nonce` equal to the expected one when `nonce` is `Some`
    /// (ID tokens from a refresh carry no fresh nonce).
    pub async fn validate_id_token(
        &self,
        jwks_uri: &Url,
        id_token: &SecretString,
        issuer: &str,
        client_id: &str,
        nonce: Option<&str>,
    ) -> Result<IdClaims, OAuthError> {
        let token = id_token.expose_secret();
        let alg = signing_alg(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| id_err("ID token header is malformed"))?;
        let t = Target::new(Ep::Jwks, jwks_uri)?;
        let reply = self.get(&t).await?;
        let keys = jwks_keys(&t, &reply)?;
        let candidates: Vec<DecodingKey> = keys
            .iter()
            .filter(|k| key_fits(k, alg, header.kid.as_deref()))
            .filter_map(|k| DecodingKey::from_jwk(k).ok())
            .take(MAX_CANDIDATE_KEYS)
            .collect();
        if candidates.is_empty() {
            return Err(id_err(format!(
                "no key at {} fits the ID token (alg {alg:?}, kid {:?})",
                t.label,
                header.kid.as_deref().map(|k| sanitize_text(k, 60))
            )));
        }

        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[client_id]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        ensure_crypto_provider();
        let mut key_error = None;
        for key in &candidates {
            match jsonwebtoken::decode::<RawClaims>(token, key, &validation) {
                Ok(data) => return check_claims(data.claims, client_id, nonce),
                Err(e) if is_key_error(e.kind()) => key_error = Some(e),
                // The signature verified; the claims did not.
                Err(e) => return Err(id_err(describe(e.kind(), issuer, client_id))),
            }
        }
        let kind = key_error
            .map(|e| e.into_kind())
            .unwrap_or(ErrorKind::InvalidSignature);
        Err(id_err(describe(&kind, issuer, client_id)))
    }
}

fn check_claims(
    c: RawClaims,
    client_id: &str,
    nonce: Option<&str>,
) -> Result<IdClaims, OAuthError> {
    // OIDC Core §3.1.3.7 items 4 and 5.
    if c.aud.len() > 1 && c.azp.is_none() {
        return Err(id_err("ID token has several audiences but no azp claim"));
    }
    if matches!(&c.azp, Some(azp) if azp != client_id) {
        return Err(id_err(format!(
            "ID token was issued to another party (azp is not {})",
            sanitize_text(client_id, 100)
        )));
    }
    if let Some(expected) = nonce {
        match &c.nonce {
            Some(n) if n == expected => {}
            Some(_) => return Err(id_err("ID token nonce does not match this login")),
            None => return Err(id_err("ID token has no nonce")),
        }
    }
    let (Some(sub), Some(iss), Some(exp)) = (c.sub, c.iss, c.exp) else {
        // Unreachable after jsonwebtoken's required-claims check; refuse rather than trust that.
        return Err(id_err("ID token lacks sub, iss or exp"));
    };
    Ok(IdClaims {
        sub,
        iss,
        aud: c.aud,
        exp,
        iat: c.iat,
        azp: c.azp,
        auth_time: c.auth_time,
        email: c.email,
        email_verified: c.email_verified,
        name: c.name,
        preferred_username: c.preferred_username,
    })
}

/// jsonwebtoken picks its backend from crate features and panics at first use when another
/// crate in the build enables a second one; installing ours explicitly avoids that (and an
/// application's earlier choice wins).
fn ensure_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_lookup() {
        for alg in ["none", "HS256", "HS512", "", "RSA-OAEP"] {
            let token = format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": alg})),
                b64(&serde_json::json!({"sub": "x"}))
            );
            let e = signing_alg(&token).unwrap_err();
            assert!(matches!(e, OAuthError::IdToken(_)), "{alg}");
        }
        assert!(signing_alg("not a jwt").is_err());
        let ok = format!("{}.e30.sig", b64(&serde_json::json!({"alg": "ES256"})));
        assert_eq!(signing_alg(&ok).unwrap(), Algorithm::ES256);
    }

    fn jwk(v: Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn key_selection_respects_kid_use_alg_and_curve() {
        let ec = |extra: Value| {
            let mut base =
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k1"});
            base.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            jwk(base)
        };
        assert!(key_fits(
            &ec(serde_json::json!({})),
            Algorithm::ES256,
            Some("k1")
        ));
        assert!(key_fits(&ec(serde_json::json!({})), Algorithm::ES256, None));
        assert!(!key_fits(
            &ec(serde_json::json!({})),
            Algorithm::ES256,
            Some("k2")
        ));
        assert!(!key_fits(
            &ec(serde_json::json!({})),
            Algorithm::ES384,
            Some("k1")
        ));
        assert!(!key_fits(
            &ec(serde_json::json!({})),
            Algorithm::RS256,
            Some("k1")
        ));
        assert!(!key_fits(
            &ec(serde_json::json!({"use": "enc"})),
            Algorithm::ES256,
            None
        ));
        assert!(!key_fits(
            &ec(serde_json::json!({"alg": "ES384"})),
            Algorithm::ES256,
            None
        ));
        assert!(key_fits(
            &ec(serde_json::json!({"alg": "ES256", "use": "sig"})),
            Algorithm::ES256,
            None
        ));
        let oct = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        for alg in [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            assert!(!key_fits(&oct, alg, None));
        }
    }
}
