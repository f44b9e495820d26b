//! `docker-credential-tokctl get|store|erase|list`: the credential helper protocol of
//! docker/docker-credential-helpers, which the docker CLI, skopeo, podman and buildah
//! speak, answered from `[[route]]`s.
//!
//! Registry credentials are per host: docker sends a bare `host[:port]` (or, for Docker
//! Hub, `https://index.docker.io/v1/`), so a registry is routed as `https://host[:port]/`.
//! The helper never prints the refresh token, never answers `Username: "<token>"` (that
//! makes docker treat `Secret` as an OAuth refresh token and send it to the registry's
//! token realm), and never starts a login.

use crate::conn::Daemon;
use secrecy::zeroize::{Zeroize, Zeroizing};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;
use tokctl_proto::{printable, ApiError, RouteResponse, RoutesResponse, TokenQuery, TokenResponse};

/// What docker-credential-helpers print when they hold nothing for a server; docker,
/// skopeo and podman compare stdout with exactly this text (after trimming).
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// docker sends a server URL, or a small JSON object for `store`; more is not docker.
const MAX_INPUT: usize = 16 * 1024;
/// How long the caller may take to write its input and close stdin.
const INPUT_TIMEOUT: Duration = Duration::from_secs(5);
/// The username docker-credential-helpers use to mark `Secret` as an identity (refresh)
/// token. tokctl never answers it.
const IDENTITY_TOKEN_USER: &str = "<token>";

/// A registry as a docker client names it, validated and normalised for routing.
#[derive(Debug, PartialEq, Eq)]
pub struct Registry {
    /// `https`, or `http` for a loopback host only.
    scheme: &'static str,
    /// Lowercase `host[:port]` (`[v6]:port` for IPv6).
    authority: String,
    /// The input as the client sent it, minus one trailing newline: the answer's `ServerURL`.
    server_url: String,
}

impl Registry {
    /// The URL the daemon routes on: `scheme://host[:port]/`.
    pub fn route_url(&self) -> String {
        format!("{}://{}/", self.scheme, self.authority)
    }

    /// The key docker's `list` uses for this registry: what docker sends on `get`.
    fn list_key(&self) -> String {
        if self.scheme == "https" {
            self.authority.clone()
        } else {
            format!("http://{}", self.authority)
        }
    }
}

/// Parses what docker sends on `get`/`erase`: `host[:port]`, or an http(s) URL whose path
/// is ignored. `None` for anything else: control characters (CR, NUL), spaces, non-ASCII,
/// userinfo (`https://a@b`), a query or fragment, other schemes, plain http to a host that
/// is not loopback.
pub fn parse_server_url(input: &[u8]) -> Option<Registry> {
    let text = std::str::from_utf8(input).ok()?;
    // Typed by hand (`echo host | docker-credential-tokctl get`) it ends in a newline.
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty()
        || text.len() > 2048
        // Printable ASCII only, and no userinfo, query, fragment, backslash or escapes:
        // what is left is a host, a port and (ignored) path segments.
        || text
            .chars()
            .any(|c| !c.is_ascii_graphic() || "@?#\\%".contains(c))
    {
        return None;
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("https") => ("https", r),
        Some((s, r)) if s.eq_ignore_ascii_case("http") => ("http", r),
        Some(_) => return None,
        None => ("https", text),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = split_authority(authority)?;
    if scheme == "http" && !is_loopback(&host) {
        // Never hand a token to a registry reached in clear text over a network.
        return None;
    }
    Some(Registry {
        scheme,
        authority: match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        },
        server_url: text.to_owned(),
    })
}

/// Splits and checks `host[:port]`; the host comes back lowercase.
fn split_authority(a: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit() || ":.".contains(c)) {
            return None;
        }
        // A real IPv6 address (`[:2a1]` is not one: found by fuzz/docker_parse), in its
        // canonical form (RFC 5952), so `[0:0::1]` is `[::1]` here as in the daemon's URL.
        let addr: std::net::Ipv6Addr = h.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (h, port) = match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        };
        // ASCII letters, digits, `-` and `.` only: an IDN or look-alike in Unicode is not
        // what a route names, and a second `:` is not a port.
        // DNS limits too (labels of at most 63 bytes, names of at most 253): a longer name
        // names no registry, and its routing URL could exceed what this parser accepts
        // (found by fuzz/docker_parse).
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.len() > 253 || !h.split('.').all(label_ok) {
            return None;
        }
        // A name whose last label is a number (`2130706433`, `0x7f.1`, `reg.0.0.5`) is an
        // IPv4 address to the URL parser the daemon routes with (or invalid there): only a
        // canonical dotted quad means the same host to both (found by fuzz/docker_parse).
        let last = h.rsplit('.').next().unwrap_or_default();
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last.get(..2).is_some_and(|x| x.eq_ignore_ascii_case("0x"));
        let quad = h.split('.').count() == 4
            && h.split('.')
                .all(|p| p.parse::<u8>().is_ok_and(|n| n.to_string() == p));
        if numeric && !quad {
            return None;
        }
        (h.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return None
        }
        Some(p) => Some(p.parse::<u16>().ok().filter(|&n| n != 0)?),
    };
    Some((host, port))
}

