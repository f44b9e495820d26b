//! Runs the `tokctl` binary against a fake daemon.
//!
//! `FakeDaemon` is a protocol fixture, not a model of tokctld: a few lines of hyper on a
//! Unix socket that answer the `/v1` socket API with canned bodies and record every
//! request, so these tests check exactly what the client sends and how it renders the
//! answers and maps errors to exit codes. End-to-end tests against the real daemon live
//! in the workspace's `tests/`.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokctl_proto::{
    ApiError, ErrorCode, LoginEvent, LogoutResponse, OkResponse, ProfileState, ProfileStatus,
    StatusResponse, TokenResponse,
};

/// One request as the fake daemon saw it.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    uri: String,
    host: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the fake daemon answers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json_reply(status: u16, v: &impl Serialize) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: serde_json::to_string(v).unwrap(),
    }
}

fn error_reply(code: ErrorCode, message: &str) -> Reply {
    json_reply(code.http_status(), &ApiError::new(code, message))
}

fn ndjson_reply(events: &[LoginEvent]) -> Reply {
    let body = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    Reply {
        status: 200,
        content_type: "application/x-ndjson",
        body,
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// The protocol fixture (see the module comment).
struct FakeDaemon {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeDaemon {
    /// Listens on `socket` (bound before this returns) and answers with `handler`.
    fn start_at(
        socket: PathBuf,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (log, handler): (_, Handler) = (requests.clone(), Arc::new(handler));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (log, handler) = (log.clone(), handler.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, handler) = (log.clone(), handler.clone());
                        async move {
                            let header = |name| {
                                req.headers()
                                    .get(name)
                                    .map(|v: &hyper::header::HeaderValue| {
                                        v.to_str().unwrap().to_owned()
                                    })
                            };
                            let mut rec = Recorded {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                host: header(hyper::header::HOST),
                                content_type: header(hyper::header::CONTENT_TYPE),
                                body: Vec::new(),
                            };
                            rec.body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let reply = handler(&rec);
                            log.lock().unwrap().push(rec);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(reply.status)
                                    .header(hyper::header::CONTENT_TYPE, reply.content_type)
                                    .body(Full::new(Bytes::from(reply.body)))
                                    .unwrap(),
                            )
                        }
                    });
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeDaemon { socket, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `tokctl` pointed at this daemon, with autostart off and a neutral environment.
    fn tokctl(&self, dir: &Path) -> Command {
        let mut cmd = tokctl_cmd(Path::new(env!("CARGO_BIN_EXE_tokctl")), dir);
        cmd.env("TOKCTL_SOCKET", &self.socket)
            .env("TOKCTL_NO_AUTOSTART", "1");
        cmd
    }
}

/// A fresh temp dir plus a fake daemon listening in it.
fn daemon(
    handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) -> (tempfile::TempDir, FakeDaemon) {
    let dir = tempfile::tempdir().unwrap();
    let d = FakeDaemon::start_at(dir.path().join("tokctld.sock"), handler);
    (dir, d)
}

/// The client binary with an environment that cannot reach the user's real daemon,
/// browser or state.
fn tokctl_cmd(exe: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for var in [
        "TOKCTL_SOCKET",
        "TOKCTL_CONFIG",
        "TOKCTL_NO_AUTOSTART",
        "BROWSER",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "NO_COLOR",
        "XDG_RUNTIME_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("XDG_STATE_HOME", dir.join("state"))
        .env("HOME", dir.join("home"));
    cmd
}

/// Runs `cmd` with `stdin`, failing the test if it takes longer than 30 s.
fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    // The client may exit without reading stdin; a broken pipe here is not the test's concern.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("tokctl did not finish within 30 s");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const TOKEN: &str = "eyJhbGciOi.CANARY-AT.sig";

fn token_response() -> TokenResponse {
    TokenResponse {
        access_token: TOKEN.into(),
        token_type: "Bearer".into(),
        expires_at: Some(1_900_000_000),
        scope: Some("api read".into()),
        profile: "work".into(),
    }
}

#[test]
fn get_prints_every_format() {
    let (dir, d) = daemon(|r| {
        assert!(r.uri.starts_with("/v1/token?"), "{}", r.uri);
        json_reply(200, &token_response())
    });
    let cases = [
        (None, format!("{TOKEN}\n")),
        (Some("token"), format!("{TOKEN}\n")),
        (Some("header"), format!("Authorization: Bearer {TOKEN}\n")),
        (Some("env"), format!("TOKCTL_ACCESS_TOKEN={TOKEN}\n")),
        (
            Some("json"),
            format!("{}\n", serde_json::to_string(&token_response()).unwrap()),
        ),
    ];
    for (format, want) in cases {
        let mut cmd = d.tokctl(dir.path());
        cmd.arg("get");
        if let Some(f) = format {
            cmd.args(["--format", f]);
        }
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), want);
        assert_eq!(stderr(&out), "");
    }
    let json: serde_json::Value = serde_json::from_str(&{
        let mut cmd = d.tokctl(dir.path());
        cmd.args(["get", "--format", "json"]);
        stdout(&run(cmd, b""))
    })
    .unwrap();
    assert_eq!(json["expires_at"], 1_900_000_000u64);
    assert_eq!(json["profile"], "work");
    let reqs = d.requests();
    assert_eq!(reqs.len(), 6);
    assert!(reqs.iter().all(|r| r.method == "GET"
        && r.uri == "/v1/token?min_ttl=30"
        && r.host.as_deref() == Some("localhost")));
}

#[test]
fn get_sends_the_query() {
    let (dir, d) = daemon(|_| json_reply(200, &token_response()));
    let mut cmd = d.tokctl(dir.path());
    cmd.args([
        "get",
        "work",
        "--scope",
        "read",
        "--scope",
        "write:x",
        "--audience",
        "https://api/a?b",
        "--resource",
        "https://r1/",
        "--min-ttl",
        "5m",
    ]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let uri = &d.requests()[0].uri;
    let (path, query) = uri.split_once('?').unwrap();
    assert_eq!(path, "/v1/token");
    let q = tokctl_proto::TokenQuery::from_query_string(query).unwrap();
    assert_eq!(q.profile.as_deref(), Some("work"));
    assert_eq!(q.scopes, ["read", "write:x"]);
    assert_eq!(q.audience.as_deref(), Some("https://api/a?b"));
    assert_eq!(q.resources, ["https://r1/"]);
    assert_eq!(q.min_ttl_secs, 300);
}

#[test]
fn daemon_errors_map_to_exit_codes() {
    let (dir, d) = daemon(|r| {
        let profile = r
            .uri
            .split("profile=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        match profile {
            "login" => error_reply(ErrorCode::LoginRequired, "run `tokctl login login`"),
            "idp" => error_reply(ErrorCode::IdpUnavailable, "idp.example is unreachable"),
            "cfg" => error_reply(ErrorCode::Config, "unknown profile `cfg`"),
            "denied" => error_reply(ErrorCode::Denied, "the user denied access"),
            "other" => error_reply(ErrorCode::Other, "something broke"),
            // Not the contract's error body, and it must not be echoed.
            _ => Reply {
                status: 500,
                content_type: "text/plain",
                body: "internal CANARY-BODY".into(),
            },
        }
    });
    let cases = [
        ("login", 4, "run `tokctl login login`"),
        ("idp", 5, "idp.example is unreachable"),
        ("cfg", 2, "unknown profile `cfg`"),
        ("denied", 6, "the user denied access"),
        ("other", 1, "something broke"),
        (
            "garbage",
            1,
            "tokctld answered HTTP 500 Internal Server Error without an error body",
        ),
    ];
    for (profile, code, message) in cases {
        let mut cmd = d.tokctl(dir.path());
        cmd.args(["get", profile]);
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(code), "{profile}: {}", stderr(&out));
        assert_eq!(stderr(&out), format!("tokctl: {message}\n"));
        assert_eq!(stdout(&out), "");

        let mut cmd = d.tokctl(dir.path());
        cmd.args(["get", profile, "--format", "json"]);
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(code));
        assert_eq!(stderr(&out), format!("tokctl: {message}\n"));
        let err: ApiError = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(err.message, message);
        assert_eq!(err.error.exit_code(), code as u8);
        assert_eq!(stdout(&out).lines().count(), 1);
    }
}

