//! Property tests of route matching (`Config::route_for`) and route validation, through the
//! real config parser: origin by exact equality (scheme, lowercased host, port), then the
//! longest path prefix at a segment boundary; look-alike hosts (A6) never match; plain http
//! routes only for loopback hosts (A7).

use proptest::prelude::*;
use std::path::Path;
use tokctld::config::Config;
use url::Url;

/// Cases per property: 512 rather than proptest's 256, the parser is fast.
const CASES: u32 = 512;

const PROFILES: &str =
    "[profile.p]\nissuer = \"https://idp.test\"\nclient_id = \"c\"\ngrant = \"device_code\"\n";

fn config(routes: &[String]) -> Result<Config, String> {
    let mut t = PROFILES.to_string();
    for (i, u) in routes.iter().enumerate() {
        t.push_str(&format!(
            "[[route]]\nurl = \"{u}\"\nprofile = \"p\"\nusername = \"u{i}\"\n"
        ));
    }
    Config::parse(Path::new("/t/config.toml"), &t).map_err(|e| e.to_string())
}

/// A DNS name of one to three short labels, lowercase, that a URL can carry (not invalid
/// punycode such as `xn--0`).
fn host() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9-]{0,5}[a-z0-9]", 1..=3)
        .prop_map(|l| l.join("."))
        .prop_filter("a valid URL host", |h| {
            Url::parse(&format!("https://{h}/")).is_ok()
        })
}

/// A path of zero to three segments, with or without a trailing slash.
fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z0-9._-]{1,6}", 0..=3),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && !p.ends_with('/') {
                p.push('/');
            }
            p
        })
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![Just(None), Just(Some(8443)), (1u16..=65535).prop_map(Some)]
}

fn origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

/// The spec, stated independently of the implementation: `path` is `prefix` or below it.
fn covers(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any set of https routes and any URL: the answer is a route with the URL's exact
    /// origin whose path covers the URL's, and no covering route has a longer path; no
    /// answer only when no route covers the URL.
    #[test]
    fn answer_is_the_longest_covering_route_of_the_same_origin(
        hosts in prop::collection::vec(host(), 1..=2),
        routes in prop::collection::vec((0usize..2, port(), path()), 1..=5),
        query in (0usize..2, port(), path(), any::<bool>()),
    ) {
        let urls: Vec<String> = routes
            .iter()
            .map(|(h, p, path)| format!("{}{path}", origin("https", &hosts[h % hosts.len()], *p)))
            .collect();
        let cfg = config(&urls).expect("valid routes");
        let (h, p, qpath, upper) = query;
        let qhost = hosts[h % hosts.len()].clone();
        let qhost = if upper { qhost.to_ascii_uppercase() } else { qhost };
        let u = Url::parse(&format!("{}{qpath}", origin("https", &qhost, p))).unwrap();
        let same_origin = |r: &Url| {
            r.scheme() == u.scheme()
                && r.host_str().map(str::to_ascii_lowercase) == u.host_str().map(str::to_ascii_lowercase)
                && r.port_or_known_default() == u.port_or_known_default()
        };
        let best = cfg
            .routes
            .iter()
            .filter(|r| same_origin(&r.url) && covers(r.url.path(), u.path()))
            .map(|r| r.url.path().len())
            .max();
        match cfg.route_for(&u) {
            None => prop_assert_eq!(best, None, "{} unanswered", u),
            Some(r) => {
                prop_assert!(same_origin(&r.url), "{} answered by {}", u, r.url);
                prop_assert!(covers(r.url.path(), u.path()), "{} answered by {}", u, r.url);
                prop_assert_eq!(Some(r.url.path().len()), best, "{} not the longest", r.url);
            }
        }
    }

    /// A6: look-alikes of a `https://HOST/` route get nothing: a suffix or prefix on the
    /// host, another port, userinfo, a trailing dot, plain http.
    #[test]
    fn look_alikes_never_match(h in host(), p in path(), other_port in 1u16..=65535) {
        let cfg = config(&[format!("https://{h}/")]).unwrap();
        // The route itself answers its own URLs, in any letter case.
        let own = Url::parse(&format!("https://{}{p}", h.to_ascii_uppercase())).unwrap();
        prop_assert!(cfg.route_for(&own).is_some(), "{} unanswered", own);
        let port = if other_port == 443 { 8443 } else { other_port };
        for evil in [
            format!("https://{h}.evil.test{p}"),
            format!("https://x{h}{p}"),
            format!("https://{h}:{port}{p}"),
            format!("https://{h}:8443{p}"),
            format!("https://user@{h}{p}"),
            format!("https://user:pw@{h}{p}"),
            format!("https://{h}.{p}"),
            format!("http://{h}{p}"),
            format!("https://evil.test{p}"),
        ] {
            // `xHOST` can be invalid punycode (`xn--0`): a URL that does not parse cannot
            // be asked for.
            let Ok(u) = Url::parse(&evil) else { continue };
            prop_assert!(cfg.route_for(&u).is_none(), "{} matched https://{}/", evil, h);
        }
    }

    /// A7: an http route is valid for loopback hosts only; https always.
    #[test]
    fn http_routes_only_for_loopback(h in host(), p in path(), port in port(), last in 0u8..=255) {
        let remote = format!("{}{p}", origin("http", &h, port));
        // `host()` never generates `localhost` (labels of at most 7 characters): remote.
        let remote_ok = h == "localhost";
        prop_assert_eq!(config(std::slice::from_ref(&remote)).is_ok(), remote_ok, "{}", remote);
        let https = format!("{}{p}", origin("https", &h, port));
        prop_assert!(config(std::slice::from_ref(&https)).is_ok(), "{}", https);
        for loopback in [format!("127.0.0.{last}"), "localhost".to_string(), "[::1]".to_string()] {
            let u = format!("{}{p}", origin("http", &loopback, port));
            prop_assert!(config(std::slice::from_ref(&u)).is_ok(), "{}", u);
        }
    }
}