/// Loopback names and addresses, where plain http stays on the machine.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host == "[::1]" {
        return true;
    }
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4 && parts[0] == "127" && parts.iter().all(|p| p.parse::<u8>().is_ok())
}

/// A token or username that can go into docker's JSON and on to an HTTP header: printable
/// ASCII only (RFC 6749 `VSCHAR`), so nothing can split a header or a line.
fn vschar(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The JSON docker expects from `get` (and sends to `store`).
#[derive(Serialize, Deserialize)]
struct Credentials {
    #[serde(rename = "ServerURL")]
    server_url: String,
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl Drop for Credentials {
    /// The secret may be a password someone typed into `docker login`: wipe it.
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// The `get` answer for a route's username and token; `None` when either could not be
/// carried safely or the username would make the token an identity token.
pub fn answer(reg: &Registry, username: &str, t: &TokenResponse) -> Option<String> {
    if !vschar(&t.access_token) || !vschar(username) || username == IDENTITY_TOKEN_USER {
        return None;
    }
    let c = Credentials {
        server_url: reg.server_url.clone(),
        username: username.to_owned(),
        secret: t.access_token.clone(),
    };
    serde_json::to_string(&c).ok().map(|s| s + "\n")
}

/// The `list` answer: routes docker can reach (a whole host, https or loopback http),
/// keyed as docker names them, with their usernames.
pub fn list_answer(routes: &RoutesResponse) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in &routes.routes {
        let Some((_, after_scheme)) = r.url.split_once("://") else {
            continue;
        };
        // A route with a path never matches docker, which names registries by host only.
        let whole_host = after_scheme
            .split_once('/')
            .is_some_and(|(_, path)| path.is_empty());
        let Some(reg) = parse_server_url(r.url.as_bytes()) else {
            continue;
        };
        if whole_host && vschar(&r.username) && r.username != IDENTITY_TOKEN_USER {
            out.entry(reg.list_key())
                .or_insert_with(|| r.username.clone());
        }
    }
    out
}

/// Reads stdin to EOF, bounded in size and time; `None` when it is neither.
fn read_input() -> Option<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = match std::io::stdin()
            .lock()
            .take(MAX_INPUT as u64 + 1)
            .read_to_end(&mut buf)
        {
            Ok(_) if buf.len() <= MAX_INPUT => Some(buf),
            _ => None,
        };
        let _ = tx.send(res);
    });
    rx.recv_timeout(INPUT_TIMEOUT).ok().flatten()
}

/// Writes `text` to stdout; docker reads the helper's answers and errors there.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// "Nothing for this server": the exact text and exit code docker, skopeo and podman
/// recognise, so they go on without credentials.
fn not_found() -> ExitCode {
    say(&format!("{NOT_FOUND}\n"));
    ExitCode::from(1)
}

/// A failure docker shows the user: docker quotes the helper's stdout in its own error
/// line ("error getting credentials - err: exit status 1, out: `…`").
fn fail(message: &str) -> ExitCode {
    say(&format!("tokctl: {}\n", printable(message, 500)));
    ExitCode::from(1)
}

/// Runs the helper.
pub async fn run(args: &[String]) -> ExitCode {
    let [op] = args else {
        eprintln!(
            "usage: docker-credential-tokctl get|store|erase|list \
             (docker runs this; see docs/integrations.md)"
        );
        return ExitCode::from(2);
    };
    match op.as_str() {
        "get" => get().await,
        "store" => store().await,
        "erase" => erase(),
        "list" => list().await,
        "version" => {
            say(&format!(
                "docker-credential-tokctl {}\n",
                tokctl_proto::VERSION
            ));
            ExitCode::SUCCESS
        }
        other => fail(&format!(
            "unknown credential action `{}`; expected get, store, erase or list",
            printable(other, 40)
        )),
    }
}

