//! TLS against a scripted https server whose CA is generated at test time.

use crate::support::{token_json, Scripted, ScriptedIdp};
use crate::{public, secret};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use secrecy::ExposeSecret;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokctl_oauth::{ErrorClass, HttpOptions, OAuthClient, OAuthError, TokenParams};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, crypto::ring};

struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// A server configuration with a leaf certificate for `names`, signed by this CA.
    fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap()
    }

    fn pem_file(&self, dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("ca.pem");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(self.cert.pem().as_bytes())
            .unwrap();
        path
    }
}

fn client_with(ca_file: Option<PathBuf>) -> OAuthClient {
    OAuthClient::new(&HttpOptions {
        ca_file,
        ..HttpOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn ca_file_makes_a_private_ca_trusted_and_nothing_else_does() {
    let ca = TestCa::new("tokctl test CA");
    let idp = ScriptedIdp::start_tls(ca.server_config(&["127.0.0.1"]), |_| {
        Scripted::json(200, token_json("AT-tls"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = idp.url("/token");
    let auth = public("cli");
    let rt = secret("RT");

    let t = client_with(Some(ca.pem_file(&dir)))
        .refresh(&token, &auth, &rt, &TokenParams::default())
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-tls");
    assert_eq!(idp.requests().len(), 1);

    // Without the CA: fails closed, is not transient, says what to do.
    let e = client_with(None)
        .refresh(&token, &auth, &rt, &TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Tls(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(
        e.to_string()
            .contains("certificate not trusted for 127.0.0.1"),
        "{e}"
    );
    assert!(e.to_string().contains("ca_file"), "{e}");

    // Another CA's file does not help either.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("someone else");
    let e = client_with(Some(other.pem_file(&other_dir)))
        .refresh(&token, &auth, &rt, &TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Tls(_)), "{e:?}");
    // None of the failed handshakes reached the HTTP layer.
    assert_eq!(idp.requests().len(), 1);
}

#[tokio::test]
async fn certificate_for_another_host_fails_closed() {
    let ca = TestCa::new("tokctl test CA");
    let idp = ScriptedIdp::start_tls(ca.server_config(&["idp.other.test"]), |_| {
        Scripted::json(200, token_json("AT"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let e = client_with(Some(ca.pem_file(&dir)))
        .refresh(
            &idp.url("/token"),
            &public("cli"),
            &secret("RT"),
            &TokenParams::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Tls(_)), "{e:?}");
    assert!(
        e.to_string().contains("not valid for that host name"),
        "{e}"
    );
    assert!(idp.requests().is_empty());
}

#[test]
fn unusable_ca_files_are_config_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no pem here\n").unwrap();
    for path in [missing, garbage, empty] {
        let e = OAuthClient::new(&HttpOptions {
            ca_file: Some(path.clone()),
            ..HttpOptions::default()
        })
        .unwrap_err();
        assert!(matches!(e, OAuthError::Config(_)), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
