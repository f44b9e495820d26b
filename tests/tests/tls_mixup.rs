//! Issue #7, security hardening, end to end through `tokctld`: TLS to the IdP (a test CA
//! made at test time), no way to turn verification off, redirects from the token endpoint
//! not followed (T12 d), the RFC 9207 mix-up defence with two real IdPs (S3, S4, T11, T12),
//! and terminal safety of everything the IdP says (A11, A22, S19).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokctl_e2e::{
    defaults, drain_to, text, Idp, IdpConfig, IdpTls, LoginSession, Pki, Result, SharedText,
    TestEnv, RUN_TIMEOUT,
};

const EVENT_WAIT: Duration = Duration::from_secs(30);
const LOGIN_WAIT: Duration = Duration::from_secs(90);
/// Forces a refresh on every `get`: longer than any token the test IdP issues. The daemon
/// still serves a token issued within the last 2 s (it cannot do better), hence [`settle`].
const FORCE_REFRESH: &[&str] = &["--min-ttl", "3h"];

/// Lets the token a login just issued age past the daemon's 2 s "just issued" grace.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

/// An https IdP with the given leaf certificate; the harness trusts `ca`.
fn tls_idp(cert: PathBuf, key: PathBuf, ca: &Path) -> Result<Idp> {
    Idp::start(IdpConfig {
        tls: Some(IdpTls {
            cert_file: cert,
            key_file: key,
            ca_file: Some(ca.to_path_buf()),
        }),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// A password-grant profile (confidential client `password-cli`).
fn password_profile(name: &str, issuer: &str, ca_file: Option<&Path>) -> String {
    let ca = ca_file
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[profile.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{}\"\ngrant = \"password\"\n\
         scopes = [\"offline_access\"]\n{ca}",
        defaults::PASSWORD_CLI
    )
}

/// An authorization-code profile for the public client `native-cli`.
fn browser_profile(name: &str, issuer: &str) -> String {
    format!(
        "[profile.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{}\"\n\
         grant = \"authorization_code\"\nscopes = [\"openid\", \"offline_access\"]\n",
        defaults::NATIVE_CLI
    )
}

/// Makes the daemon re-read its config, asserting it took it.
fn reload(env: &TestEnv) -> Result<()> {
    let (status, body) = env.socket_request("POST", "/v1/reload", Some("{}"))?;
    assert_eq!(status, 200, "reload: {body}");
    Ok(())
}

/// Every byte sequence a terminal must never receive raw from tokctl: ESC, the other C0
/// controls but LF, DEL, C1 controls (UTF-8 `C2 80`–`C2 9F`) and the bidi controls.
fn raw_unsafe(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.chars()
        .filter(|&c| c != '\n' && tokctl_proto::is_unsafe_for_terminal(c))
        .map(|c| format!("U+{:04X}", c as u32))
        .collect()
}

/// A plain-text response status from a GET to `url` (the loopback listener), `None` when
/// nothing answers.
fn http_get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .build()
        .into();
    let mut r = agent.get(url).call().ok()?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    Some((status, body))
}

/// POSTs JSON to one of the IdP's `/test/` routes.
fn idp_test_post(idp: &Idp, path: &str, body: &Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(&idp.url(path))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("test route answers");
    assert_eq!(r.status().as_u16(), 200, "POST {path}");
}

/// The query parameter `name` of `url`.
fn param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in the authorization URL"))
}

/// `url` with query parameter `name` replaced by `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// Waits until `f` holds, up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts a failed `tokctl` command wrote exactly one error line, with exit `code`.
fn one_error_line(o: &std::process::Output, code: i32) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

// ---------------------------------------------------------------------------------------
// 1. TLS

#[test]
fn tls_idp_is_trusted_through_ca_file_only_and_failures_keep_the_refresh_token() -> Result<()> {
    let pki = Pki::new()?;
    let ca = pki.ca("ca")?;
    let wrong_ca = pki.ca("other-ca")?;
    let (cert, key) = pki.leaf("ca", "idp", "IP:127.0.0.1")?;
    let idp = tls_idp(cert, key, &ca)?;
    assert!(idp.issuer().starts_with("https://127.0.0.1:"));
    let env = TestEnv::new()?;
    env.write_config(&password_profile("p", idp.issuer(), Some(&ca)))?;
    env.spawn_daemon(&[])?;

    // With ca_file: logged in and tokens over TLS, through the daemon.
    env.password_login("p", defaults::PASSWORD_CLI_SECRET)?;
    let o = env.tokctl(&["get", "p"], None)?;
    assert!(o.status.success(), "get: {}", text(&o.stderr));
    let token = text(&o.stdout).trim().to_string();
    assert_eq!(idp.introspect(&token)?["active"], true);
    let rt = env
        .stored_refresh_token("p")?
        .expect("refresh token stored");
    settle();

    // Without ca_file, then with a CA that did not issue the certificate: fails closed.
    for (what, ca_file) in [("no ca_file", None), ("wrong CA", Some(wrong_ca.as_path()))] {
        env.write_config(&password_profile("p", idp.issuer(), ca_file))?;
        reload(&env)?;
        let before = idp.token_requests()?.total;
        // Past any cached token: this get has to reach the IdP.
        let o = env.tokctl(&["get", "p", FORCE_REFRESH[0], FORCE_REFRESH[1]], None)?;
        let err = one_error_line(&o, 2);
        eprintln!("{what}: {err}");
        assert!(err.contains("not trusted"), "{what}: {err}");
        assert!(
            err.contains("set ca_file"),
            "{what}: says what to do: {err}"
        );
        assert!(
            err.contains(idp.issuer()),
            "{what}: names the issuer: {err}"
        );
        assert!(
            !err.contains(&rt) && !err.contains(&token),
            "{what}: no secret: {err}"
        );
        assert!(
            !err.contains(defaults::PASSWORD_CLI_SECRET),
            "{what}: {err}"
        );
        assert_eq!(
            idp.token_requests()?.total,
            before,
            "{what}: no request reached the IdP"
        );
        assert_eq!(
            env.stored_refresh_token("p")?.as_deref(),
            Some(rt.as_str()),
            "{what}: the refresh token is kept"
        );
        let last = env.profile_status("p")?["last_error"].clone();
        assert!(
            last.as_str().unwrap_or("").contains("ca_file"),
            "{what}: status shows the cause: {last}"
        );
    }

    // The right CA again: the kept refresh token still works (one refresh, rotated).
    env.write_config(&password_profile("p", idp.issuer(), Some(&ca)))?;
    reload(&env)?;
    let refreshes = idp.token_requests()?.grant("refresh_token");
    let o = env.tokctl(&["get", "p", FORCE_REFRESH[0], FORCE_REFRESH[1]], None)?;
    assert!(
        o.status.success(),
        "get after fixing ca_file: {}",
        text(&o.stderr)
    );
    assert_eq!(idp.token_requests()?.grant("refresh_token"), refreshes + 1);
    assert_eq!(idp.token_requests()?.error("invalid_grant"), 0);
    assert_ne!(env.stored_refresh_token("p")?.as_deref(), Some(rt.as_str()));
    Ok(())
}

#[test]
fn certificate_for_another_host_name_fails_closed_even_from_a_trusted_ca() -> Result<()> {
    let pki = Pki::new()?;
    let ca = pki.ca("ca")?;
    // Signed by the CA the profile trusts, but for another name than 127.0.0.1.
    let (cert, key) = pki.leaf("ca", "other-host", "DNS:idp.other.test")?;
    let idp = tls_idp(cert, key, &ca)?;
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.cc]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"client_credentials\"\n\
         ca_file = \"{}\"\n",
        idp.issuer(),
        defaults::CC_BASIC,
        ca.display()
    ))?;
    env.spawn_daemon(&[])?;
    env.set_client_secret("cc", defaults::CC_BASIC_SECRET)?;

    let o = env.tokctl(&["get", "cc"], None)?;
    let err = one_error_line(&o, 2);
    assert!(err.contains("not valid for that host name"), "{err}");
    assert!(err.contains(idp.issuer()), "names the issuer: {err}");
    assert!(!err.contains(defaults::CC_BASIC_SECRET), "{err}");
    // The IdP's own event log (no https call from the harness, which would fail the same
    // way): not one token request, so the client secret never left.
    assert!(
        idp.events_of("token").is_empty(),
        "{:?}",
        idp.events_of("token")
    );
    Ok(())
}