fn status_response() -> StatusResponse {
    StatusResponse {
        version: tokctl_proto::VERSION.into(),
        pid: 4242,
        uptime_secs: 7300,
        store: "file (/tmp/x)".into(),
        config: "/tmp/config.toml".into(),
        profiles: vec![ProfileStatus {
            name: "work".into(),
            grant: "client_credentials".into(),
            issuer: "https://idp.test".into(),
            state: ProfileState::Backoff,
            expires_at: None,
            refresh_at: None,
            scopes: vec!["api".into()],
            last_error: Some("idp answered 503".into()),
            variants: 1,
        }],
    }
}

#[test]
fn status_json_is_passed_through() {
    // A field this client does not know (from a newer daemon) must survive.
    let mut v = serde_json::to_value(status_response()).unwrap();
    v["future_field"] = serde_json::json!({"x": [1, 2]});
    let body = serde_json::to_string(&v).unwrap();
    let sent = body.clone();
    let (dir, d) = daemon(move |_| Reply {
        status: 200,
        content_type: "application/json",
        body: sent.clone(),
    });
    // With --json, and without it when stdout is not a terminal (here: a pipe).
    for args in [&["status", "--json"][..], &["status"][..]] {
        let mut cmd = d.tokctl(dir.path());
        cmd.args(args);
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("{body}\n"));
    }
    assert!(d
        .requests()
        .iter()
        .all(|r| r.method == "GET" && r.uri == "/v1/status"));
}

