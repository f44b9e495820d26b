//! A local git smart-HTTP server: `git http-backend` (CGI) behind a small threaded HTTP/1.1
//! server on 127.0.0.1 that lets a request through only when its credential is an access
//! token the test IdP reports active.
//!
//! The server keeps what it saw (auth scheme, username, token, status) in memory for the
//! test to assert on; it writes no log, so no token ends up in a file.
//!
//! The small HTTP pieces here (request head and body parsing, the Authorization header)
//! are shared with [`crate::KubeApi`].

use crate::error::{Error, Result};
use crate::idp::Idp;
use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// The git that serves the repositories (Debian's; any git with http-backend would do).
const SERVER_GIT: &str = "/usr/bin/git";
/// The realm of both challenges.
const REALM: &str = "tokctl test git";
/// Socket read/write timeout: a stuck client must not keep a server thread forever, and a
/// loaded 2-core CI machine must not make a healthy one time out.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound of a request head; git's are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// The scheme of a request's `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    /// No `Authorization` header.
    None,
    /// `Basic base64(user:password)`; the password is the token.
    Basic,
    /// `Bearer token`.
    Bearer,
    /// Anything else (or a malformed header).
    Other,
}

/// Which challenges the git server sends with a 401, and so which schemes it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `WWW-Authenticate: Basic` and `Bearer`: both are accepted (git 2.46+ can use Bearer).
    BasicAndBearer,
    /// Only `WWW-Authenticate: Basic`; a Bearer credential is refused, like a forge that
    /// takes tokens only as a Basic password.
    BasicOnly,
}

/// One request a test server answered.
#[derive(Clone)]
pub struct SeenRequest {
    /// When the request head was read.
    pub at: SystemTime,
    /// `GET`, `POST`…
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The Authorization scheme.
    pub scheme: AuthScheme,
    /// The Basic username, if any.
    pub username: Option<String>,
    /// The token (Basic password or Bearer credential), if any. Kept in memory only.
    pub token: Option<String>,
    /// The status the server answered with.
    pub status: u16,
}

impl std::fmt::Debug for SeenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenRequest")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("scheme", &self.scheme)
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("status", &self.status)
            .finish()
    }
}

/// A parsed request head.
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Scheme, Basic username and token of the Authorization header.
    pub(crate) fn credential(&self) -> (AuthScheme, Option<String>, Option<String>) {
        let Some(value) = self.header("authorization") else {
            return (AuthScheme::None, None, None);
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return (AuthScheme::Bearer, None, Some(rest.to_owned()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                return (
                    AuthScheme::Basic,
                    Some(user.to_owned()),
                    Some(password.to_owned()),
                );
            }
        }
        (AuthScheme::Other, None, None)
    }
}

/// Appends what a server saw of one request to its record.
pub(crate) fn record_seen(
    seen: &Mutex<Vec<SeenRequest>>,
    at: SystemTime,
    head: &Head,
    credential: (AuthScheme, Option<String>, Option<String>),
    status: u16,
) {
    let (scheme, username, token) = credential;
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SeenRequest {
            at,
            method: head.method.clone(),
            target: head.target.clone(),
            scheme,
            username,
            token,
            status,
        });
}

/// A TLS stream of one of the harness's HTTPS servers.
pub(crate) type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// One request over TLS (the HTTPS servers answer one per connection): the reader to
/// answer on, the head, when it arrived; the body is drained. `None` when the handshake
/// fails (a client that does not trust the CA) or no request comes.
pub(crate) fn read_tls_request(
    tls: &Arc<rustls::ServerConfig>,
    conn: TcpStream,
) -> Option<(BufReader<TlsStream>, Head, SystemTime)> {
    let server = rustls::ServerConnection::new(tls.clone()).ok()?;
    let mut r = BufReader::new(rustls::StreamOwned::new(server, conn));
    let head = read_head(&mut r).ok()??;
    let at = SystemTime::now();
    let _ = read_body(&mut r, &head);
    Some((r, head, at))
}

/// Reads a request head; `None` when the peer closed without sending one.
pub(crate) fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(bad("connection closed inside the request head"));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut it = lines.into_iter();
    let request_line = it.next().ok_or_else(|| bad("no request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad("bad request line"));
    };
    let headers = it
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok(Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    }))
}