#[test]
fn no_config_option_turns_tls_verification_off_and_plain_http_is_loopback_only() -> Result<()> {
    let env = TestEnv::new()?;
    let base = "[profile.x]\nissuer = \"https://idp.example.com\"\nclient_id = \"c\"\n\
                grant = \"device_code\"\n";
    for key in [
        "insecure = true",
        "danger_accept_invalid_certs = true",
        "tls_verify = false",
        "verify_tls = false",
        "skip_tls_verify = true",
    ] {
        env.write_config(&format!("{base}{key}\n"))?;
        let o = env.run_bin("tokctld", &[])?;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{key}: {err}");
        let name = key.split(' ').next().unwrap_or_default();
        assert!(
            err.contains("config.toml:5:"),
            "{key}: file and line: {err}"
        );
        assert!(err.contains(name), "{key}: names the key: {err}");
        assert!(err.contains("unknown field"), "{key}: {err}");
    }
    for (issuer, line_key) in [
        ("http://idp.example.com", "config.toml:2: profile.x.issuer"),
        (
            "http://10.0.0.1:8080/realms/x",
            "config.toml:2: profile.x.issuer",
        ),
    ] {
        env.write_config(&format!(
            "[profile.x]\nissuer = \"{issuer}\"\nclient_id = \"c\"\ngrant = \"device_code\"\n"
        ))?;
        let o = env.run_bin("tokctld", &[])?;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{issuer}: {err}");
        assert!(err.contains(line_key), "{issuer}: {err}");
        assert!(err.contains("plain http"), "{issuer}: {err}");
    }
    // The same on reload of a running daemon: refused, the last good config stays.
    env.write_config("[profile.ok]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\ngrant = \"device_code\"\n")?;
    env.spawn_daemon(&[])?;
    env.write_config(&format!("{base}insecure = true\n"))?;
    let (status, body) = env.socket_request("POST", "/v1/reload", Some("{}"))?;
    assert_ne!(status, 200, "{body}");
    assert!(
        body.contains("config.toml:5:") && body.contains("insecure"),
        "{body}"
    );
    assert_eq!(
        env.profile_status("ok")?["name"],
        "ok",
        "last good config kept"
    );
    Ok(())
}

