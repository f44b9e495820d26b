//! Issue #7, socket and memory: the socket answers only its own uid and only bounded,
//! prompt requests; no endpoint hands out a refresh token or client secret; the daemon's
//! memory, environment and core are closed to same-uid processes; and a canary sweep over
//! every grant finds no secret anywhere but in the outputs meant to carry one.
//!
//! Tests run as root (CI does). Where root's capabilities would make a check meaningless
//! (root may read any process's memory), the process under test and the prober run as
//! `nobody` without capabilities, and a control process shows the prober could read a
//! process that did not protect itself.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokctl_e2e::{bin_dir, defaults, text, Idp, IdpConfig, IdpUser, LoginSession, Result, TestEnv};

const EVENT_WAIT: Duration = Duration::from_secs(30);
const LOGIN_WAIT: Duration = Duration::from_secs(90);
/// The daemon's `server::HEADER_READ_TIMEOUT`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// 16 random hex digits, so every test's canaries are its own.
fn unique() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A command run as `nobody:nogroup` with no supplementary groups and no capabilities at
/// all (inheritable, ambient and bounding sets cleared), so it has exactly the rights an
/// ordinary process of that uid has.
fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
    .arg(program);
    c
}

fn cc_profile(issuer: &str, name: &str, client: &str) -> String {
    format!(
        "[profile.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\n\
         grant = \"client_credentials\"\nclient_auth = \"client_secret_basic\"\n"
    )
}

/// A client-credentials client whose secret is `secret`.
fn cc_client(id: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({
        "client_id": id, "client_secret": secret, "grant_types": ["client_credentials"],
        "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic",
    })
}

/// One raw HTTP exchange over a Unix socket: writes `req` (from another thread, so a
/// server that answers before reading everything is seen) and returns what came back.
fn raw_exchange(sock: &Path, req: Vec<u8>) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may close while we still write: a broken pipe is the expected end.
        let _ = w.write_all(&req);
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = writer.join();
    out
}

fn status_line(resp: &[u8]) -> String {
    text(resp).lines().next().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------------------
// The socket

#[test]
fn another_uid_is_refused_by_the_file_mode_and_then_by_peer_credentials() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&cc_profile(idp.issuer(), "ci", defaults::CC_BASIC))?;
    env.spawn_daemon(&[])?;
    let sock = env.socket_path();
    // A raw client: connects, sends a whole request, reports what it got back.
    let probe = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connected": False, "errno": e.errno})); sys.exit(0)
s.settimeout(10)
try:
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
except OSError:
    pass
got = b""
try:
    while True:
        b = s.recv(4096)
        if not b: break
        got += b
except OSError as e:
    pass
print(json.dumps({"connected": True, "bytes": len(got)}))
"#;
    let run_probe = || -> Result<serde_json::Value> {
        let mut c = as_nobody("/usr/bin/python3");
        c.arg("-c").arg(probe).arg(&sock).env_clear();
        let o = env.run(c, None)?;
        assert!(o.status.success(), "probe: {}", text(&o.stderr));
        Ok(serde_json::from_slice(&o.stdout).expect("probe JSON"))
    };

    // First line of defence: the 0700 directory and 0600 socket.
    let r = run_probe()?;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["errno"], 13, "EACCES expected: {r}");

    // Open the path on purpose, so that only the peer-credential check stands in the way.
    let mut p = sock.clone();
    while let Some(parent) = p.parent() {
        let mode = std::fs::metadata(parent)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o001));
        if parent == Path::new("/") {
            break;
        }
        p = parent.to_path_buf();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = run_probe()?;
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["bytes"], 0, "another uid got bytes back: {r}");
    // The real client as nobody: nothing on stdout, an error exit.
    let mut c = as_nobody(env.bin_path("tokctl"));
    c.args(["get", "ci"])
        .env_clear()
        .env("TOKCTL_SOCKET", &sock)
        .env("TOKCTL_NO_AUTOSTART", "1")
        .env("HOME", "/nonexistent");
    let o = env.run(c, None)?;
    assert!(!o.status.success() && o.stdout.is_empty(), "{o:?}");
    let log = env.daemon_log(0);
    assert!(
        log.matches("peer uid 65534 rejected").count() >= 2,
        "daemon log: {log}"
    );
    // Still serving its own user.
    assert!(env.daemon_status()?.is_some());
    Ok(())
}