/// The registry docker named on stdin, or `None` after saying why on stderr.
fn read_registry() -> Option<Registry> {
    let Some(input) = read_input() else {
        eprintln!("tokctl: unreadable or oversized server URL on stdin; ignoring it");
        return None;
    };
    let reg = parse_server_url(&input);
    if reg.is_none() {
        eprintln!("tokctl: not a registry host or URL on stdin; ignoring it");
    }
    reg
}

/// A connection to the daemon and the route for a registry: `(profile, username)`, or
/// `None` when no route covers it. The connection is kept for the token request (one
/// connect per helper run).
async fn route(reg: &Registry) -> Result<(Daemon, Option<(String, String)>), ApiError> {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("url", &reg.route_url())
        .finish();
    let mut d = Daemon::connect().await?;
    let r: RouteResponse = d.get(&format!("/route?{q}")).await?;
    Ok((d, r.route.map(|m| (m.profile, m.username))))
}

/// The profile's access token, valid at least `min_ttl_secs` more.
async fn token(
    d: &mut Daemon,
    profile: String,
    min_ttl_secs: u64,
) -> Result<TokenResponse, ApiError> {
    let q = TokenQuery {
        profile: Some(profile),
        min_ttl_secs,
        ..TokenQuery::default()
    };
    d.get(&format!("/token?{}", q.to_query_string())).await
}

async fn get() -> ExitCode {
    let Some(reg) = read_registry() else {
        return not_found();
    };
    let (mut d, (profile, username)) = match route(&reg).await {
        Ok((d, Some(r))) => (d, r),
        Ok((_, None)) => return not_found(),
        // With `credsStore: tokctl` every registry comes here: a daemon that cannot be
        // reached must not break pulls that need no credentials.
        Err(e) => {
            eprintln!("tokctl: {}", printable(&e.message, 500));
            return not_found();
        }
    };
    let t = match token(&mut d, profile, tokctl_proto::DEFAULT_MIN_TTL_SECS).await {
        Ok(t) => t,
        // A routed registry without a token: say why (e.g. "run `tokctl login work`").
        // On stdout for the clients that quote it (skopeo, `docker login`), and on stderr
        // too: `docker pull`/`manifest inspect` drop the helper's error and only say "no
        // basic auth credentials", but pass the helper's stderr through.
        Err(e) => {
            eprintln!("tokctl: {}", printable(&e.message, 500));
            return fail(&e.message);
        }
    };
    match answer(&reg, &username, &t) {
        Some(text) => {
            say(&text);
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("tokctl: the token or username cannot be passed to docker safely");
            not_found()
        }
    }
}

/// docker calls `store` after every successful `docker login`. tokctl keeps no registry
/// passwords: re-saving the very token tokctl handed out is accepted as a no-op (so
/// `docker login` with the helper's own credentials succeeds); anything else is refused.
async fn store() -> ExitCode {
    // No backticks: docker and skopeo quote the helper's output in backticks.
    const REFUSED: &str = "not stored: tokctl issues the tokens of the registries it routes \
                           (log in with: tokctl login PROFILE) and stores no passwords; map \
                           other registries to another credential helper";
    let Some(input) = read_input().map(Zeroizing::new) else {
        return fail("unreadable or oversized credentials on stdin; nothing stored");
    };
    let Ok(c) = serde_json::from_slice::<Credentials>(&input) else {
        // serde's message could quote the input, which holds a secret: say nothing of it.
        return fail("credentials on stdin are not docker's JSON; nothing stored");
    };
    let Some(reg) = parse_server_url(c.server_url.as_bytes()) else {
        return fail(REFUSED);
    };
    let ours = match route(&reg).await {
        Ok((mut d, Some((profile, username)))) if username == c.username => {
            // Whatever is cached: a refresh here would never equal docker's copy.
            token(&mut d, profile, 0)
                .await
                .is_ok_and(|t| t.access_token == c.secret)
        }
        _ => false,
    };
    if ours {
        ExitCode::SUCCESS
    } else {
        fail(REFUSED)
    }
}

/// docker and skopeo send only the server URL to `erase` (on `logout`): nothing there says
/// which token to drop, so this is a no-op that succeeds. The refresh token is never
/// touched; `tokctl logout PROFILE` ends a login.
fn erase() -> ExitCode {
    let _ = read_registry();
    ExitCode::SUCCESS
}