#[test]
fn status_errors_are_json_too() {
    let (dir, d) = daemon(|_| error_reply(ErrorCode::Config, "bad config at line 3"));
    let mut cmd = d.tokctl(dir.path());
    cmd.args(["status", "--json"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(2));
    let err: ApiError = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        err,
        ApiError::new(ErrorCode::Config, "bad config at line 3")
    );
}

#[test]
fn no_daemon_without_autostart_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokctl_cmd(Path::new(env!("CARGO_BIN_EXE_tokctl")), dir.path());
    cmd.env("TOKCTL_SOCKET", dir.path().join("none.sock"))
        .env("TOKCTL_NO_AUTOSTART", "1")
        .args(["get", "--format", "json"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.starts_with("tokctl: tokctld is not running"), "{err}");
    assert!(err.contains("TOKCTL_NO_AUTOSTART=1"));
    assert_eq!(err.lines().count(), 1);
    let json: ApiError = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json.error, ErrorCode::DaemonUnreachable);
    // Nothing was started, so no log was created.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn secret_set_sends_stdin_in_the_body() {
    let (dir, d) = daemon(|_| {
        json_reply(
            200,
            &OkResponse {
                message: "client secret for ci stored in the keychain".into(),
            },
        )
    });
    let mut cmd = d.tokctl(dir.path());
    cmd.args(["secret", "set", "ci"]);
    let out = run(cmd, b"CANARY-secret a:b%c\r\nsecond line\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "client secret for ci stored in the keychain\n"
    );
    assert_eq!(stdout(&out), "");
    let reqs = d.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].uri, "/v1/secret");
    assert_eq!(reqs[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        reqs[0].json(),
        serde_json::json!({"profile": "ci", "secret": "CANARY-secret a:b%c"})
    );
}

#[test]
fn secret_set_refuses_an_empty_secret() {
    let (dir, d) = daemon(|_| {
        json_reply(
            200,
            &OkResponse {
                message: "x".into(),
            },
        )
    });
    for stdin in [&b""[..], b"\n", b"\r\n"] {
        let mut cmd = d.tokctl(dir.path());
        cmd.args(["secret", "set", "ci"]);
        let out = run(cmd, stdin);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            stderr(&out),
            "tokctl: no client secret on stdin; nothing sent\n"
        );
    }
    assert!(d.requests().is_empty());
}