/// A plain TCP listener standing in for where a redirect points; counts connections.
struct Sink {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
            }
        });
        Sink { port, hits }
    }
}

#[test]
fn a_redirect_from_the_token_endpoint_is_not_followed_and_the_target_gets_nothing() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let sink = Sink::start();
    let env = TestEnv::new()?;
    env.write_config(&password_profile("p", idp.issuer(), None))?;
    env.spawn_daemon(&[])?;
    env.password_login("p", defaults::PASSWORD_CLI_SECRET)?;
    let rt = env
        .stored_refresh_token("p")?
        .expect("refresh token stored");
    settle();

    // Every token request now answers 307 to the sink: following it would re-POST the
    // refresh token and the client secret there (RFC 9700 §4.12).
    let steal = format!("http://127.0.0.1:{}/steal", sink.port);
    idp_test_post(
        &idp,
        "/test/fail",
        &serde_json::json!({"endpoint": "token", "status": 307, "count": null, "location": steal}),
    );
    let before = idp.token_requests()?.total;
    let o = env.tokctl(&["get", "p", FORCE_REFRESH[0], FORCE_REFRESH[1]], None)?;
    let err = one_error_line(&o, 5);
    assert!(err.contains("redirected, not followed"), "{err}");
    assert!(
        !err.contains("steal"),
        "the redirect target is not echoed: {err}"
    );
    assert!(
        idp.token_requests()?.total > before,
        "the IdP saw the refresh"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sink.hits.load(Ordering::SeqCst),
        0,
        "the redirect target got a request"
    );
    assert_eq!(env.stored_refresh_token("p")?.as_deref(), Some(rt.as_str()));

    // Transient, so once the IdP behaves again the kept refresh token works.
    idp_test_post(&idp, "/test/clear-failures", &serde_json::json!({}));
    assert!(
        eventually(Duration::from_secs(90), || env
            .tokctl(&["get", "p", FORCE_REFRESH[0], FORCE_REFRESH[1]], None)
            .map(|o| o.status.success())
            .unwrap_or(false)),
        "no token after the IdP recovered"
    );
    assert_eq!(sink.hits.load(Ordering::SeqCst), 0);
    assert_eq!(idp.token_requests()?.error("invalid_grant"), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Mix-up (RFC 9207)

#[test]
fn authorization_response_from_another_idp_is_refused_and_no_code_is_redeemed() -> Result<()> {
    let a = Idp::start(IdpConfig::default())?;
    let b = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&browser_profile("a", a.issuer()))?;
    env.spawn_daemon(&[])?;

    let mut login = LoginSession::start(&env, &["a", "--no-browser"], None)?;
    let url = login.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(url.starts_with(&format!("{}/", a.issuer())), "{url}");
    let redirect_uri = param(&url, "redirect_uri");
    // The mix-up: the same authorization request (state, PKCE, redirect to A's listener)
    // is answered by IdP B, which sends the browser back with its own code and iss=B.
    let mixed = format!("{}{}", b.issuer(), &url[a.issuer().len()..]);
    let r = b.complete_browser_login(&mixed, defaults::ALICE, defaults::ALICE_PASSWORD)?;
    assert!(
        r.url.starts_with(&redirect_uri),
        "B redirected to A's listener"
    );
    assert_eq!(r.param("iss").as_deref(), Some(b.issuer()), "B sends iss");
    assert!(r.param("code").is_some());
    let page = r.body.clone().unwrap_or_default();
    assert!(page.contains("Login failed"), "{page}");

    let status = login.finish(LOGIN_WAIT)?;
    assert_eq!(
        status.code(),
        Some(1),
        "{:?} {}",
        login.seen(),
        login.stderr()
    );
    let last = login.seen().last().cloned().unwrap_or_default();
    assert_eq!(last["event"], "error", "{last}");
    let msg = last["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("RFC 9207") && msg.contains(b.issuer()) && msg.contains(a.issuer()),
        "{msg}"
    );
    assert!(msg.contains("tokctl login a"), "says what to do: {msg}");
    assert!(
        !msg.contains(&r.param("code").unwrap_or_default()),
        "no code in the message"
    );
    // Neither token endpoint saw the code: not A (the wrong issuer), not B (the attacker).
    assert_eq!(a.token_requests()?.total, 0);
    assert_eq!(b.token_requests()?.total, 0);
    assert!(env.stored_refresh_token("a")?.is_none());
    // The listener is closed; the same callback cannot be retried.
    assert_eq!(http_get(&r.url), None, "the loopback port stayed open");
    Ok(())
}

