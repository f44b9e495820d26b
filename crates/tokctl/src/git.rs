//! `git-credential-tokctl get|store|erase`: git's credential helper protocol
//! (gitcredentials(7), git-credential(1)), answered from `[[route]]`s.
//!
//! Anything odd in git's input means "no answer": git then asks its other helpers or the
//! user. The helper never prints the refresh token, never echoes host or path, and never
//! starts a login.

use crate::conn::Daemon;
use secrecy::zeroize::Zeroizing;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;
use tokctl_proto::{
    ApiError, InvalidateRequest, InvalidateResponse, RouteResponse, TokenQuery, TokenResponse,
};

/// git's input is a handful of short lines; more than this is not git.
const MAX_INPUT: usize = 64 * 1024;
/// How long git may take to finish its input.
const INPUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys git sends at most once; a second copy is an injection attempt (CVE-2020-5260 style).
pub const SINGLE: [&str; 6] = [
    "protocol",
    "host",
    "path",
    "username",
    "password",
    "credential",
];

/// What git told us, validated. `password` and `credential` may be a token or a password
/// the user typed at git's prompt (git passes it on `store`): `Debug` hides them and they
/// are wiped from memory on drop.
#[derive(Default, PartialEq, Eq)]
pub struct Request {
    /// Single-valued attributes.
    pub attrs: BTreeMap<String, String>,
    /// `capability[]` values git announced.
    pub capabilities: Vec<String>,
    /// `wwwauth[]` values: the server's `WWW-Authenticate` challenges (git 2.41+).
    pub wwwauth: Vec<String>,
}

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 2] = ["password", "credential"];

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attrs: BTreeMap<&str, &str> = self
            .attrs
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET_KEYS.contains(&k.as_str()) {
                    "[redacted]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Request")
            .field("attrs", &attrs)
            .field("capabilities", &self.capabilities)
            .field("wwwauth", &self.wwwauth)
            .finish()
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        use secrecy::zeroize::Zeroize;
        for (k, v) in self.attrs.iter_mut() {
            if SECRET_KEYS.contains(&k.as_str()) {
                v.zeroize();
            }
        }
    }
}

impl Request {
    /// The URL to route on: `protocol://host/path`, with `/` when git sent no path. The
    /// daemon parses it; here only what must never reach a route is refused.
    pub fn url(&self) -> Option<String> {
        let protocol = self.attrs.get("protocol")?;
        let host = self.attrs.get("host")?;
        let scheme_ok = !protocol.is_empty()
            && protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        // Userinfo, a path or a query smuggled into `host` is not a plain host.
        if !scheme_ok || host.is_empty() || host.contains(['/', '@', '?', '#', '\\', ' ']) {
            return None;
        }
        let path = self.attrs.get("path").map_or("", String::as_str);
        Some(format!(
            "{protocol}://{host}/{}",
            path.trim_start_matches('/')
        ))
    }
}

/// Parses git's input; `None` for anything malformed (CR, NUL, duplicates, no `=`).
pub fn parse(input: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(input).ok()?;
    if text.contains(['\r', '\0']) {
        return None;
    }
    let mut req = Request::default();
    for line in text.split('\n') {
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once('=')?;
        if k == "capability[]" {
            req.capabilities.push(v.to_owned());
        } else if k == "wwwauth[]" {
            req.wwwauth.push(v.to_owned());
        } else if k.ends_with("[]") {
            // Other multi-valued keys: not needed.
        } else if SINGLE.contains(&k) && req.attrs.insert(k.to_owned(), v.to_owned()).is_some() {
            return None;
        }
    }
    Some(req)
}

/// Reads git's input up to the blank line or EOF, bounded in size and time.
/// The bytes may hold a password git passes on `store`: they are wiped on drop, and the
/// buffer is sized up front so growing it leaves no unwiped copies behind.
fn read_input() -> Option<Zeroizing<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_INPUT + 4096));
        let mut stdin = std::io::stdin().lock();
        let mut chunk = Zeroizing::new([0u8; 4096]);
        let res = loop {
            match stdin.read(&mut chunk[..]) {
                Ok(0) => break Some(buf),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_INPUT {
                        break None;
                    }
                    if buf.starts_with(b"\n") || buf.windows(2).any(|w| w == b"\n\n") {
                        break Some(buf);
                    }
                }
                Err(_) => break None,
            }
        };
        let _ = tx.send(res);
    });
    rx.recv_timeout(INPUT_TIMEOUT).ok().flatten()
}

