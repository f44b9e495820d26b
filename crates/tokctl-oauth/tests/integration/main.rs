//! Tests of tokctl-oauth against a local scripted server (the harness's fault injector).

mod discovery;
mod faults;
mod grants;
mod id_token;
mod support;
mod tls;

use secrecy::SecretString;
use tokctl_oauth::{AuthMethod, ClientAuth, HttpOptions, OAuthClient};

fn client() -> OAuthClient {
    OAuthClient::new(&HttpOptions::default()).unwrap()
}

fn public(id: &str) -> ClientAuth {
    ClientAuth {
        client_id: id.into(),
        method: AuthMethod::None,
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

/// The daemon drives these futures on a multi-threaded runtime (tokio::spawn): they must be
/// Send, or the daemon does not compile. A regression here fails this test's build.
#[test]
fn client_and_request_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    fn assert_send_sync_clone<T: Send + Sync + Clone>(_: &T) {}
    let c = client();
    assert_send_sync_clone(&c);
    let url = url::Url::parse("https://idp.test/token").unwrap();
    let auth = public("cli");
    let s = secret("s");
    let p = tokctl_oauth::TokenParams::default();
    let v = tokctl_oauth::PkceVerifier::new();
    assert_send(c.discover("https://idp.test"));
    assert_send(c.client_credentials(&url, &auth, &p));
    assert_send(c.refresh(&url, &auth, &s, &p));
    assert_send(c.password(&url, &auth, "u", &s, &p));
    assert_send(c.device_authorization(&url, &auth, &p));
    assert_send(c.device_token(&url, &auth, &s));
    assert_send(c.exchange_code(&url, &auth, &s, "http://127.0.0.1/cb", &v));
    assert_send(c.revoke(&url, &auth, &s, tokctl_oauth::TokenTypeHint::RefreshToken));
    assert_send(c.validate_id_token(&url, &s, "https://idp.test", "cli", None));
}