/// A `$BROWSER` that records its arguments in `out`, one per line.
fn recording_browser(dir: &Path, out: &Path) -> PathBuf {
    let script = dir.join("browser.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {0}.tmp\nmv {0}.tmp {0}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn wait_for(path: &Path, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

const AUTH_URL: &str = "https://idp.test/authorize?response_type=code&state=abc&x=%41";

#[test]
fn login_opens_the_browser_and_reports_done() {
    let (dir, d) = daemon(|_| {
        ndjson_reply(&[
            LoginEvent::Info {
                message: "opening the login page".into(),
            },
            LoginEvent::Browser {
                url: AUTH_URL.into(),
            },
            LoginEvent::Done {
                profile: "work".into(),
            },
        ])
    });
    let opened = dir.path().join("opened");
    let browser = recording_browser(dir.path(), &opened);
    let mut cmd = d.tokctl(dir.path());
    cmd.env("BROWSER", format!("{} --new-tab %s", browser.display()))
        .args(["login", "work"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("opening the login page\n"), "{err}");
    assert!(err.contains(&format!("  {AUTH_URL}\n")), "{err}");
    assert!(err.ends_with("logged in to work\n"), "{err}");
    assert_eq!(stdout(&out), "");
    assert!(
        wait_for(&opened, Duration::from_secs(10)),
        "browser not started"
    );
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        format!("--new-tab\n{AUTH_URL}\n")
    );
    let reqs = d.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].uri, "/v1/login");
    assert_eq!(
        reqs[0].json(),
        serde_json::json!({"profile": "work", "force": false, "username": null, "password": null})
    );
}

#[test]
fn login_json_passes_event_lines_through() {
    let events = [
        LoginEvent::DeviceAuthorization {
            verification_uri: "https://idp.test/device".into(),
            verification_uri_complete: Some("https://idp.test/device?code=WDJB".into()),
            user_code: "WDJB-MJHT".into(),
            expires_in: 600,
        },
        LoginEvent::Error {
            error: ErrorCode::Denied,
            message: "the login expired; run tokctl login again".into(),
        },
    ];
    let want: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let (dir, d) = daemon(move |_| ndjson_reply(&events));
    let opened = dir.path().join("opened");
    let browser = recording_browser(dir.path(), &opened);
    let mut cmd = d.tokctl(dir.path());
    cmd.env("BROWSER", &browser)
        .args(["login", "work", "--json", "--no-browser", "--force"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(6));
    // Every event verbatim, and the error once (not repeated by the error report).
    assert_eq!(stdout(&out), want);
    assert_eq!(
        stderr(&out),
        "tokctl: the login expired; run tokctl login again\n"
    );
    assert_eq!(d.requests()[0].json()["force"], true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!opened.exists(), "--no-browser must not start a browser");
}

#[test]
fn login_json_reports_early_errors_as_events() {
    let (dir, d) = daemon(|_| error_reply(ErrorCode::Config, "unknown profile `nope`"));
    let mut cmd = d.tokctl(dir.path());
    cmd.args(["login", "nope", "--json"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(2));
    let ev: LoginEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        ev,
        LoginEvent::Error {
            error: ErrorCode::Config,
            message: "unknown profile `nope`".into()
        }
    );
}

#[test]
fn login_device_flow_shows_a_sanitized_code() {
    let (dir, d) = daemon(|_| {
        ndjson_reply(&[
            LoginEvent::DeviceAuthorization {
                verification_uri: "https://idp.test/device".into(),
                verification_uri_complete: None,
                user_code: "WDJB-MJHT\x1b[2J".into(),
                expires_in: 600,
            },
            LoginEvent::Done {
                profile: "work".into(),
            },
        ])
    });
    let opened = dir.path().join("opened");
    let browser = recording_browser(dir.path(), &opened);
    let mut cmd = d.tokctl(dir.path());
    cmd.env("BROWSER", &browser).args(["login", "work"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("open https://idp.test/device and enter the code: WDJB-MJHT\\u{1b}[2J\n"),
        "{err}"
    );
    assert!(!err.contains('\x1b'));
    assert!(wait_for(&opened, Duration::from_secs(10)));
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        "https://idp.test/device\n"
    );
}

#[test]
fn login_with_password_reads_it_from_stdin_only() {
    let (dir, d) = daemon(|_| {
        ndjson_reply(&[LoginEvent::Done {
            profile: "legacy".into(),
        }])
    });
    let mut cmd = d.tokctl(dir.path());
    cmd.args(["login", "legacy", "--username", "alice", "--password-stdin"]);
    let out = run(cmd, b"CANARY-pw\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("CANARY") && !stdout(&out).contains("CANARY"));
    let body = d.requests()[0].json();
    assert_eq!(body["username"], "alice");
    assert_eq!(body["password"], "CANARY-pw");
}

#[test]
fn logout_sends_the_revoke_flag() {
    let (dir, d) = daemon(|_| {
        json_reply(
            200,
            &LogoutResponse {
                revoked: false,
                message: "forgot work's tokens; not revoked at the IdP".into(),
            },
        )
    });
    for (extra, revoke) in [(None, true), (Some("--no-revoke"), false)] {
        let mut cmd = d.tokctl(dir.path());
        cmd.args(["logout", "work"]).args(extra);
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            stderr(&out),
            "forgot work's tokens; not revoked at the IdP\n"
        );
        let body = d.requests().last().unwrap().json();
        assert_eq!(
            body,
            serde_json::json!({"profile": "work", "revoke": revoke})
        );
    }
}

/// A copy of `tokctl` in a fresh bin dir, next to a fake `tokctld` shell script.
fn client_next_to(dir: &Path, daemon_script: Option<&str>) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("tokctl");
    std::fs::copy(env!("CARGO_BIN_EXE_tokctl"), &exe).unwrap();
    if let Some(script) = daemon_script {
        let d = bin.join("tokctld");
        std::fs::write(&d, script).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    exe
}

#[test]
fn autostart_reports_a_daemon_that_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let exe = client_next_to(
        dir.path(),
        Some("#!/bin/sh\necho 'tokctld: starting' >&2\necho 'error: config.toml line 3: bad issuer' >&2\nexit 2\n"),
    );
    let log = dir.path().join("state/tokctl/tokctld.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "an older run's last line\n").unwrap();
    let mut cmd = tokctl_cmd(&exe, dir.path());
    cmd.env("TOKCTL_SOCKET", dir.path().join("tokctld.sock"))
        .arg("get");
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        "tokctl: tokctld exited: error: config.toml line 3: bad issuer\n"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.ends_with("tokctld: starting\nerror: config.toml line 3: bad issuer\n"));
}