#[test]
fn swapped_callbacks_of_two_concurrent_logins_are_refused_by_both_listeners() -> Result<()> {
    let a = Idp::start(IdpConfig::default())?;
    let b = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "{}{}",
        browser_profile("a", a.issuer()),
        browser_profile("b", b.issuer())
    ))?;
    env.spawn_daemon(&[])?;

    let mut la = LoginSession::start(&env, &["a", "--no-browser"], None)?;
    let mut lb = LoginSession::start(&env, &["b", "--no-browser"], None)?;
    let url_a = la.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    let url_b = lb.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    let (cb_a, cb_b) = (param(&url_a, "redirect_uri"), param(&url_b, "redirect_uri"));
    assert_ne!(cb_a, cb_b, "each login has its own listener");
    assert_ne!(param(&url_a, "state"), param(&url_b, "state"));

    // Each IdP answers its own login, but the browser lands on the other login's listener:
    // right issuer, real code, wrong state for that listener.
    for (idp, url, other_cb, name) in [(&a, &url_a, &cb_b, "a"), (&b, &url_b, &cb_a, "b")] {
        let swapped = with_param(url, "redirect_uri", other_cb);
        let r = idp.complete_browser_login(&swapped, defaults::ALICE, defaults::ALICE_PASSWORD)?;
        assert!(r.url.starts_with(other_cb.as_str()), "{name}");
        assert_eq!(
            r.status,
            Some(400),
            "{name}'s callback refused by the other listener"
        );
        assert!(
            r.body.unwrap_or_default().contains("Not this login"),
            "{name}"
        );
    }
    assert_eq!(a.token_requests()?.total, 0, "no code redeemed at A");
    assert_eq!(b.token_requests()?.total, 0, "no code redeemed at B");
    // Both logins are still waiting for their own callback.
    assert!(
        la.next_event(Duration::from_secs(2)).is_err(),
        "{:?}",
        la.seen()
    );
    assert!(
        lb.next_event(Duration::from_secs(1)).is_err(),
        "{:?}",
        lb.seen()
    );

    // The right callbacks still complete both logins, one code redemption each.
    for (idp, url, login, name) in [(&a, &url_a, &mut la, "a"), (&b, &url_b, &mut lb, "b")] {
        let r = idp.complete_browser_login(url, defaults::ALICE, defaults::ALICE_PASSWORD)?;
        assert_eq!(r.status, Some(200), "{name}");
        assert!(
            login.finish(LOGIN_WAIT)?.success(),
            "{name}: {}",
            login.stderr()
        );
        assert_eq!(
            idp.token_requests()?.grant("authorization_code"),
            1,
            "{name}"
        );
        assert!(env.stored_refresh_token(name)?.is_some(), "{name}");
    }
    Ok(())
}

