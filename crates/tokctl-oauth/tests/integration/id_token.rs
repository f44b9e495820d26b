//! ID token validation with keys generated at test time and a scripted JWKS endpoint.

use crate::support::{Scripted, ScriptedIdp};
use crate::{client, secret};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tokctl_oauth::{ErrorClass, OAuthError};

const ISS: &str = "https://idp.test/realms/x";
const CLIENT: &str = "tokctl-cli";
const NONCE: &str = "n-0S6_WzA2Mj";

struct Keys {
    ed: KeyPair,
    ec: KeyPair,
}

impl Keys {
    fn new() -> Self {
        Keys {
            ed: KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            ec: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwks(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let ec_raw = self.ec.public_key_raw();
        assert_eq!(ec_raw.len(), 65);
        json!({"keys": [
            // Entries this crate cannot or must not use are skipped, not fatal.
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(self.ed.public_key_raw()), "kid": "ed", "use": "sig", "alg": "EdDSA"},
            {"kty": "EC", "crv": "P-256", "x": b64(&ec_raw[1..33]), "y": b64(&ec_raw[33..]), "kid": "ec"}
        ]})
    }

    fn sign(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.ed.serialize_der()),
            Algorithm::ES256 => EncodingKey::from_ec_der(&self.ec.serialize_der()),
            _ => unreachable!(),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "user-1", "aud": CLIENT, "exp": now() + 300, "iat": now(),
           "nonce": NONCE, "email": "a@b.test", "preferred_username": "alice"})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

async fn validate(
    idp: &ScriptedIdp,
    token: &str,
    nonce: Option<&str>,
) -> Result<tokctl_oauth::IdClaims, OAuthError> {
    client()
        .validate_id_token(&idp.url("/jwks"), &secret(token), ISS, CLIENT, nonce)
        .await
}

async fn jwks_server(keys: &Keys) -> ScriptedIdp {
    let jwks = keys.jwks();
    ScriptedIdp::start(move |_| Scripted::json(200, jwks.clone())).await
}

#[tokio::test]
async fn valid_tokens_verify_with_eddsa_and_es256() {
    let keys = Keys::new();
    let idp = jwks_server(&keys).await;

    let c = validate(
        &idp,
        &keys.sign(Algorithm::EdDSA, "ed", &claims()),
        Some(NONCE),
    )
    .await
    .unwrap();
    assert_eq!(c.sub, "user-1");
    assert_eq!(c.iss, ISS);
    assert_eq!(c.aud, [CLIENT]);
    assert_eq!(c.email.as_deref(), Some("a@b.test"));
    assert_eq!(c.preferred_username.as_deref(), Some("alice"));

    let multi = with(
        with(claims(), "aud", json!([CLIENT, "api"])),
        "azp",
        json!(CLIENT),
    );
    let c = validate(
        &idp,
        &keys.sign(Algorithm::ES256, "ec", &multi),
        Some(NONCE),
    )
    .await
    .unwrap();
    assert_eq!(c.aud, [CLIENT, "api"]);
    assert_eq!(c.azp.as_deref(), Some(CLIENT));

    // Within the 60 s leeway.
    let recent = with(claims(), "exp", json!(now() - 30));
    assert!(validate(
        &idp,
        &keys.sign(Algorithm::EdDSA, "ed", &recent),
        Some(NONCE)
    )
    .await
    .is_ok());

    // After a refresh there is no nonce to compare.
    let no_nonce = {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        c
    };
    assert!(
        validate(&idp, &keys.sign(Algorithm::EdDSA, "ed", &no_nonce), None)
            .await
            .is_ok()
    );
    let e = validate(
        &idp,
        &keys.sign(Algorithm::EdDSA, "ed", &no_nonce),
        Some(NONCE),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no nonce"), "{e}");
}

#[tokio::test]
async fn claim_violations_are_refused() {
    let keys = Keys::new();
    let idp = jwks_server(&keys).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            with(claims(), "nonce", json!("other")),
            "nonce does not match",
        ),
        (with(claims(), "exp", json!(now() - 3600)), "expired"),
        (with(claims(), "exp", json!("never")), "ID token"),
        (
            with(claims(), "iss", json!(format!("{ISS}/"))),
            "not issued by",
        ),
        (
            with(claims(), "aud", json!("someone-else")),
            "not meant for client",
        ),
        (with(claims(), "aud", json!([CLIENT, "api"])), "no azp"),
        (
            with(claims(), "azp", json!("someone-else")),
            "another party",
        ),
        (with(claims(), "nbf", json!(now() + 3600)), "not valid yet"),
        (
            {
                let mut c = claims();
                c.as_object_mut().unwrap().remove("sub");
                c
            },
            "sub",
        ),
    ];
    for (c, expect) in cases {
        let e = validate(&idp, &keys.sign(Algorithm::EdDSA, "ed", &c), Some(NONCE))
            .await
            .unwrap_err();
        assert!(matches!(e, OAuthError::IdToken(_)), "{expect}: {e:?}");
        assert_eq!(e.class(), ErrorClass::Config);
        assert!(e.to_string().contains(expect), "{expect}: {e}");
    }
}

#[tokio::test]
async fn forged_and_unsigned_tokens_are_refused() {
    let keys = Keys::new();
    let idp = jwks_server(&keys).await;

    // Signed by a key the issuer never published, under a published kid.
    let forger = Keys::new();
    let e = validate(
        &idp,
        &forger.sign(Algorithm::EdDSA, "ed", &claims()),
        Some(NONCE),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("signature does not verify"), "{e}");

    // Payload swapped after signing.
    let good = keys.sign(Algorithm::EdDSA, "ed", &claims());
    let evil =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with(claims(), "sub", json!("admin"))).unwrap());
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], evil, parts[2]);
    assert!(matches!(
        validate(&idp, &spliced, Some(NONCE)).await,
        Err(OAuthError::IdToken(_))
    ));

    // Unknown kid.
    let e = validate(
        &idp,
        &keys.sign(Algorithm::EdDSA, "rotated-away", &claims()),
        Some(NONCE),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no key at"), "{e}");

    // alg none, and HMAC with the JWKS's own "oct" key as the secret.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#)
    );
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("hmac".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    for token in [none, hs] {
        let e = validate(&idp, &token, Some(NONCE)).await.unwrap_err();
        assert!(matches!(e, OAuthError::IdToken(_)), "{e:?}");
        assert!(e.to_string().contains("does not accept"), "{e}");
    }
    // Only the valid ones ever needed the JWKS: the refused algorithms never fetched it.
    assert_eq!(idp.requests().len(), 3);
}

#[tokio::test]
async fn jwks_outage_is_transient() {
    let keys = Keys::new();
    let idp = ScriptedIdp::start(|_| Scripted::text(503, "text/plain", "")).await;
    let e = validate(
        &idp,
        &keys.sign(Algorithm::EdDSA, "ed", &claims()),
        Some(NONCE),
    )
    .await
    .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
}