/// Reads the body `head` announces (Content-Length or chunked; none otherwise).
pub(crate) fn read_body(r: &mut impl BufRead, head: &Head) -> std::io::Result<Vec<u8>> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk")
                    })?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 || l.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    }
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Writes a complete response and closes the exchange (`Connection: close`).
pub(crate) fn write_response(
    w: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// True when the IdP reports `token` active. Asked on every request, so a token revoked
/// at the IdP is refused at once; an introspection failure counts as inactive.
pub(crate) fn token_is_active(idp: &Idp, token: &str) -> bool {
    idp.introspect(token)
        .map(|v| v["active"] == true)
        .unwrap_or(false)
}

/// The accept loop shared by the test servers: one thread per connection, each handled
/// by `handle`; stops when `stop` is set and the listener is woken.
pub(crate) fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: Arc<dyn Fn(TcpStream) + Send + Sync>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            let handle = handle.clone();
            std::thread::spawn(move || handle(conn));
        }
    })
}

/// Stops an accept loop started by [`serve`]: sets the flag and wakes `accept`.
pub(crate) fn stop_serving(port: u16, stop: &AtomicBool, thread: Option<JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    if let Some(t) = thread {
        let _ = t.join();
    }
}

/// A running git smart-HTTP server; stopped on drop.
pub struct GitServer {
    port: u16,
    root: tempfile::TempDir,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    admit_probe: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitServer")
            .field("port", &self.port)
            .field("root", &self.root.path())
            .finish()
    }
}

/// Everything a connection handler needs.
struct GitState {
    idp: Arc<Idp>,
    challenge: Challenge,
    project_root: PathBuf,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    admit_probe: Arc<AtomicBool>,
}