#[test]
fn callback_without_iss_is_refused_when_the_idp_promises_iss() -> Result<()> {
    let a = Idp::start(IdpConfig::default())?;
    let meta = http_get(&a.url("/.well-known/openid-configuration")).expect("discovery");
    let meta: Value = serde_json::from_str(&meta.1).expect("metadata json");
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    let env = TestEnv::new()?;
    env.write_config(&browser_profile("a", a.issuer()))?;
    env.spawn_daemon(&[])?;

    let mut login = LoginSession::start(&env, &["a", "--no-browser"], None)?;
    let url = login.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    let cb = param(&url, "redirect_uri");
    let state = param(&url, "state");
    let (status, page) =
        http_get(&format!("{cb}?code=forged-code&state={state}")).expect("listener");
    assert_eq!(status, 200);
    assert!(page.contains("Login failed"), "{page}");
    assert!(
        login.finish(LOGIN_WAIT)?.code() == Some(1),
        "{}",
        login.stderr()
    );
    let msg = login
        .seen()
        .last()
        .map(|e| e["message"].to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("carried no iss") && msg.contains("RFC 9207"),
        "{msg}"
    );
    assert_eq!(a.token_requests()?.total, 0, "the code was not redeemed");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Terminal safety

/// What the IdP's hostile texts carry: ESC sequences (clear screen, OSC title with BEL),
/// a C1 CSI, bidi overrides and isolates, the Arabic letter mark.
const HOSTILE_CODE: &str = "WDJB-MJHT\u{1b}[2J\u{9b}31m\u{202e}";
const HOSTILE_DESCRIPTION: &str =
    "evil\u{202e}txt.exe\u{2066}\u{9b}[31m\u{1b}]0;pwned\u{7}\u{61c}\u{200f}\u{7f}end";

/// How long to wait for the rest of a finished client's stderr.
const RUN_WAIT_STDERR: Duration = Duration::from_secs(5);

/// A `tokctl login` without `--json`, as on a terminal, with stdout and stderr captured.
struct PlainLogin {
    child: Child,
    stderr: SharedText,
    /// Disconnects when all of stderr has been read.
    stderr_done: std::sync::mpsc::Receiver<()>,
}

impl PlainLogin {
    fn start(env: &TestEnv, profile: &str) -> PlainLogin {
        let mut child = env
            .cmd("tokctl")
            .args(["login", profile, "--no-browser"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tokctl login");
        let stderr = SharedText::default();
        let stderr_done = drain_to(child.stderr.take().expect("piped"), stderr.clone());
        PlainLogin {
            child,
            stderr,
            stderr_done,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for an stderr line containing `needle`; returns that line.
    fn wait_line(&self, needle: &str) -> String {
        let mut found = String::new();
        let ok = eventually(EVENT_WAIT, || {
            let s = self.stderr();
            match s.lines().find(|l| l.contains(needle)) {
                Some(l) => {
                    found = l.to_string();
                    true
                }
                None => false,
            }
        });
        assert!(ok, "no {needle:?} on stderr: {}", self.stderr());
        found
    }

    /// Waits for the exit; returns the exit code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_end(&mut out);
        }
        let end = Instant::now() + LOGIN_WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < end, "tokctl login did not end");
            std::thread::sleep(Duration::from_millis(100));
        };
        // Everything the client wrote to stderr has been read.
        let _ = self.stderr_done.recv_timeout(RUN_WAIT_STDERR);
        (status.code(), out, self.stderr().into_bytes())
    }
}

impl Drop for PlainLogin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hostile_device_user_code_and_error_description_reach_the_terminal_escaped() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        device_interval: Some(1),
        ..Default::default()
    })?;
    idp_test_post(
        &idp,
        "/test/device-display",
        &serde_json::json!({"user_code": HOSTILE_CODE}),
    );
    idp_test_post(
        &idp,
        "/test/fail",
        &serde_json::json!({"endpoint": "token", "status": 400, "count": null,
                            "error": "invalid_request", "error_description": HOSTILE_DESCRIPTION}),
    );
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.dev]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"device_code\"\n",
        idp.issuer(),
        defaults::DEVICE_CLI
    ))?;
    env.spawn_daemon(&[])?;

    // As on a terminal: the prompt, then the IdP's refusal of the first poll.
    let login = PlainLogin::start(&env, "dev");
    let prompt = login.wait_line("enter the code");
    // A22: the prompt warns against codes someone else sent.
    login.wait_line("Enter it only if you just ran `tokctl login` here");
    let (code, out, err) = login.finish();
    assert_eq!(code, Some(2), "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        raw_unsafe(&out),
        Vec::<String>::new(),
        "stdout raw controls"
    );
    assert_eq!(
        raw_unsafe(&err),
        Vec::<String>::new(),
        "stderr raw controls: {err:?}"
    );
    let err = String::from_utf8_lossy(&err).into_owned();
    // S19: the user code and the verification URI are still shown, escaped.
    assert!(
        prompt.contains("WDJB-MJHT\\u{1b}[2J\\u{9b}31m\\u{202e}"),
        "{prompt}"
    );
    assert!(
        prompt.contains(&format!("{}/device", idp.issuer())),
        "{prompt}"
    );
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("tokctl: "), "{last}");
    assert!(last.contains("invalid_request"), "{last}");
    assert!(
        last.contains("evil\\u{202e}txt.exe\\u{2066}\\u{9b}[31m\\u{1b}]0;pwned\\u{7}"),
        "{last}"
    );
    assert!(last.contains("\\u{61c}\\u{200f}\\u{7f}end"), "{last}");

    // With --json: the exact values for a program, still no raw control on stdout.
    let mut c = env.cmd("tokctl");
    c.args(["login", "dev", "--no-browser", "--json"]);
    let o = tokctl_e2e::run(c, None, RUN_TIMEOUT)?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(
        raw_unsafe(&o.stdout),
        Vec::<String>::new(),
        "json stdout raw controls"
    );
    assert_eq!(
        raw_unsafe(&o.stderr),
        Vec::<String>::new(),
        "json stderr raw controls"
    );
    let events: Vec<Value> = BufReader::new(&o.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("each line is JSON"))
        .collect();
    let da = events
        .iter()
        .find(|e| e["event"] == "device_authorization")
        .expect("device_authorization event");
    assert_eq!(
        da["user_code"], HOSTILE_CODE,
        "the value survives, escaped as JSON"
    );
    let error = events.last().expect("events");
    assert_eq!(error["event"], "error");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("evil"),
        "{error}"
    );
    Ok(())
}