/// Whether the server's challenges allow a Bearer credential: yes when one of them is
/// `Bearer`, or when git passed none (it asks before any 401, e.g. `http.proactiveAuth`).
fn server_takes_bearer(req: &Request) -> bool {
    req.wwwauth.is_empty()
        || req.wwwauth.iter().any(|challenge| {
            // A header may list several challenges, comma-separated.
            challenge.split(',').any(|c| {
                c.split_whitespace()
                    .next()
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
            })
        })
}

/// What `get` answers, given the route's username and the token.
pub fn answer(req: &Request, username: &str, t: &TokenResponse) -> String {
    let mut out = String::new();
    if req.capabilities.iter().any(|c| c == "authtype") && server_takes_bearer(req) {
        // git 2.46+ and a server that asks for Bearer: sent as `Authorization: Bearer`.
        // A server that challenges with Basic only (many forges) gets the token as the
        // Basic password below, or git 2.46+ would send a credential it refuses.
        out.push_str("capability[]=authtype\nauthtype=Bearer\n");
        out.push_str(&format!("credential={}\n", t.access_token));
    } else {
        out.push_str(&format!(
            "username={username}\npassword={}\n",
            t.access_token
        ));
    }
    if let Some(exp) = t.expires_at {
        out.push_str(&format!("password_expiry_utc={exp}\n"));
    }
    out
}

/// A token or username git could safely carry on one line of its protocol.
fn one_line(s: &str) -> bool {
    !s.is_empty() && !s.contains(['\n', '\r', '\0'])
}

/// Runs the helper; git ignores the exit code of `get` apart from success, so failures are
/// one line on stderr (seen with GIT_TRACE) and no answer.
pub async fn run(args: &[String]) -> ExitCode {
    let Some(op) = args.first() else {
        eprintln!(
            "usage: git-credential-tokctl get|store|erase (git runs this; see `tokctl help`)"
        );
        return ExitCode::from(2);
    };
    let Some(input) = read_input() else {
        eprintln!("tokctl: git sent unreadable or oversized credential input; ignoring it");
        return ExitCode::SUCCESS;
    };
    let Some(req) = parse(&input) else {
        eprintln!("tokctl: malformed credential input from git; ignoring it");
        return ExitCode::SUCCESS;
    };
    let result = match op.as_str() {
        "get" => get(&req).await,
        // tokctl owns its credentials; git's copy is never written anywhere.
        "store" => Ok(()),
        "erase" => erase(&req).await,
        // Unknown operations are ignored, as git asks of helpers.
        _ => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("tokctl: {}", tokctl_proto::printable(&e.message, 500));
    }
    ExitCode::SUCCESS
}

async fn route(req: &Request) -> Result<Option<(String, String)>, ApiError> {
    let Some(url) = req.url() else {
        return Ok(None);
    };
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("url", &url)
        .finish();
    let r: RouteResponse = Daemon::connect().await?.get(&format!("/route?{q}")).await?;
    Ok(r.route.map(|m| (m.profile, m.username)))
}

