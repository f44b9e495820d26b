//! The daemon's config file (`tokctld::config::Config::parse`, what `Config::load` and a
//! reload run), then route matching (`Config::route_for`, what `GET /v1/route` runs).
//!
//! Input: config text, optionally followed by a NUL byte and a URL to look up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tokctld::config::Config;
use url::Url;

/// `route_for` may only answer a route with the same scheme, host and port, whose path is
/// a segment-boundary prefix of the URL's, for a URL without userinfo.
fn check_match(cfg: &Config, u: &Url) {
    let Some(r) = cfg.route_for(u) else { return };
    assert!(
        u.username().is_empty() && u.password().is_none(),
        "userinfo matched: {u}"
    );
    assert_eq!(r.url.scheme(), u.scheme());
    assert_eq!(
        r.url.host_str().map(str::to_ascii_lowercase),
        u.host_str().map(str::to_ascii_lowercase)
    );
    assert_eq!(r.url.port_or_known_default(), u.port_or_known_default());
    let (p, rp) = (u.path(), r.url.path());
    assert!(
        p == rp || (p.starts_with(rp) && (rp.ends_with('/') || p[rp.len()..].starts_with('/'))),
        "{u} matched {}",
        r.url
    );
    // Longest prefix wins: no other route that covers the URL has a longer path.
    let longest = cfg
        .routes
        .iter()
        .filter(|o| same_origin(&o.url, u) && path_under(p, o.url.path()))
        .map(|o| o.url.path().len())
        .max();
    assert_eq!(
        longest,
        Some(rp.len()),
        "{u} matched {}, not the longest",
        r.url
    );
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, lookup) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let path = Path::new("/fuzz/config.toml");
    let cfg = match Config::parse(path, text) {
        Ok(c) => c,
        Err(e) => {
            // Every error names the file and a line: `file:line: …`.
            let msg = e.to_string();
            let rest = msg
                .strip_prefix("/fuzz/config.toml:")
                .unwrap_or_else(|| panic!("{msg:?}"));
            let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let n: usize = line
                .parse()
                .unwrap_or_else(|_| panic!("no line number: {msg:?}"));
            assert!(
                n >= 1 && n <= text.matches('\n').count() + 1,
                "line {n} out of range: {msg:?}"
            );
            return;
        }
    };
    // Validation: every issuer and endpoint is https or loopback http.
    for p in cfg.profiles.values() {
        let issuer = Url::parse(&p.issuer).expect("issuer is a URL");
        tokctl_oauth::check_url(&issuer, "issuer").expect("issuer passes check_url");
        assert!(!p.client_id.is_empty());
        let e = &p.endpoints;
        for u in [
            &e.token,
            &e.device_authorization,
            &e.authorization,
            &e.revocation,
            &e.jwks,
        ]
        .into_iter()
        .flatten()
        {
            tokctl_oauth::check_url(u, "endpoint").expect("endpoint passes check_url");
        }
    }
    if let Some(d) = &cfg.default_profile {
        assert!(cfg.profiles.contains_key(d));
    }
    for r in &cfg.routes {
        // Routes: https, or http for loopback hosts only (A7); a known profile; a username.
        match r.url.scheme() {
            "https" => {}
            "http" => tokctl_oauth::check_url(&r.url, "route").expect("http route is loopback"),
            s => panic!("route with scheme {s:?}"),
        }
        assert!(cfg.profiles.contains_key(&r.profile));
        assert!(!r.username.is_empty() && !r.username.chars().any(char::is_control));
        // A route's own URL is answered, by a route of the same origin (itself or longer).
        assert!(
            cfg.route_for(&r.url).is_some(),
            "route {} does not answer itself",
            r.url
        );
        assert!(r.url.username().is_empty() && r.url.password().is_none());
        assert!(r.url.query().is_none() && r.url.fragment().is_none());
        check_match(&cfg, &r.url);
        // A6 look-alikes of the route's host never reach it.
        if let Some(h) = r.url.host_str() {
            let port = r.url.port().map(|p| format!(":{p}")).unwrap_or_default();
            for evil in [
                format!("{}://{h}.evil.test{port}/", r.url.scheme()),
                format!("{}://x{h}{port}/", r.url.scheme()),
                format!("{}://u@{h}{port}{}", r.url.scheme(), r.url.path()),
                format!("{}://{h}.{port}{}", r.url.scheme(), r.url.path()),
                format!("{}://{h}:1{}", r.url.scheme(), r.url.path()),
            ] {
                // check_match: any answer has exactly the look-alike's host and port, and
                // a URL with userinfo gets none.
                if let Ok(u) = Url::parse(&evil) {
                    check_match(&cfg, &u);
                }
            }
        }
    }
    if let Some(l) = lookup.and_then(|l| std::str::from_utf8(l).ok()) {
        if let Ok(u) = Url::parse(l) {
            check_match(&cfg, &u);
        }
    }
});