#[test]
fn hostile_error_description_in_a_browser_callback_reaches_the_terminal_escaped() -> Result<()> {
    let a = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&browser_profile("a", a.issuer()))?;
    env.spawn_daemon(&[])?;
    let login = PlainLogin::start(&env, "a");
    let url = login
        .wait_line(&format!("{}/auth", a.issuer()))
        .trim()
        .to_string();
    let cb = param(&url, "redirect_uri");
    let state = param(&url, "state");
    let mut u = url::Url::parse(&cb).expect("callback url");
    u.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", HOSTILE_DESCRIPTION)
        .append_pair("state", &state)
        .append_pair("iss", a.issuer());
    let (status, page) = http_get(u.as_str()).expect("listener answers");
    assert_eq!(status, 200);
    assert!(page.contains("refused the login"), "{page}");
    let (code, out, err) = login.finish();
    assert_eq!(code, Some(6), "denied: {}", String::from_utf8_lossy(&err));
    assert_eq!(raw_unsafe(&out), Vec::<String>::new());
    assert_eq!(raw_unsafe(&err), Vec::<String>::new(), "{err:?}");
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("evil\\u{202e}txt.exe"), "{err}");
    assert_eq!(a.token_requests()?.total, 0);
    Ok(())
}

#[test]
fn get_and_the_helpers_never_start_a_device_login() -> Result<()> {
    // S20 / A22: only an interactive `tokctl login` may start a device flow; a logged-out
    // profile asked for by a script, git, docker or kubectl fails without one.
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    let bin = env.tmp_dir().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for helper in ["git-credential-tokctl", "docker-credential-tokctl"] {
        std::os::unix::fs::symlink(env.bin_path("tokctl"), bin.join(helper)).expect("link");
    }
    // A browser that leaves a mark if anything ever opens it.
    let marker = env.tmp_dir().join("browser-opened");
    let browser = bin.join("browser");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .expect("browser script");
    let mut perms = std::fs::metadata(&browser).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&browser, perms).expect("chmod");
    env.set_env("BROWSER", browser.as_os_str());
    env.set_env("DISPLAY", ":99");
    env.write_config(&format!(
        "default_profile = \"dev\"\n[profile.dev]\nissuer = \"{}\"\nclient_id = \"{}\"\n\
         grant = \"device_code\"\n\
         [[route]]\nurl = \"https://git.test/org/\"\nprofile = \"dev\"\n\
         [[route]]\nurl = \"https://registry.test\"\nprofile = \"dev\"\n",
        idp.issuer(),
        defaults::DEVICE_CLI
    ))?;
    env.spawn_daemon(&[])?;

    for args in [
        &["get"][..],
        &["get", "dev", "--format", "header"],
        &["kube", "dev"],
        &["exec", "dev", "--", "true"],
    ] {
        let o = env.tokctl(args, None)?;
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("tokctl login dev"),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    let git = env.run(
        {
            let mut c = env.command(bin.join("git-credential-tokctl"));
            c.arg("get");
            c
        },
        Some(b"protocol=https\nhost=git.test\npath=org/repo.git\n\n"),
    )?;
    assert!(git.stdout.is_empty(), "git got: {}", text(&git.stdout));
    let docker = env.run(
        {
            let mut c = env.command(bin.join("docker-credential-tokctl"));
            c.arg("get");
            c
        },
        Some(b"registry.test\n"),
    )?;
    assert_eq!(docker.status.code(), Some(1), "{}", text(&docker.stdout));
    assert!(!text(&docker.stdout).contains("Secret"));

    assert_eq!(idp.endpoint_stats("device_authorization")?.total, 0);
    assert_eq!(idp.token_requests()?.total, 0);
    assert!(!marker.exists(), "a browser was opened");
    Ok(())
}