async fn get(req: &Request) -> Result<(), ApiError> {
    let Some((profile, username)) = route(req).await? else {
        return Ok(());
    };
    let q = TokenQuery {
        profile: Some(profile),
        min_ttl_secs: tokctl_proto::DEFAULT_MIN_TTL_SECS,
        ..TokenQuery::default()
    };
    let t: TokenResponse = Daemon::connect()
        .await?
        .get(&format!("/token?{}", q.to_query_string()))
        .await?;
    if !one_line(&t.access_token) || !one_line(&username) {
        return Ok(());
    }
    let text = answer(req, &username, &t);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// git erases a credential the server rejected: if it is the token tokctl handed out, the
/// cached access token is dropped so the next `get` fetches a fresh one.
async fn erase(req: &Request) -> Result<(), ApiError> {
    let Some(token) = req
        .attrs
        .get("credential")
        .or_else(|| req.attrs.get("password"))
    else {
        return Ok(());
    };
    let Some((profile, _)) = route(req).await? else {
        return Ok(());
    };
    let body = InvalidateRequest {
        profile: Some(profile),
        access_token: Some(token.clone()),
    };
    let _: InvalidateResponse = Daemon::connect().await?.post("/invalidate", &body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> TokenResponse {
        TokenResponse {
            access_token: "at".into(),
            token_type: "Bearer".into(),
            expires_at: Some(1_700_000_000),
            scope: None,
            profile: "p".into(),
        }
    }

    #[test]
    fn parses_git_input() {
        let r = parse(b"protocol=https\nhost=git.example.com\npath=org/repo.git\ncapability[]=authtype\nwwwauth[]=Bearer\n\n").unwrap();
        assert_eq!(r.attrs["host"], "git.example.com");
        assert_eq!(r.capabilities, ["authtype"]);
        assert_eq!(
            r.url().as_deref(),
            Some("https://git.example.com/org/repo.git")
        );
        let r = parse(b"protocol=https\nhost=git.example.com:8443\n").unwrap();
        assert_eq!(r.url().as_deref(), Some("https://git.example.com:8443/"));
    }

    #[test]
    fn hostile_input_gets_no_answer() {
        assert!(parse(b"protocol=https\nhost=a.test\r\nhost=evil.test\n").is_none());
        assert!(parse(b"protocol=https\nhost=a.test\nhost=evil.test\n").is_none());
        assert!(parse(b"protocol=https\nhost=a.test\0\n").is_none());
        assert!(parse(b"protocol=https\nnonsense\n").is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
        // Parsed, but no URL to route on.
        assert!(parse(b"protocol=https\n").unwrap().url().is_none());
        assert!(parse(b"host=a.test\n").unwrap().url().is_none());
        assert!(parse(b"protocol=https\nhost=evil.test@a.test\n")
            .unwrap()
            .url()
            .is_none());
        assert!(parse(b"protocol=https\nhost=a.test/x\n")
            .unwrap()
            .url()
            .is_none());
        // Lines after the blank line are not git's.
        let r = parse(b"protocol=https\nhost=a.test\n\nhost=evil.test\n").unwrap();
        assert_eq!(r.attrs["host"], "a.test");
    }

    #[test]
    fn debug_hides_passwords_and_credentials() {
        let r =
            parse(b"protocol=https\nhost=a.test\nusername=u\npassword=typed-pw\ncredential=tok\n")
                .unwrap();
        let shown = format!("{r:?}");
        assert!(
            shown.contains("a.test") && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(
            !shown.contains("typed-pw") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn answers_basic_or_bearer() {
        let basic = parse(b"protocol=https\nhost=a.test\n").unwrap();
        assert_eq!(
            answer(&basic, "oauth2", &tok()),
            "username=oauth2\npassword=at\npassword_expiry_utc=1700000000\n"
        );
        let bearer = parse(b"capability[]=authtype\nprotocol=https\nhost=a.test\n").unwrap();
        let a = answer(&bearer, "oauth2", &tok());
        assert!(a.contains("authtype=Bearer\ncredential=at\n"), "{a}");
        assert!(!a.contains("username="));
        let offered = parse(b"capability[]=authtype\nprotocol=https\nhost=a.test\nwwwauth[]=Basic realm=\"x\"\nwwwauth[]=bearer realm=\"x\"\n").unwrap();
        assert!(answer(&offered, "oauth2", &tok()).contains("authtype=Bearer\n"));
        let listed = parse(b"capability[]=authtype\nprotocol=https\nhost=a.test\nwwwauth[]=Basic realm=\"x\", Bearer\n").unwrap();
        assert!(answer(&listed, "oauth2", &tok()).contains("authtype=Bearer\n"));
        // git 2.46+ against a server that challenges with Basic only: Basic.
        let basic_only = parse(b"capability[]=authtype\nprotocol=https\nhost=a.test\nwwwauth[]=Basic realm=\"Bearer tokens\"\n").unwrap();
        assert_eq!(
            answer(&basic_only, "oauth2", &tok()),
            "username=oauth2\npassword=at\npassword_expiry_utc=1700000000\n"
        );
    }
}