impl GitServer {
    /// Starts the server on a free port of 127.0.0.1, serving the repositories under its
    /// own temp dir (add them with [`GitServer::create_repo`]).
    pub fn start(idp: Arc<Idp>, challenge: Challenge) -> Result<GitServer> {
        let root = tempfile::Builder::new()
            .prefix("tokctl-git")
            .tempdir()
            .map_err(|e| Error::io("creating the git server's temp dir", e))?;
        for d in ["repos", "home"] {
            std::fs::create_dir_all(root.path().join(d))
                .map_err(|e| Error::io("creating the git server's dirs", e))?;
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding the git server", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("the git server's address", e))?
            .port();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let admit_probe = Arc::new(AtomicBool::new(true));
        let state = Arc::new(GitState {
            idp,
            challenge,
            project_root: root.path().join("repos"),
            seen: seen.clone(),
            admit_probe: admit_probe.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve(
            listener,
            stop.clone(),
            Arc::new(move |conn| handle_git(&state, conn)),
        );
        Ok(GitServer {
            port,
            root,
            seen,
            admit_probe,
            stop,
            thread: Some(thread),
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    /// The bare repository `repo` (e.g. `org/repo.git`) on disk.
    pub fn repo_path(&self, repo: &str) -> PathBuf {
        self.root.path().join("repos").join(repo)
    }

    /// A git command for server-side work (making repos, reading refs): Debian's git with
    /// a private HOME and no system config.
    fn git(&self) -> Command {
        let mut c = Command::new(SERVER_GIT);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.root.path().join("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Server")
            .env("GIT_AUTHOR_EMAIL", "server@example.test")
            .env("GIT_COMMITTER_NAME", "Test Server")
            .env("GIT_COMMITTER_EMAIL", "server@example.test");
        c
    }

    fn run_git(&self, c: Command, what: &str) -> Result<String> {
        let o = crate::proc::run(c, None, Duration::from_secs(60))?;
        if !o.status.success() {
            return Err(Error::Exited {
                what: format!("server-side git ({what})"),
                status: o.status.to_string(),
                output: String::from_utf8_lossy(&o.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// Creates the bare repository `repo` (e.g. `org/repo.git`) with one commit on `main`,
    /// pushable over HTTP (`http.receivepack`). Returns that commit's id.
    pub fn create_repo(&self, repo: &str) -> Result<String> {
        let bare = self.repo_path(repo);
        let work = self.root.path().join("seed").join(repo);
        std::fs::create_dir_all(&work).map_err(|e| Error::io("creating the seed dir", e))?;
        let mut c = self.git();
        c.args(["init", "-q", "--bare", "-b", "main"]).arg(&bare);
        self.run_git(c, "init --bare")?;
        let mut c = self.git();
        c.arg("--git-dir")
            .arg(&bare)
            .args(["config", "http.receivepack", "true"]);
        self.run_git(c, "config http.receivepack")?;
        let mut c = self.git();
        c.args(["init", "-q", "-b", "main"]).arg(&work);
        self.run_git(c, "init")?;
        std::fs::write(work.join("README"), "served by the tokctl e2e git server\n")
            .map_err(|e| Error::io("writing the seed file", e))?;
        let mut c = self.git();
        c.current_dir(&work).args(["add", "README"]);
        self.run_git(c, "add")?;
        let mut c = self.git();
        c.current_dir(&work).args(["commit", "-q", "-m", "first"]);
        self.run_git(c, "commit")?;
        let mut c = self.git();
        c.current_dir(&work)
            .arg("push")
            .arg("-q")
            .arg(&bare)
            .arg("main");
        self.run_git(c, "push to the bare repo")?;
        self.head(repo)
    }

    /// The commit `main` points at in the bare repository `repo`.
    pub fn head(&self, repo: &str) -> Result<String> {
        let mut c = self.git();
        c.arg("--git-dir")
            .arg(self.repo_path(repo))
            .args(["rev-parse", "refs/heads/main"]);
        self.run_git(c, "rev-parse")
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether git's unauthenticated 4-byte probe (see [`is_probe`]) is let through; on by
    /// default, as a server must for large pushes with a Bearer credential.
    pub fn set_admit_probe(&self, admit: bool) {
        self.admit_probe.store(admit, Ordering::SeqCst);
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        stop_serving(self.port, &self.stop, self.thread.take());
    }
}

fn handle_git(st: &GitState, conn: TcpStream) {
    let mut r = BufReader::new(conn);
    let Ok(Some(head)) = read_head(&mut r) else {
        return;
    };
    let at = SystemTime::now();
    let (scheme, username, token) = head.credential();
    let accepted = match (scheme, st.challenge, token.as_deref()) {
        (AuthScheme::Basic, _, Some(t)) => token_is_active(&st.idp, t),
        (AuthScheme::Bearer, Challenge::BasicAndBearer, Some(t)) => token_is_active(&st.idp, t),
        _ => false,
    };
    let maybe_probe = !accepted && st.admit_probe.load(Ordering::SeqCst) && is_probe(&head, scheme);
    let body = if accepted || maybe_probe {
        // curl may wait for a 100 before sending a large body.
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            let _ = r.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        match read_body(&mut r, &head) {
            Ok(body) => Some(body),
            Err(_) => return,
        }
    } else {
        None
    };
    let (status, headers, body) = if let Some(body) = body.filter(|b| accepted || b == b"0000") {
        // The probe runs as nobody: a flush packet alone makes the backend do nothing.
        let user = if accepted { username.as_deref() } else { None };
        run_backend(st, &head, user, &body)
    } else {
        let mut h = vec![(
            "WWW-Authenticate".to_owned(),
            format!("Basic realm=\"{REALM}\""),
        )];
        if st.challenge == Challenge::BasicAndBearer {
            h.push((
                "WWW-Authenticate".to_owned(),
                format!("Bearer realm=\"{REALM}\""),
            ));
        }
        h.push(("Content-Type".to_owned(), "text/plain".to_owned()));
        // Drain a small body so the client sees the 401 rather than a reset connection.
        if head.header("expect").is_none() && !maybe_probe {
            let _ = read_body(&mut r, &head);
        }
        (401, h, b"authentication required\n".to_vec())
    };
    record_seen(&st.seen, at, &head, (scheme, username, token), status);
    let conn = r.get_mut();
    let _ = write_response(conn, status, &headers, &body);
    let _ = conn.shutdown(Shutdown::Write);
}

/// Whether `head` starts git's probe before a request larger than `http.postBuffer`: an
/// RPC POST with no Authorization and exactly 4 bytes of body (the flush packet `0000`).
/// git (2.46 to at least 2.51) sends it without a credential it passes as a header itself
/// (`authtype=Bearer`), as it would with curl's Basic; a server must let it through, or
/// large pushes and fetches with a Bearer credential fail.
fn is_probe(head: &Head, scheme: AuthScheme) -> bool {
    scheme == AuthScheme::None
        && head.method == "POST"
        && (head.path().ends_with("/git-receive-pack") || head.path().ends_with("/git-upload-pack"))
        && head.header("content-length") == Some("4")
        && head.header("transfer-encoding").is_none()
        && head.header("content-encoding").is_none()
}

/// A response: status, headers, body.
type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// Runs `git http-backend` for one request (CGI/1.1) and returns status, headers, body.
fn run_backend(st: &GitState, head: &Head, user: Option<&str>, body: &[u8]) -> Reply {
    let fail = |why: &str| {
        (
            500,
            vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            format!("{why}\n").into_bytes(),
        )
    };
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    let mut c = Command::new(SERVER_GIT);
    c.arg("http-backend")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", st.project_root.parent().unwrap_or(Path::new("/")))
        .env("GIT_PROJECT_ROOT", &st.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", head.path())
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(user) = user {
        c.env("REMOTE_USER", user);
    }
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = head.header(header) {
            c.env(var, v);
        }
    }
    let Ok(mut child) = c.spawn() else {
        return fail("cannot start git http-backend");
    };
    let mut stdin = child.stdin.take().expect("piped");
    let input = body.to_vec();
    // Written from another thread: http-backend may answer before reading all input.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
    let _ = writer.join();
    let _ = child.wait();
    parse_cgi(&out).unwrap_or_else(|| fail("git http-backend gave no CGI response"))
}

/// Splits CGI output into status (from `Status:`, default 200), headers and body.
fn parse_cgi(out: &[u8]) -> Option<Reply> {
    let (head_end, sep) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (out.windows(2).position(|w| w == b"\n\n")?, 2),
    };
    let head = String::from_utf8_lossy(&out[..head_end]);
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((k.to_owned(), v.to_owned()));
        }
    }
    Some((status, headers, out[head_end + sep..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        read_head(&mut raw.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn parses_credentials() {
        let h = head("GET /x HTTP/1.1\r\nAuthorization: Basic dTpwOnE=\r\n\r\n");
        let (s, u, t) = h.credential();
        assert_eq!(s, AuthScheme::Basic);
        assert_eq!(u.as_deref(), Some("u"));
        assert_eq!(t.as_deref(), Some("p:q"), "the password may hold a colon");
        let h = head("GET /x HTTP/1.1\r\nauthorization: Bearer abc\r\n\r\n");
        assert_eq!(h.credential().0, AuthScheme::Bearer);
        assert_eq!(h.credential().2.as_deref(), Some("abc"));
        let h = head("GET /x HTTP/1.1\r\n\r\n");
        assert_eq!(h.credential().0, AuthScheme::None);
        let h = head("GET /x HTTP/1.1\r\nAuthorization: Basic !!\r\n\r\n");
        assert_eq!(h.credential().0, AuthScheme::Other);
    }

    #[test]
    fn reads_chunked_and_sized_bodies() {
        let raw = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut r = raw.as_bytes();
        let h = read_head(&mut r).unwrap().unwrap();
        assert_eq!(read_body(&mut r, &h).unwrap(), b"abcde");
        let raw = "POST /x?y=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let mut r = raw.as_bytes();
        let h = read_head(&mut r).unwrap().unwrap();
        assert_eq!(h.path(), "/x");
        assert_eq!(read_body(&mut r, &h).unwrap(), b"hi");
    }

    #[test]
    fn parses_cgi_output() {
        let (s, h, b) =
            parse_cgi(b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno").unwrap();
        assert_eq!((s, b.as_slice()), (403, &b"no"[..]));
        assert_eq!(h, [("Content-Type".to_owned(), "text/plain".to_owned())]);
        let (s, _, b) = parse_cgi(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"body"[..]));
        assert!(parse_cgi(b"no end").is_none());
    }
}
