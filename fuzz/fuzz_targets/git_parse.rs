//! git credential helper input (`git-credential-tokctl get|store|erase` stdin), through
//! `tokctl::git::parse`, the routing URL and the `get` answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use tokctl::git::{answer, parse, Request, SINGLE};
use tokctl_proto::TokenResponse;

/// Writes a request back in git's format; parsing it again must give the same request.
fn serialize(r: &Request) -> String {
    let mut s = String::new();
    for c in &r.capabilities {
        s.push_str(&format!("capability[]={c}\n"));
    }
    for (k, v) in &r.attrs {
        s.push_str(&format!("{k}={v}\n"));
    }
    for w in &r.wwwauth {
        s.push_str(&format!("wwwauth[]={w}\n"));
    }
    s.push('\n');
    s
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    // A3/A4: CR or NUL anywhere, or input that is not UTF-8, is never accepted.
    if data.contains(&b'\r') || data.contains(&0) || std::str::from_utf8(data).is_err() {
        assert!(parsed.is_none(), "accepted CR/NUL/non-UTF-8 input");
        return;
    }
    let text = std::str::from_utf8(data).unwrap();
    // Only the lines before the first blank line are git's.
    let lines: Vec<&str> = text.split('\n').take_while(|l| !l.is_empty()).collect();
    // A1: a single-valued key given twice is an injection attempt.
    let mut seen = BTreeSet::new();
    let mut dup = false;
    let mut no_eq = false;
    for l in &lines {
        match l.split_once('=') {
            Some((k, _)) if SINGLE.contains(&k) => dup |= !seen.insert(k),
            Some(_) => {}
            None => no_eq = true,
        }
    }
    let Some(req) = parsed else {
        assert!(dup || no_eq, "rejected well-formed input {text:?}");
        return;
    };
    assert!(!dup, "accepted a duplicate single-valued key: {text:?}");
    assert!(!no_eq, "accepted a line without '=': {text:?}");
    // Only single-valued keys are kept, and no value can carry a line break.
    for (k, v) in &req.attrs {
        assert!(SINGLE.contains(&k.as_str()), "kept unknown key {k:?}");
        assert!(!v.contains('\n'), "value with a newline");
    }
    // Round trip: what was parsed, written back in git's format, parses to the same thing.
    assert_eq!(parse(serialize(&req).as_bytes()).as_ref(), Some(&req));
    // The URL the daemon routes on never carries userinfo or a smuggled path in the host.
    if let Some(u) = req.url() {
        let after = u.split_once("://").expect("scheme").1;
        let authority = after.split('/').next().unwrap();
        assert!(!authority.contains(['@', '?', '#', '\\', ' ']), "{u:?}");
        assert!(!authority.is_empty(), "{u:?}");
        assert_eq!(Some(authority), req.attrs.get("host").map(String::as_str));
    }
    // A8: the answer only ever holds credential keys, never host, protocol or path.
    let t = TokenResponse {
        access_token: "AT-canary".into(),
        token_type: "Bearer".into(),
        expires_at: Some(1),
        scope: None,
        profile: "p".into(),
    };
    let a = answer(&req, "oauth2", &t);
    for line in a.lines() {
        let (k, _) = line.split_once('=').expect("key=value");
        assert!(
            [
                "capability[]",
                "authtype",
                "credential",
                "username",
                "password",
                "password_expiry_utc"
            ]
            .contains(&k),
            "answer has key {k:?}"
        );
    }
});
