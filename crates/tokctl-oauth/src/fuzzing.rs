//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//!
//! They run the very functions the client runs on an identity provider's reply — status
//! and body classification, token / device / metadata parsing — without a network, so
//! libFuzzer can feed them arbitrary replies. Nothing here is part of the supported API.

use crate::client::{grant_json, Ep, Reply, Target};
use crate::discovery::{metadata_json, parse_metadata};
use crate::types::{parse_device_authorization, parse_token_set};
use crate::{DeviceAuthorization, Metadata, OAuthError, TokenSet};
use reqwest::StatusCode;
use secrecy::zeroize::Zeroizing;
use std::time::Duration;
use url::Url;

/// The token endpoint every fuzzed token reply claims to come from.
pub const TOKEN_ENDPOINT: &str = "https://idp.test/token";

fn reply(status: u16, content_type: Option<&str>, body: &[u8]) -> Option<Reply> {
    Some(Reply {
        status: StatusCode::from_u16(status).ok()?,
        retry_after: Some(Duration::from_secs(7)),
        content_type: content_type.map(str::to_owned),
        body: Zeroizing::new(body.to_vec()),
    })
}

/// A token endpoint reply as the client handles it: `None` when `status` is not a valid
/// HTTP status code (the HTTP stack never produces one).
pub fn token_reply(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Result<TokenSet, OAuthError>> {
    let url = Url::parse(TOKEN_ENDPOINT).ok()?;
    let t = Target::new(Ep::Token, &url).ok()?;
    let r = reply(status, content_type, body)?;
    Some(grant_json(&t, &r).and_then(|m| parse_token_set(m, &t.label)))
}

/// A device authorization endpoint reply as the client handles it.
pub fn device_reply(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Result<DeviceAuthorization, OAuthError>> {
    let url = Url::parse("https://idp.test/device").ok()?;
    let t = Target::new(Ep::Device, &url).ok()?;
    let r = reply(status, content_type, body)?;
    Some(grant_json(&t, &r).and_then(|m| parse_device_authorization(m, &t.label)))
}

/// A discovery document reply for `issuer` as the client handles it: `Ok(None)` means "no
/// document here, try the other well-known location".
pub fn discovery_reply(
    issuer: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Result<Option<Metadata>, OAuthError>> {
    let url = Url::parse("https://idp.test/.well-known/openid-configuration").ok()?;
    let t = Target::new(Ep::Discovery, &url).ok()?;
    let r = reply(status, content_type, body)?;
    Some(match metadata_json(&t, &r) {
        Ok(Some(m)) => parse_metadata(m, issuer, &t).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    })
}
