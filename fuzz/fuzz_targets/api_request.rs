//! What the daemon decodes from a socket API request: the `GET /v1/token` query string
//! (`TokenQuery::from_query_string`) and the JSON bodies of `POST /v1/login`, `/secret`,
//! `/logout` and `/invalidate` (`serde_json::from_slice`, as server.rs `body()` does), and
//! the `GET /v1/route` query (`RouteQuery::from_query_string`).
//!
//! Input: byte 0 picks the decoder, the rest is the query string or body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tokctl_proto::{
    InvalidateRequest, LoginRequest, LogoutRequest, RouteQuery, SecretRequest, TokenQuery,
};

/// Decodes a body; what decoded must serialize and decode to the same value.
fn json_round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(body: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(body).ok()?;
    let again: T =
        serde_json::from_slice(&serde_json::to_vec(&v).expect("serialize")).expect("re-decode");
    assert_eq!(again, v);
    Some(v)
}

/// How many key=value pairs a query string holds, as the daemon's decoder splits it.
fn form_urlencoded_pairs(q: &str) -> usize {
    url::form_urlencoded::parse(q.as_bytes()).count()
}

/// A secret that is long and distinct enough to look for in `Debug` output.
fn findable<'a>(secret: &'a str, others: &[&str]) -> Option<&'a str> {
    (secret.len() >= 8
        && !others.iter().any(|o| o.contains(secret))
        && !"[redacted]".contains(secret))
    .then_some(secret)
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            let Ok(q) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(parsed) = TokenQuery::from_query_string(q) {
                // Round trip: the client's encoding of what the daemon decoded decodes the same.
                let again =
                    TokenQuery::from_query_string(&parsed.to_query_string()).expect("re-decode");
                assert_eq!(again, parsed);
                assert!(parsed
                    .scopes
                    .iter()
                    .all(|s| !s.is_empty() && !s.contains(' ')));
            }
        }
        1 => {
            if let Some(r) = json_round_trip::<LoginRequest>(rest) {
                let dbg = format!("{r:?}");
                let user = r.username.clone().unwrap_or_default();
                if let Some(p) = r.password.as_deref().and_then(|p| {
                    findable(
                        p,
                        &[
                            &r.profile,
                            &user,
                            "LoginRequest profile force username password true false Some None",
                        ],
                    )
                }) {
                    assert!(!dbg.contains(p), "password in Debug");
                }
            }
        }
        2 => {
            if let Some(r) = json_round_trip::<SecretRequest>(rest) {
                let dbg = format!("{r:?}");
                if let Some(s) = findable(&r.secret, &[&r.profile, "SecretRequest profile secret"])
                {
                    assert!(!dbg.contains(s), "secret in Debug");
                }
            }
        }
        3 => {
            let _ = json_round_trip::<LogoutRequest>(rest);
        }
        4 => {
            let Ok(q) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(parsed) = RouteQuery::from_query_string(q) {
                // Exactly one `url` and nothing else was in the query; re-encoding round-trips.
                assert_eq!(form_urlencoded_pairs(q), 1);
                let again =
                    RouteQuery::from_query_string(&parsed.to_query_string()).expect("re-decode");
                assert_eq!(again, parsed);
            }
        }
        _ => {
            if let Some(r) = json_round_trip::<InvalidateRequest>(rest) {
                let dbg = format!("{r:?}");
                let profile = r.profile.clone().unwrap_or_default();
                if let Some(t) = r.access_token.as_deref().and_then(|t| {
                    findable(
                        t,
                        &[&profile, "InvalidateRequest profile access_token Some None"],
                    )
                }) {
                    assert!(!dbg.contains(t), "access token in Debug");
                }
            }
        }
    }
});
