//! docker credential helper input (`docker-credential-tokctl get|erase` stdin: a server
//! URL), through `tokctl::docker::parse_server_url`, the routing URL and the answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokctl::docker::{answer, list_answer, parse_server_url};
use tokctl_proto::{RouteEntry, RoutesResponse, TokenResponse};

fuzz_target!(|data: &[u8]| {
    let Some(reg) = parse_server_url(data) else {
        return;
    };
    let text = std::str::from_utf8(data).expect("accepted non-UTF-8");
    let text = text.strip_suffix('\n').unwrap_or(text);
    // Printable ASCII only, and never userinfo, query, fragment, backslash or escapes.
    assert!(
        text.bytes().all(|b| b.is_ascii_graphic()) && !text.contains(['@', '?', '#', '\\', '%']),
        "accepted {text:?}"
    );
    // The routing URL is a plain origin that passes the daemon's URL rules: https, or http
    // to a loopback host only (A7), no userinfo, path `/`.
    let route = reg.route_url();
    let url = url::Url::parse(&route).unwrap_or_else(|e| panic!("{route:?}: {e}"));
    tokctl_oauth::check_url(&url, "registry").unwrap_or_else(|e| panic!("{route:?}: {e}"));
    assert!(url.username().is_empty() && url.password().is_none());
    assert_eq!(url.path(), "/");
    assert!(url.query().is_none() && url.fragment().is_none());
    // Normalising is idempotent: the routing URL parses back to itself.
    let again = parse_server_url(route.as_bytes()).expect("route URL re-parses");
    assert_eq!(again.route_url(), route);
    // The `get` answer is JSON carrying exactly the server URL, the username and the token.
    let t = TokenResponse {
        access_token: "AT-canary".into(),
        token_type: "Bearer".into(),
        expires_at: None,
        scope: None,
        profile: "p".into(),
    };
    let a = answer(&reg, "oauth2", &t).expect("answer");
    let v: serde_json::Value = serde_json::from_str(&a).expect("answer is JSON");
    assert_eq!(v["ServerURL"], text);
    assert_eq!(v["Username"], "oauth2");
    assert_eq!(v["Secret"], "AT-canary");
    // Never the identity-token marker, which would make docker send the token elsewhere.
    assert!(answer(&reg, "<token>", &t).is_none());
    // `list` on a route with this URL lists at most this one registry.
    let routes = RoutesResponse {
        routes: vec![RouteEntry {
            url: route.clone(),
            profile: "p".into(),
            username: "oauth2".into(),
        }],
    };
    assert!(list_answer(&routes).len() <= 1);
});