#[test]
fn slow_down_adds_five_seconds_to_every_later_poll() -> Result<()> {
    // S17 through the daemon: the IdP asks for an interval of 1 s, then answers the first
    // poll with slow_down; every later poll must wait at least 1 + 5 s.
    let idp = Idp::start(IdpConfig {
        device_interval: Some(1),
        ..Default::default()
    })?;
    idp_test_post(
        &idp,
        "/test/fail",
        &serde_json::json!({"endpoint": "token", "status": 400, "count": 1, "error": "slow_down"}),
    );
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.dev]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"device_code\"\nscopes = [\"openid\", \"offline_access\"]\n",
        idp.issuer(),
        defaults::DEVICE_CLI
    ))?;
    env.spawn_daemon(&[])?;
    let mut login = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    let da = login.wait_event("device_authorization", EVENT_WAIT)?;
    let user_code = da["user_code"].as_str().expect("user_code").to_string();
    let polls = |idp: &Idp| -> Vec<f64> {
        idp.events_of("token")
            .iter()
            .filter(|e| e["grant_type"] == tokctl_e2e::DEVICE_GRANT)
            .filter_map(|e| e["ts"].as_f64())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(60), || polls(&idp).len() >= 3),
        "polls: {:?}",
        polls(&idp)
    );
    idp.complete_device_login(&user_code, defaults::ALICE, defaults::ALICE_PASSWORD)?;
    assert!(
        login.finish(LOGIN_WAIT)?.success(),
        "{} {:?}",
        login.stderr(),
        idp.events_of("device_login")
    );
    let p = polls(&idp);
    assert_eq!(idp.token_requests()?.error("slow_down"), 1);
    for w in p.windows(2) {
        assert!(
            w[1] - w[0] >= 5.9,
            "a poll came sooner than 6 s after slow_down: {p:?}"
        );
    }
    Ok(())
}