#[test]
fn autostart_without_a_daemon_binary_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let exe = client_next_to(dir.path(), None);
    let mut cmd = tokctl_cmd(&exe, dir.path());
    cmd.env("TOKCTL_SOCKET", dir.path().join("tokctld.sock"))
        .env("PATH", dir.path().join("empty"))
        .arg("status");
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        "tokctl: tokctld is not running and cannot be started: no `tokctld` next to tokctl or on PATH\n"
    );
}

#[test]
fn autostart_starts_the_daemon_detached_and_waits_for_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    // Like a daemon that lost the start race: it exits 0 and another one serves.
    // It records its pid, process group, stdin and working directory.
    let script = format!(
        "#!/bin/sh\necho \"$$ $(cut -d' ' -f5 /proc/$$/stat) $(readlink /proc/$$/fd/0) $(readlink /proc/$$/cwd) $TOKCTL_SOCKET\" > {0}.tmp\nmv {0}.tmp {0}\necho 'lost the race' >&2\nexit 0\n",
        marker.display()
    );
    let exe = client_next_to(dir.path(), Some(&script));
    let socket = dir.path().join("tokctld.sock");
    let mut cmd = tokctl_cmd(&exe, dir.path());
    // Relative on purpose: the daemon runs in `/`, so it must get the absolute path.
    cmd.current_dir(dir.path())
        .env("TOKCTL_SOCKET", "tokctld.sock")
        .args(["get", "work"]);
    let client = std::thread::spawn(move || run(cmd, b""));

    assert!(
        wait_for(&marker, Duration::from_secs(10)),
        "tokctld was not started"
    );
    let d = FakeDaemon::start_at(socket.clone(), |_| json_reply(200, &token_response()));
    let out = client.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    assert_eq!(d.requests().len(), 1);

    let seen = std::fs::read_to_string(&marker).unwrap();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(
        fields[0], fields[1],
        "daemon must lead its own process group: {seen}"
    );
    assert_eq!(fields[2], "/dev/null");
    assert_eq!(fields[3], "/");
    assert_eq!(Path::new(fields[4]), socket.canonicalize().unwrap());
    let log = std::fs::read_to_string(dir.path().join("state/tokctl/tokctld.log")).unwrap();
    assert_eq!(log, "lost the race\n");
}
