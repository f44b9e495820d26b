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