#[test]
fn profile_names_with_bidi_controls_are_escaped_in_status_and_errors() -> Result<()> {
    // A11: a profile name is the user's own text, but bidi controls in it would still
    // reorder what status and error lines show. Config names may hold them (only C0/C1,
    // ':' and '/' are refused), so every place that prints one must escape them.
    let idp = Idp::start(IdpConfig::default())?;
    let name = "work\u{202e}lanosrep\u{2066}";
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.\"{name}\"]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"device_code\"\n",
        idp.issuer(),
        defaults::DEVICE_CLI
    ))?;
    env.spawn_daemon(&[])?;
    for args in [&["status"][..], &["status", "--json"]] {
        let o = env.tokctl(args, None)?;
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        assert_eq!(raw_unsafe(&o.stdout), Vec::<String>::new(), "{args:?}");
        let v: Value = serde_json::from_slice(&o.stdout).expect("status is JSON in a pipe");
        assert_eq!(
            v["profiles"][0]["name"], name,
            "{args:?}: the value is kept"
        );
    }
    let o = env.tokctl(&["get", name], None)?;
    let err = one_error_line(&o, 4);
    assert_eq!(raw_unsafe(err.as_bytes()), Vec::<String>::new(), "{err}");
    assert!(err.contains("work\\u{202e}lanosrep\\u{2066}"), "{err}");
    Ok(())
}