async fn list() -> ExitCode {
    let routes: Result<RoutesResponse, ApiError> =
        async { Daemon::connect().await?.get("/routes").await }.await;
    match routes.map(|r| serde_json::to_string(&list_answer(&r))) {
        Ok(Ok(json)) => {
            say(&format!("{json}\n"));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&format!("cannot encode the list: {e}")),
        Err(e) => fail(&e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokctl_proto::RouteEntry;

    fn tok(at: &str) -> TokenResponse {
        TokenResponse {
            access_token: at.into(),
            token_type: "Bearer".into(),
            expires_at: Some(1_700_000_000),
            scope: None,
            profile: "p".into(),
        }
    }

    fn url(input: &str) -> Option<String> {
        parse_server_url(input.as_bytes()).map(|r| r.route_url())
    }

    #[test]
    fn normalises_what_docker_sends() {
        assert_eq!(
            url("registry.example.com").as_deref(),
            Some("https://registry.example.com/")
        );
        assert_eq!(
            url("Registry.Example.com:5000\n").as_deref(),
            Some("https://registry.example.com:5000/")
        );
        assert_eq!(
            url("https://index.docker.io/v1/").as_deref(),
            Some("https://index.docker.io/")
        );
        assert_eq!(
            url("http://127.0.0.1:5000").as_deref(),
            Some("http://127.0.0.1:5000/")
        );
        assert_eq!(url("[::1]:5000").as_deref(), Some("https://[::1]:5000/"));
        assert_eq!(
            url("http://[0:0::1]:5000").as_deref(),
            Some("http://[::1]:5000/")
        );
        assert_eq!(
            parse_server_url(b"reg.test:5000").unwrap().server_url,
            "reg.test:5000"
        );
    }

    #[test]
    fn hostile_input_is_not_a_registry() {
        for bad in [
            "",
            "\n",
            "reg.test\r",
            "reg.test\r\nevil.test",
            "reg.test\0",
            "reg.test\n\n",
            "https://a@reg.test",
            "a@reg.test",
            "https://user:pw@reg.test/",
            "http://reg.test",
            "ftp://reg.test",
            "reg.test:0",
            "reg.test:99999",
            "reg.test:",
            "reg.test:5000:1",
            "rég.test",
            "reg .test",
            "reg.test?x=1",
            "reg.test#x",
            "reg..test",
            "-reg.test",
            "reg.test\\evil",
            "reg.test/pä",
            "reg.test/\u{202e}",
            "[zz]:5000",
            "https://",
            // Numeric last labels the URL parser reads as (or rejects as) IPv4.
            "htt2.0.0.5:5000/v2/",
            "2130706433",
            "0x7f.1",
            "127.0.0.01",
            "127.1",
            "reg.0X1",
            "[:2a1]:50",
            "[1::2::3]",
        ] {
            assert!(url(bad).is_none(), "accepted {bad:?}");
        }
        assert!(parse_server_url(&[0xff, 0xfe]).is_none());
        assert!(parse_server_url("a".repeat(3000).as_bytes()).is_none());
        // Longer than DNS allows: a 64-byte label, a 254-byte name.
        assert!(url(&format!("{}.test", "a".repeat(64))).is_none());
        assert!(url(&format!("{}.test", "a".repeat(63))).is_some());
        let long = vec!["a".repeat(50); 5].join(".");
        assert_eq!(long.len(), 254);
        assert!(url(&long).is_none());
        assert!(url(&long[1..]).is_some());
    }

    #[test]
    fn answers_docker_json_and_never_an_identity_token() {
        let reg = parse_server_url(b"reg.test:5000").unwrap();
        let a = answer(&reg, "oauth2", &tok("at")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ServerURL": "reg.test:5000", "Username": "oauth2", "Secret": "at"})
        );
        assert!(answer(&reg, "<token>", &tok("at")).is_none());
        assert!(answer(&reg, "oauth2", &tok("a\r\nb")).is_none());
        assert!(answer(&reg, "oauth2", &tok("a\u{1b}b")).is_none());
        assert!(answer(&reg, "oauth2", &tok("")).is_none());
    }

    #[test]
    fn lists_whole_host_routes_docker_can_use() {
        let e = |url: &str, user: &str| RouteEntry {
            url: url.into(),
            profile: "p".into(),
            username: user.into(),
        };
        let routes = RoutesResponse {
            routes: vec![
                e("https://reg.test/", "oauth2"),
                e("https://reg.test:5000/", "x"),
                e("http://127.0.0.1:5001/", "loop"),
                e("https://git.test/org/", "git"),
                e("https://id.test/", "<token>"),
            ],
        };
        let l = list_answer(&routes);
        let want: BTreeMap<String, String> = [
            ("reg.test", "oauth2"),
            ("reg.test:5000", "x"),
            ("http://127.0.0.1:5001", "loop"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(l, want);
    }
}