#[test]
fn oversized_requests_are_refused_and_the_daemon_keeps_serving() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&cc_profile(idp.issuer(), "ci", defaults::CC_BASIC))?;
    env.spawn_daemon(&[])?;
    let sock = env.socket_path();
    let mib = 1024 * 1024;

    // A 1 MiB header: hyper stops reading at the 64 KiB head limit and answers 431.
    let mut req = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', mib));
    req.extend(b"\r\n\r\n");
    let t = Instant::now();
    let resp = raw_exchange(&sock, req);
    let line = status_line(&resp);
    assert!(line.starts_with("HTTP/1.1 431"), "1 MiB header: {line:?}");
    eprintln!("1 MiB header: {line} after {:?}", t.elapsed());

    // A 1 MiB body: refused by the body limit (413), the secret is not stored.
    let body = format!("{{\"profile\":\"ci\",\"secret\":\"{}\"}}", "s".repeat(mib));
    let mut req = format!(
        "POST /v1/secret HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend(body.as_bytes());
    let resp = raw_exchange(&sock, req);
    let line = status_line(&resp);
    assert!(line.starts_with("HTTP/1.1 413"), "1 MiB body: {line:?}");
    assert_eq!(env.profile_status("ci")?["state"], "logged_out");

    // The same as a chunked body with no length announced.
    let mut req = b"POST /v1/secret HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..16 {
        req.extend(format!("{:x}\r\n", 64 * 1024).as_bytes());
        req.extend(std::iter::repeat_n(b' ', 64 * 1024));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let line = status_line(&raw_exchange(&sock, req));
    assert!(line.starts_with("HTTP/1.1 413"), "chunked 1 MiB: {line:?}");

    // Still serving.
    let o = env.tokctl(&["secret", "set", "ci"], Some(b"cc-basic-secret\n"))?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = env.tokctl(&["get", "ci"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    Ok(())
}

#[test]
fn idle_and_slowloris_connections_neither_delay_get_nor_stay_open() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&cc_profile(idp.issuer(), "ci", defaults::CC_BASIC))?;
    env.spawn_daemon(&[])?;
    let o = env.tokctl(&["secret", "set", "ci"], Some(b"cc-basic-secret\n"))?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let timed_get = || -> Result<Duration> {
        let t = Instant::now();
        let o = env.tokctl(&["get", "ci"], None)?;
        let d = t.elapsed();
        assert!(o.status.success(), "{}", text(&o.stderr));
        Ok(d)
    };
    timed_get()?; // the token is cached from here on
    let baseline = (0..5).map(|_| timed_get()).collect::<Result<Vec<_>>>()?;

    // This process holds the 1050 client ends: lift its own soft descriptor limit (often
    // 1024 on CI) to the hard one, as the daemon does for itself.
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        );
        let now = getrlimit(Resource::Nofile).current;
        assert!(
            now.is_none_or(|n| n >= 1200),
            "RLIMIT_NOFILE hard limit {now:?} is too low to open 1050 connections"
        );
    }
    let sock = env.socket_path();
    let opened = Instant::now();
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&sock).expect("connect idle"))
        .collect();
    // Slowloris: 50 connections that each send one more header byte every 500 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let loris_closed: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let loris = {
        let (stop, closed, sock) = (stop.clone(), loris_closed.clone(), sock.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut conns: Vec<Option<UnixStream>> = (0..50)
                .map(|_| Some(UnixStream::connect(&sock).expect("connect slowloris")))
                .collect();
            let head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && conns.iter().any(Option::is_some) {
                for c in conns.iter_mut() {
                    let Some(s) = c else { continue };
                    let byte = head.get(i).copied().unwrap_or(b'a');
                    if s.write_all(&[byte]).is_err() {
                        closed.lock().unwrap().push(start.elapsed());
                        *c = None;
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let under_load = (0..5).map(|_| timed_get()).collect::<Result<Vec<_>>>()?;
    let max = under_load.iter().max().copied().unwrap_or_default();
    eprintln!(
        "tokctl get (process start to exit): baseline {baseline:?}; with 1000 idle + 50 slowloris connections {under_load:?}"
    );
    assert!(
        max < Duration::from_secs(2),
        "get took {max:?} with idle connections open"
    );
    // A raw request on a fresh connection is answered too.
    assert!(env.daemon_status()?.is_some());

    // The header read timeout closes the idle connections: each read ends in EOF.
    let mut closed_after = Vec::new();
    for mut s in idle.into_iter().step_by(100) {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 1];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got bytes");
        closed_after.push(opened.elapsed());
    }
    let last = closed_after.iter().max().copied().unwrap_or_default();
    eprintln!("idle connections closed by the daemon after {closed_after:?}");
    assert!(
        last >= HEADER_READ_TIMEOUT - Duration::from_secs(1) && last < Duration::from_secs(45),
        "idle connections closed after {last:?}"
    );
    // And the slowloris ones, though they never stopped sending.
    let end = Instant::now() + Duration::from_secs(45);
    while loris_closed.lock().unwrap().len() < 50 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = loris.join();
    let closed = loris_closed.lock().unwrap().clone();
    eprintln!(
        "slowloris connections closed after {:?} .. {:?}",
        closed.iter().min(),
        closed.iter().max()
    );
    assert_eq!(closed.len(), 50, "slowloris connections still open");
    assert!(closed
        .iter()
        .all(|d| *d >= HEADER_READ_TIMEOUT - Duration::from_secs(1)));
    Ok(())
}

/// Every route of crates/tokctld/src/server.rs, with a logged-in profile whose refresh
/// token, client secret and password are canaries: none comes back in any answer.
#[test]
fn no_endpoint_answers_with_a_refresh_token_client_secret_or_password() -> Result<()> {
    let u = unique();
    let prefix = format!("CANARY{u}");
    let client_secret = format!("CANARY-CS-{u}");
    let password = format!("CANARY-PW-{u}");
    let idp = Idp::start(IdpConfig {
        token_prefix: Some(prefix.clone()),
        users: Some(vec![IdpUser::new(defaults::ALICE, &password)]),
        clients: Some(vec![serde_json::json!({
            "client_id": "pw-canary", "client_secret": client_secret,
            "grant_types": ["password", "refresh_token"], "response_types": [],
            "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic",
        })]),
        ..Default::default()
    })?;
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "default_profile = \"pw\"\n[profile.pw]\nissuer = \"{}\"\nclient_id = \"pw-canary\"\n\
         grant = \"password\"\nscopes = [\"openid\", \"api\"]\n\
         [[route]]\nurl = \"https://git.example.test/\"\nprofile = \"pw\"\n",
        idp.issuer()
    ))?;
    env.spawn_daemon(&[])?;
    env.set_client_secret("pw", &client_secret)?;
    env.login_as_alice("pw", &password)?;
    let rt = env
        .stored_refresh_token("pw")?
        .expect("refresh token stored");
    assert!(
        rt.starts_with(&format!("{prefix}-RT-")),
        "IdP canary prefix not applied"
    );

    let login = |pw: &str| {
        serde_json::json!({"profile": "pw", "force": true, "username": defaults::ALICE, "password": pw})
            .to_string()
    };
    let requests: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/token?profile=pw".into(), None),
        (
            "GET",
            "/v1/token?profile=pw&scope=api&min_ttl=1h".into(),
            None,
        ),
        ("GET", "/v1/token?profile=nope".into(), None),
        ("GET", "/v1/status".into(), None),
        (
            "GET",
            "/v1/route?url=https%3A%2F%2Fgit.example.test%2Fa".into(),
            None,
        ),
        ("GET", "/v1/routes".into(), None),
        ("GET", "/v1/doctor".into(), None),
        (
            "POST",
            "/v1/secret".into(),
            Some(serde_json::json!({"profile": "pw", "secret": client_secret}).to_string()),
        ),
        (
            "POST",
            "/v1/secret".into(),
            Some(format!("{{\"profile\":\"pw\",\"secret\":\"{client_secret}")),
        ),
        ("POST", "/v1/login".into(), Some(login(&password))),
        ("POST", "/v1/login".into(), Some(login("wrong-password"))),
        (
            "POST",
            "/v1/login".into(),
            Some(format!("{{\"profile\":\"pw\",\"password\":{password}}}")),
        ),
        ("POST", "/v1/invalidate".into(), Some("{}".into())),
        (
            "POST",
            "/v1/invalidate".into(),
            Some(format!("{{\"access_token\":\"{rt}\"}}")),
        ),
        ("POST", "/v1/reload".into(), None),
        ("GET", "/v1/nonexistent".into(), None),
        ("GET", "/v1/token?profile=pw".into(), None),
    ];
    let mut answers = Vec::new();
    for (m, path, body) in &requests {
        let (status, resp) = env.socket_request(m, path, body.as_deref())?;
        answers.push((format!("{m} {path} -> {status}"), resp));
    }
    // The refresh token may have rotated during the logins above: both are canaries.
    let rt2 = env
        .stored_refresh_token("pw")?
        .expect("refresh token stored");
    let (status, resp) = env.socket_request(
        "POST",
        "/v1/logout",
        Some(r#"{"profile":"pw","revoke":true}"#),
    )?;
    answers.push((format!("POST /v1/logout -> {status}"), resp));
    assert!(answers
        .iter()
        .any(|(what, b)| what.starts_with("GET /v1/token") && b.contains("access_token")));

    for (what, body) in &answers {
        for (name, canary) in [
            ("refresh token", rt.as_str()),
            ("rotated refresh token", rt2.as_str()),
            ("client secret", client_secret.as_str()),
            ("password", password.as_str()),
        ] {
            assert!(
                !body.contains(canary),
                "{what} answered with the {name}: {body}"
            );
        }
        // Only /v1/token may carry an access token; every issued token has the prefix.
        if !what.starts_with("GET /v1/token") {
            assert!(
                !body.contains(&prefix),
                "{what} answered with an issued token: {body}"
            );
        }
    }
    eprintln!("{} answers from {} routes checked", answers.len(), 11);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The daemon's memory, environment and core

/// A directory tree owned by `nobody`, for a daemon that runs as nobody.
struct NobodyHome {
    dir: tempfile::TempDir,
}

impl NobodyHome {
    fn new() -> NobodyHome {
        let dir = tempfile::Builder::new()
            .prefix("tokctl-nobody")
            .tempdir()
            .expect("tempdir");
        for d in ["home", "config/tokctl", "run", "data", "state", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let _ = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(dir.path())
            .status();
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        NobodyHome { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Exactly the environment a tokctl process of this home gets.
    fn envs(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("TMPDIR", self.path("work"))
            .env("TOKCTL_NO_AUTOSTART", "1")
            .env("PATH", "/usr/bin:/bin")
            .current_dir(self.path("work"));
    }
}

/// Ends a child we started (by its pid) when the test ends, however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kill -SEGV PID`, as a user would (the harness's `signal` has no SIGSEGV).
fn kill_segv(pid: u32) {
    let st = Command::new("kill")
        .args(["-SEGV", &pid.to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()), "kill -SEGV {pid}");
}

fn wait_for_socket(path: &Path, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What a capability-less `nobody` process can do to `pid`: open its environ and mem,
/// attach with ptrace (gdb).
fn probe_as_nobody(pid: u32) -> (String, String, String) {
    let script = r#"
import sys
pid = sys.argv[1]
try:
    with open(f"/proc/{pid}/environ", "rb") as h:
        h.read(1)
    print("environ: ok")
except OSError as e:
    print(f"environ: errno {e.errno}")
# open() is where the kernel checks ptrace access; a read proves it with a mapped address.
try:
    with open(f"/proc/{pid}/mem", "rb") as h:
        try:
            with open(f"/proc/{pid}/maps") as m:
                start = int(m.readline().split("-")[0], 16)
            h.seek(start)
            h.read(1)
            print("mem: ok")
        except OSError as e:
            print(f"mem: opened, read errno {e.errno}")
except OSError as e:
    print(f"mem: errno {e.errno}")
"#;
    let mut c = as_nobody("/usr/bin/python3");
    c.arg("-c").arg(script).arg(pid.to_string()).env_clear();
    let o = tokctl_e2e::run(c, None, Duration::from_secs(30)).expect("python probe");
    let files = text(&o.stdout);
    let (environ, mem) = files.split_once('\n').unwrap_or((&files, ""));
    let mut g = as_nobody("/usr/bin/gdb");
    g.args([
        "-nx",
        "-batch",
        "-ex",
        "info inferiors",
        "-p",
        &pid.to_string(),
    ])
    .env_clear()
    .env("HOME", "/nonexistent");
    let o = tokctl_e2e::run(g, None, Duration::from_secs(60)).expect("gdb");
    (
        environ.trim().to_string(),
        mem.trim().to_string(),
        format!("{}{}", text(&o.stdout), text(&o.stderr)),
    )
}

#[test]
fn same_uid_cannot_read_the_daemons_memory_or_environment_nor_attach_nor_get_a_core() -> Result<()>
{
    let u = unique();
    let secret = format!("CANARY-CS-{u}");
    let idp = Idp::start(IdpConfig {
        clients: Some(vec![cc_client("cc-canary", &secret)]),
        ..Default::default()
    })?;
    let home = NobodyHome::new();
    // The file store: a keychain on root's session bus would refuse a nobody client.
    std::fs::write(
        home.path("config/tokctl/config.toml"),
        format!(
            "store = \"file\"\n{}",
            cc_profile(idp.issuer(), "ci", "cc-canary")
        ),
    )
    .unwrap();
    let sock = home.path("run/tokctl/tokctld.sock");
    // The daemon, as nobody, started with core dumps allowed (as a careless shell would):
    // it must turn them off itself.
    let start = |log: &str| -> Reap {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -c unlimited && exec \"$@\"")
            .arg("sh")
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(bin_dir().join("tokctld"));
        home.envs(&mut c);
        c.env("TOKCTL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path(log)).unwrap());
        let child = c.spawn().expect("start tokctld as nobody");
        assert!(
            wait_for_socket(&sock, Duration::from_secs(20)),
            "no socket: {}",
            std::fs::read_to_string(home.path(log)).unwrap_or_default()
        );
        Reap(child)
    };
    let client = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = as_nobody(bin_dir().join("tokctl"));
        c.args(args);
        home.envs(&mut c);
        tokctl_e2e::run(c, stdin, Duration::from_secs(60)).expect("tokctl as nobody")
    };
    let mut daemon = start("daemon.log");
    let pid = daemon.0.id();
    let o = client(
        &["secret", "set", "ci"],
        Some(format!("{secret}\n").as_bytes()),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = client(&["get", "ci"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The secret and a token are in the daemon's memory now.

    // Control: the same prober against an ordinary nobody process reads and attaches.
    let mut sleeper = as_nobody("sleep");
    sleeper.arg("300").current_dir(home.path("work"));
    let ctl = Reap(sleeper.spawn().expect("sleep"));
    std::thread::sleep(Duration::from_millis(200));
    let (environ, mem, gdb) = probe_as_nobody(ctl.0.id());
    assert_eq!(
        (environ.as_str(), mem.as_str()),
        ("environ: ok", "mem: ok"),
        "control"
    );
    assert!(
        !gdb.contains("Operation not permitted"),
        "control gdb: {gdb}"
    );

    let (environ, mem, gdb) = probe_as_nobody(pid);
    eprintln!(
        "same uid vs tokctld: {environ}; {mem}; gdb: {}",
        gdb.lines().find(|l| l.contains("ptrace")).unwrap_or("")
    );
    assert_eq!(
        environ, "environ: errno 13",
        "environ readable by the same uid"
    );
    assert_eq!(mem, "mem: errno 13", "mem readable by the same uid");
    assert!(
        gdb.contains("ptrace: Operation not permitted"),
        "gdb attached: {gdb}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let core_line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or("");
    assert!(
        core_line.split_whitespace().nth(4) == Some("0"),
        "{core_line}"
    );

    // SIGSEGV: the control process leaves a core in its working directory (so this
    // machine writes cores there), the daemon does not.
    let cores = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("core"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -c unlimited && exec setpriv --reuid=65534 --regid=65534 --clear-groups sleep 300")
        .current_dir(home.path("work"));
    let mut ctl2 = Reap(c.spawn().expect("sleep"));
    std::thread::sleep(Duration::from_millis(300));
    kill_segv(ctl2.0.id());
    let _ = ctl2.0.wait();
    let control_cores = cores(&home.path("work"));
    for c in &control_cores {
        let _ = std::fs::remove_file(c);
    }
    // Rust's runtime catches the first SIGSEGV (its stack-overflow handler), restores the
    // default action and returns; a SIGSEGV sent with kill(2) is then simply lost. The
    // second one takes the default action: terminate and dump core.
    let mut st = None;
    let mut sent = 0;
    for i in 0..40 {
        if i % 4 == 0 && sent < 3 {
            kill_segv(pid);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
        if let Some(s) = daemon.0.try_wait().expect("wait tokctld") {
            st = Some(s);
            break;
        }
    }
    let st = st.expect("tokctld survived three SIGSEGVs");
    eprintln!("tokctld ended after {sent} SIGSEGV(s): {st:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(11),
        "tokctld did not die of SIGSEGV: {st:?}"
    );
    assert!(!st.core_dumped(), "the kernel reports a core dump");
    let daemon_cores = [
        cores(&home.path("work")),
        cores(&home.path("home")),
        cores(Path::new("/")),
    ]
    .concat();
    eprintln!("cores: control {control_cores:?}, tokctld {daemon_cores:?}");
    assert!(
        daemon_cores.is_empty(),
        "tokctld left a core: {daemon_cores:?}"
    );
    assert!(
        !control_cores.is_empty(),
        "the control process left no core either, so the no-core check proves nothing here (core_pattern: {:?})",
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default()
    );
    drop(daemon);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// T14: the canary sweep

/// One `/proc` read: pid, file name, contents.
type Sample = (u32, String, Vec<u8>);

/// `/proc/<pid>/cmdline` and `environ` of every process running one of our binaries,
/// sampled every 50 ms until dropped.
struct ProcSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProcSampler {
    fn start() -> ProcSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeSet<Sample>>> = Arc::default();
        let dir = bin_dir().canonicalize().unwrap_or_else(|_| bin_dir());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                        else {
                            continue;
                        };
                        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
                            continue;
                        };
                        if !exe.starts_with(&dir) {
                            continue;
                        }
                        let mut s = seen.lock().unwrap();
                        for what in ["cmdline", "environ"] {
                            if let Ok(b) = std::fs::read(e.path().join(what)) {
                                s.insert((pid, what.to_string(), b));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        ProcSampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(u32, String, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for ProcSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Everything the sweep scans, each with where it came from.
#[derive(Default)]
struct Places(Vec<(String, Vec<u8>)>);

impl Places {
    fn add(&mut self, place: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((place.into(), bytes.into()));
    }
    /// stdout and stderr of a command whose stdout is not meant to carry a secret.
    fn output(&mut self, what: &str, o: &std::process::Output) {
        self.add(format!("{what}: stdout"), o.stdout.clone());
        self.add(format!("{what}: stderr"), o.stderr.clone());
    }
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => all_files(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

#[test]
fn canary_sweep_every_grant_refresh_helper_and_logout_leaks_nothing() -> Result<()> {
    use base64::Engine as _;
    let u = unique();
    let prefix = format!("CANARY{u}");
    let cc_secret = format!("CANARY-CCSECRET-{u}");
    let pw_secret = format!("CANARY-PWSECRET-{u}");
    let password = format!("CANARY-PASSWORD-{u}");
    let idp = Idp::start(IdpConfig {
        token_prefix: Some(prefix.clone()),
        device_interval: Some(1),
        users: Some(vec![IdpUser::new(defaults::ALICE, &password)]),
        clients: Some(vec![
            cc_client("cc-canary", &cc_secret),
            serde_json::json!({
                "client_id": "pw-canary", "client_secret": pw_secret,
                "grant_types": ["password", "refresh_token"], "response_types": [],
                "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic",
            }),
            serde_json::json!({
                "client_id": defaults::DEVICE_CLI, "application_type": "native",
                "token_endpoint_auth_method": "none",
                "grant_types": [tokctl_e2e::DEVICE_GRANT, "refresh_token"],
                "response_types": [], "redirect_uris": [],
            }),
            serde_json::json!({
                "client_id": defaults::NATIVE_CLI, "application_type": "native",
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "redirect_uris": ["http://127.0.0.1/callback"],
            }),
        ]),
        ..Default::default()
    })?;
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_LOG", "trace");
    let iss = idp.issuer();
    let oidc = "scopes = [\"openid\"]\n";
    env.write_config(&format!(
        "{}[profile.pw]\nissuer = \"{iss}\"\nclient_id = \"pw-canary\"\ngrant = \"password\"\n{oidc}\
         [profile.dev]\nissuer = \"{iss}\"\nclient_id = \"{}\"\ngrant = \"device_code\"\n{oidc}\
         [profile.web]\nissuer = \"{iss}\"\nclient_id = \"{}\"\ngrant = \"authorization_code\"\n{oidc}\
         [[route]]\nurl = \"https://git.example.test/\"\nprofile = \"dev\"\n\
         [[route]]\nurl = \"https://registry.example.test/\"\nprofile = \"web\"\n",
        cc_profile(iss, "cc", "cc-canary"),
        defaults::DEVICE_CLI,
        defaults::NATIVE_CLI,
    ))?;
    // The helpers are installed as links to tokctl, named for git and docker.
    let links = env.tmp_dir().join("bin");
    std::fs::create_dir_all(&links).expect("bin dir");
    let (git_helper, docker_helper) = (
        links.join("git-credential-tokctl"),
        links.join("docker-credential-tokctl"),
    );
    for l in [&git_helper, &docker_helper] {
        std::os::unix::fs::symlink(env.bin_path("tokctl"), l).expect("link");
    }
    let sampler = ProcSampler::start();
    let mut places = Places::default();
    let mut intended: Vec<Vec<u8>> = Vec::new();
    env.spawn_daemon(&[])?;

    // Client credentials, with the client secret read from stdin.
    let o = env.tokctl(
        &["secret", "set", "cc"],
        Some(format!("{cc_secret}\n").as_bytes()),
    )?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    places.output("secret set cc", &o);
    let o = env.tokctl(
        &["secret", "set", "pw"],
        Some(format!("{pw_secret}\n").as_bytes()),
    )?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    places.output("secret set pw", &o);

    // Password grant.
    let o = env.login_as_alice("pw", &password)?;
    places.output("login pw (password)", &o);

    // Device code, approved at the IdP's pages with the canary password.
    let mut login = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    let da = login.wait_event("device_authorization", EVENT_WAIT)?;
    idp.complete_device_login(
        da["user_code"].as_str().expect("user_code"),
        defaults::ALICE,
        &password,
    )?;
    assert!(login.finish(LOGIN_WAIT)?.success(), "{}", login.stderr());
    places.add(
        "login dev (device): events",
        serde_json::to_vec(login.seen()).unwrap(),
    );
    places.add("login dev (device): stderr", login.stderr());

    // Authorization code + PKCE through the loopback redirect.
    let mut login = LoginSession::start(&env, &["web", "--no-browser"], None)?;
    let url = login.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    let r = idp.complete_browser_login(&url, defaults::ALICE, &password)?;
    assert_eq!(r.status, Some(200), "{:?}", r.body);
    assert!(login.finish(LOGIN_WAIT)?.success(), "{}", login.stderr());
    places.add(
        "login web (auth code): events",
        serde_json::to_vec(login.seen()).unwrap(),
    );
    places.add("login web (auth code): stderr", login.stderr());
    // The redirect the IdP sent carries the authorization code: it must start with the
    // prefix, or the code would escape the sweep.
    let code = r.param("code").expect("code in the redirect");
    assert!(
        code.starts_with(&format!("{prefix}-CODE-")),
        "code not prefixed"
    );

    let mut refresh_tokens = BTreeSet::new();
    let mut access_tokens = BTreeSet::new();
    for p in ["pw", "dev", "web"] {
        refresh_tokens.insert(env.stored_refresh_token(p)?.expect("refresh token"));
    }
    // Every profile's token, then three refreshes with rotation each (dropping the cached
    // token forces the next get to refresh).
    let refreshes_before = idp.token_requests()?.grant("refresh_token");
    for p in ["cc", "pw", "dev", "web"] {
        for round in 0..4 {
            if round > 0 {
                let (st, body) = env.socket_request(
                    "POST",
                    "/v1/invalidate",
                    Some(&format!("{{\"profile\":\"{p}\"}}")),
                )?;
                assert_eq!(st, 200, "{body}");
                places.add(format!("invalidate {p}"), body);
            }
            let o = env.tokctl(&["get", p], None)?;
            assert!(o.status.success(), "get {p}: {}", text(&o.stderr));
            places.add(format!("get {p}: stderr"), o.stderr.clone());
            access_tokens.insert(text(&o.stdout).trim().to_string());
            intended.push(o.stdout);
            if p != "cc" {
                refresh_tokens.insert(env.stored_refresh_token(p)?.expect("refresh token"));
            }
        }
    }
    let refreshes = idp.token_requests()?.grant("refresh_token") - refreshes_before;
    assert!(refreshes >= 9, "only {refreshes} refreshes");
    assert!(
        refresh_tokens.len() >= 12,
        "rotation: {} refresh tokens",
        refresh_tokens.len()
    );
    for t in access_tokens.iter().chain(&refresh_tokens) {
        assert!(
            t.starts_with(&prefix),
            "a token without the canary prefix escaped the sweep"
        );
    }
    // Other output formats.
    for f in ["json", "header", "env"] {
        let o = env.tokctl(&["get", "web", "--format", f], None)?;
        assert!(o.status.success(), "{}", text(&o.stderr));
        places.add(format!("get --format {f}: stderr"), o.stderr.clone());
        intended.push(o.stdout);
    }

    // git's and docker's helpers.
    let mut git = env.command(&git_helper);
    git.arg("get");
    let o = env.run(
        git,
        Some(b"protocol=https\nhost=git.example.test\npath=org/repo.git\n\n"),
    )?;
    assert!(
        text(&o.stdout).contains(&prefix),
        "git got no token: {}",
        text(&o.stderr)
    );
    places.add("git-credential-tokctl get: stderr", o.stderr.clone());
    intended.push(o.stdout);
    for (action, input) in [
        (
            "store",
            "protocol=https\nhost=git.example.test\nusername=x\npassword=typed\n\n".to_string(),
        ),
        (
            "erase",
            "protocol=https\nhost=git.example.test\nusername=x\npassword=typed\n\n".to_string(),
        ),
        ("get", "protocol=https\nhost=evil.test\n\n".to_string()),
    ] {
        let mut git = env.command(&git_helper);
        git.arg(action);
        let o = env.run(git, Some(input.as_bytes()))?;
        places.output(&format!("git-credential-tokctl {action}"), &o);
    }
    let mut docker = env.command(&docker_helper);
    docker.arg("get");
    let o = env.run(docker, Some(b"registry.example.test"))?;
    assert!(
        o.status.success() && text(&o.stdout).contains(&prefix),
        "docker: {}",
        text(&o.stderr)
    );
    places.add("docker-credential-tokctl get: stderr", o.stderr.clone());
    intended.push(o.stdout);
    for (action, input) in [
        ("list", ""),
        ("get", "evil.test"),
        ("erase", "registry.example.test"),
    ] {
        let mut docker = env.command(&docker_helper);
        docker.arg(action);
        let o = env.run(docker, Some(input.as_bytes()))?;
        places.output(&format!("docker-credential-tokctl {action}"), &o);
    }

    // exec: the child's environment has the token in exactly the one variable.
    let o = env.tokctl(
        &["exec", "web", "--env", "API_TOKEN", "--", "env", "-0"],
        None,
    )?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    places.add("exec: stderr", o.stderr.clone());
    let mut carried = 0;
    for var in o.stdout.split(|b| *b == 0).filter(|v| !v.is_empty()) {
        if var.starts_with(b"API_TOKEN=") {
            carried += 1;
            assert!(text(var).contains(&prefix));
        } else {
            places.add(
                format!(
                    "exec child env {}",
                    text(var).split('=').next().unwrap_or("")
                ),
                var.to_vec(),
            );
        }
    }
    assert_eq!(carried, 1, "the token variable");

    // kube: the ExecCredential is the intended output.
    let o = env.tokctl(&["kube", "web"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    places.add("kube: stderr", o.stderr.clone());
    intended.push(o.stdout);

    // Status, doctor, error paths.
    for args in [
        vec!["status", "--json"],
        vec!["status"],
        vec!["doctor", "--json"],
        vec!["get", "nope"],
        vec![
            "login",
            "pw",
            "--username",
            defaults::ALICE,
            "--password-stdin",
            "--force",
        ],
    ] {
        let stdin: Option<&[u8]> = args
            .contains(&"--password-stdin")
            .then_some(b"wrong-password\n");
        let o = env.tokctl(&args, stdin)?;
        places.output(&args.join(" "), &o);
    }

    let captured = idp.captured()?;
    assert!(
        !captured.code_verifiers.is_empty(),
        "the IdP saw no PKCE verifier"
    );
    assert!(!captured.id_tokens.is_empty(), "no ID token was issued");

    // Logout with revocation for every profile.
    for p in ["cc", "pw", "dev", "web"] {
        let o = env.tokctl(&["logout", p], None)?;
        assert!(o.status.success(), "logout {p}: {}", text(&o.stderr));
        places.output(&format!("logout {p}"), &o);
    }
    assert!(
        idp.endpoint_stats("revocation")?.total >= 3,
        "no revocation requests"
    );

    // Stop the daemon so its log is complete, then collect the rest.
    let procs = sampler.finish();
    env.signal_daemon(tokctl_e2e::Sig::Term)?;
    std::thread::sleep(Duration::from_secs(2));
    let log = env.daemon_log(0);
    assert!(log.contains("TRACE"), "TOKCTL_LOG=trace had no effect");
    places.add("daemon log (stdout+stderr)", log.clone());
    let pids: BTreeSet<u32> = procs.iter().map(|p| p.0).collect();
    assert!(pids.len() >= 5, "sampled only {} processes", pids.len());
    for (pid, what, bytes) in procs {
        places.add(format!("/proc/{pid}/{what}"), bytes);
    }
    let mut files = Vec::new();
    all_files(env.root(), &mut files);
    for f in &files {
        if let Ok(b) = std::fs::read(f) {
            places.add(format!("file {}", f.display()), b);
        }
    }

    // The canaries: what we chose, what the IdP issued (every issued token, code and
    // device code starts with the prefix), what only the IdP saw, and the encodings a
    // client secret travels in.
    let mut canaries: Vec<(String, String)> = vec![
        ("client secret (cc)".into(), cc_secret.clone()),
        ("client secret (pw)".into(), pw_secret.clone()),
        ("password".into(), password.clone()),
        ("issued-token prefix".into(), prefix.clone()),
        ("authorization code".into(), code),
    ];
    for (id, s) in [("cc-canary", &cc_secret), ("pw-canary", &pw_secret)] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{s}"));
        canaries.push((format!("Basic credentials of {id}"), basic));
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("pw-canary:{pw_secret}"));
    canaries.push((
        "Basic credentials (no padding)".into(),
        basic.trim_end_matches('=').to_string(),
    ));
    for (i, t) in refresh_tokens.iter().enumerate() {
        canaries.push((format!("refresh token {i}"), t.clone()));
    }
    for (i, t) in access_tokens.iter().enumerate() {
        canaries.push((format!("access token {i}"), t.clone()));
    }
    for (i, v) in captured.code_verifiers.iter().enumerate() {
        canaries.push((format!("PKCE verifier {i}"), v.clone()));
    }
    for (i, t) in captured.id_tokens.iter().enumerate() {
        canaries.push((format!("ID token {i}"), t.clone()));
        // Its signature alone is as unique, and survives a log that splits the JWT.
        if let Some(sig) = t.rsplit('.').next() {
            canaries.push((format!("ID token {i} signature"), sig.to_string()));
        }
    }

    let contains = |hay: &[u8], c: &str| hay.windows(c.len()).any(|w| w == c.as_bytes());
    // The matcher finds what is there: every access token is in some intended output.
    for t in &access_tokens {
        assert!(
            intended.iter().any(|o| contains(o, t)),
            "matcher self-check"
        );
    }
    let mut found = Vec::new();
    let mut bytes = 0usize;
    for (place, hay) in &places.0 {
        bytes += hay.len();
        for (name, c) in &canaries {
            if contains(hay, c) {
                found.push(format!("{name} in {place}"));
            }
        }
    }
    eprintln!(
        "canary sweep: {} canaries, {} places ({} files, {} /proc samples of {} pids, {} KiB), {} intended outputs excluded",
        canaries.len(),
        places.0.len(),
        files.len(),
        places.0.iter().filter(|p| p.0.starts_with("/proc/")).count(),
        pids.len(),
        bytes / 1024,
        intended.len()
    );
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    Ok(())
}
