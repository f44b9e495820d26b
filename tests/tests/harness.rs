//! Self-tests of the end-to-end harness: the IdP, the simulated user, the keychain and
//! the isolated environment work before any tokctl test relies on them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokctl_e2e::{
    defaults as d, Endpoint, Error, Failure, Idp, IdpConfig, IdpTls, Keychain, Pki, Result,
    TestClient, TestEnv,
};

fn cc_basic() -> TestClient {
    TestClient::basic(d::CC_BASIC, d::CC_BASIC_SECRET)
}

fn password_cli() -> TestClient {
    TestClient::basic(d::PASSWORD_CLI, d::PASSWORD_CLI_SECRET)
}

/// No token value may appear in the IdP's event log or stderr.
fn assert_not_logged(idp: &Idp, secrets: &[&str]) {
    let events = serde_json::to_string(&idp.events()).unwrap();
    let stderr = idp.stderr();
    for s in secrets {
        assert!(!events.contains(s), "a token value is in the IdP event log");
        assert!(!stderr.contains(s), "a token value is on the IdP's stderr");
    }
}

#[test]
fn client_credentials_token_introspects_active_and_is_counted() -> Result<()> {
    let idp = Idp::start_default()?;
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
    assert!(!idp.issuer().ends_with('/'));
    assert_eq!(idp.issuer(), format!("http://127.0.0.1:{}", idp.port()));

    let before = idp.token_requests()?;
    assert_eq!(before.total, 0);

    let t = idp
        .client_credentials(&cc_basic(), Some("api"))?
        .expect_success("cc-basic")?;
    assert_eq!(t.scope(), Some("api"));
    assert!(t.refresh_token().is_none());
    assert_eq!(t.expires_in(), Some(60));
    let at = t.access_token().unwrap();
    assert!(!at.contains('.'), "access tokens are opaque, not JWTs");

    let info = idp.introspect(at)?;
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], d::CC_BASIC);
    assert_eq!(info["aud"], d::API_RESOURCE);
    assert_eq!(info["scope"], "api");

    // A plain request without scope, with client_secret_post, is introspectable too.
    let post = TestClient::post(d::CC_POST, d::CC_POST_SECRET);
    let t2 = idp
        .client_credentials(&post, None)?
        .expect_success("cc-post")?;
    assert_eq!(idp.introspect(t2.access_token().unwrap())?["active"], true);
    assert_eq!(idp.introspect("not-a-token")?["active"], false);

    let wrong = idp.client_credentials(&TestClient::basic(d::CC_BASIC, "wrong"), None)?;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error(), Some("invalid_client"));

    let stats = idp.token_requests()?;
    assert_eq!(stats.total, 3);
    assert_eq!(stats.ok, 2);
    assert_eq!(stats.grant("client_credentials"), 3);
    assert_eq!(stats.client(d::CC_BASIC), 2);
    assert_eq!(stats.client(d::CC_POST), 1);
    assert_eq!(stats.error("invalid_client"), 1);
    assert_eq!(idp.endpoint_stats("introspection")?.total, 3);

    let token_events = idp.events_of("token");
    assert_eq!(token_events.len(), 3);
    assert_eq!(token_events[0]["grant_type"], "client_credentials");
    assert_eq!(token_events[2]["error"], "invalid_client");
    assert_not_logged(&idp, &[at, t2.access_token().unwrap(), d::CC_BASIC_SECRET]);

    idp.reset_stats()?;
    assert_eq!(idp.token_requests()?.total, 0);
    Ok(())
}

#[test]
fn device_login_completes_and_yields_a_refresh_token() -> Result<()> {
    let idp = Idp::start_default()?;
    let client = TestClient::public(d::DEVICE_CLI);
    let da = idp.start_device_authorization(&client, Some("openid api"))?;
    assert_eq!(da.verification_uri, idp.url("/device"));
    assert!(da.expires_in > 0 && da.expires_in <= 600);
    assert_eq!(
        da.interval, None,
        "oidc-provider sends no interval by default"
    );

    let pending = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(pending.error(), Some("authorization_pending"));

    idp.complete_device_login(&da.user_code, d::ALICE, d::ALICE_PASSWORD)?;

    let t = idp
        .poll_device_token(&client, &da.device_code)?
        .expect_success("device token")?;
    let rt = t
        .refresh_token()
        .expect("a refresh token for the device flow");
    assert!(t.id_token().is_some(), "openid was requested");
    let info = idp.introspect(t.access_token().unwrap())?;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], d::ALICE);
    assert_eq!(info["client_id"], d::DEVICE_CLI);

    let refreshed = idp.refresh(&client, rt, None)?.expect_success("refresh")?;
    let rt2 = refreshed.refresh_token().unwrap();
    assert_ne!(rt2, rt, "rotation gives a new refresh token");

    // The device code is single use, and replaying it revokes what it granted.
    let again = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(again.error(), Some("invalid_grant"));
    assert_eq!(
        idp.refresh(&client, rt2, None)?.error(),
        Some("invalid_grant")
    );

    assert!(idp
        .events_of("login")
        .iter()
        .any(|e| e["ok"] == true && e["username"] == d::ALICE));
    assert_not_logged(&idp, &[rt, &da.device_code, d::ALICE_PASSWORD]);
    Ok(())
}

#[test]
fn device_login_with_wrong_password_or_denial_fails() -> Result<()> {
    let idp = Idp::start_default()?;
    let client = TestClient::public(d::DEVICE_CLI);

    let da = idp.start_device_authorization(&client, Some("api"))?;
    match idp.complete_device_login(&da.user_code, d::ALICE, "wrong") {
        Err(Error::LoginRejected(_)) => {}
        other => panic!("expected LoginRejected, got {other:?}"),
    }
    assert!(idp.events_of("login").iter().any(|e| e["ok"] == false));
    let still = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(still.error(), Some("authorization_pending"));

    let denied = idp.start_device_authorization(&client, Some("api"))?;
    idp.deny_device_login(&denied.user_code)?;
    let r = idp.poll_device_token(&client, &denied.device_code)?;
    assert_eq!(r.error(), Some("access_denied"));

    let aborted = idp.start_device_authorization(&client, Some("api"))?;
    idp.abort_device_code(&aborted.user_code)?;
    let r = idp.poll_device_token(&client, &aborted.device_code)?;
    assert_eq!(r.error(), Some("access_denied"));
    Ok(())
}

#[test]
fn password_grant_and_refresh_rotation_with_reuse_detection() -> Result<()> {
    let idp = Idp::start_default()?;
    let c = password_cli();
    let t0 = idp
        .password_grant(&c, d::ALICE, d::ALICE_PASSWORD, Some("openid api"))?
        .expect_success("password grant")?;
    assert!(t0.id_token().is_some());
    assert_eq!(t0.scope(), Some("openid api"));
    let rt1 = t0.refresh_token().unwrap().to_string();
    let info = idp.introspect(t0.access_token().unwrap())?;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], d::ALICE);
    assert_eq!(info["scope"], "api");

    let t1 = idp
        .refresh(&c, &rt1, None)?
        .expect_success("first refresh")?;
    let rt2 = t1.refresh_token().unwrap().to_string();
    assert_ne!(rt1, rt2, "rotation gives a new refresh token");
    let t2 = idp
        .refresh(&c, &rt2, None)?
        .expect_success("second refresh")?;
    let rt3 = t2.refresh_token().unwrap().to_string();
    assert_ne!(rt2, rt3);
    assert_eq!(idp.introspect(t2.access_token().unwrap())?["active"], true);

    // Down-scoping on refresh works.
    let narrow = idp
        .refresh(&c, &rt3, Some("api"))?
        .expect_success("narrow")?;
    let rt4 = narrow.refresh_token().unwrap().to_string();
    assert_eq!(narrow.scope(), Some("api"));

    let reuse = idp.refresh(&c, &rt1, None)?;
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.error(), Some("invalid_grant"));
    // Reuse detection revokes the whole grant, including the newest refresh token.
    assert_eq!(idp.refresh(&c, &rt4, None)?.error(), Some("invalid_grant"));
    assert!(!idp.events_of("grant_revoked").is_empty());
    let detail = idp.events_of("token");
    assert!(detail
        .iter()
        .any(|e| e["error_detail"] == "refresh token already used"));

    let bad = idp.password_grant(&c, d::ALICE, "wrong", None)?;
    assert_eq!(bad.error(), Some("invalid_grant"));
    let stats = idp.token_requests()?;
    assert_eq!(stats.grant("password"), 2);
    assert_eq!(stats.grant("refresh_token"), 5);
    assert_eq!(stats.error("invalid_grant"), 3);
    assert_not_logged(&idp, &[&rt1, &rt2, &rt3, d::ALICE_PASSWORD]);
    Ok(())
}

#[test]
fn rotation_can_be_switched_off_and_ttls_configured() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        rotate_refresh_token: Some(false),
        access_token_ttl: Some(7),
        ..Default::default()
    })?;
    let c = password_cli();
    let t = idp
        .password_grant(&c, d::BOB, d::BOB_PASSWORD, Some("api"))?
        .expect_success("password grant")?;
    assert_eq!(t.expires_in(), Some(7));
    let rt = t.refresh_token().unwrap();
    for _ in 0..2 {
        let r = idp.refresh(&c, rt, None)?.expect_success("refresh")?;
        assert_eq!(
            r.refresh_token(),
            Some(rt),
            "no rotation: same refresh token"
        );
    }
    let cc = idp
        .client_credentials(&cc_basic(), None)?
        .expect_success("cc")?;
    assert_eq!(cc.expires_in(), Some(7));
    Ok(())
}

#[test]
fn custom_clients_and_users_are_used() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        users: Some(vec![tokctl_e2e::IdpUser::new("carol", "c-pass")]),
        clients: Some(vec![serde_json::json!({
            "client_id": "my-cc",
            "client_secret": "s3cret with spaces&symbols",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "client_secret_basic",
        })]),
        ..Default::default()
    })?;
    let mine = TestClient::basic("my-cc", "s3cret with spaces&symbols");
    let t = idp
        .client_credentials(&mine, None)?
        .expect_success("my-cc")?;
    // The introspector is always registered.
    assert_eq!(idp.introspect(t.access_token().unwrap())?["active"], true);
    // The defaults are gone.
    assert_eq!(
        idp.client_credentials(&cc_basic(), None)?.error(),
        Some("invalid_client")
    );
    Ok(())
}

#[test]
fn injected_failures_hit_the_next_requests_only() -> Result<()> {
    let idp = Idp::start_default()?;
    let mut f = Failure::new(Endpoint::Token, 503, 2);
    f.retry_after = Some(1);
    idp.inject_failure(&f)?;
    for _ in 0..2 {
        let r = idp.client_credentials(&cc_basic(), None)?;
        assert_eq!(r.status, 503);
        assert_eq!(r.error(), Some("temporarily_unavailable"));
    }
    idp.client_credentials(&cc_basic(), None)?
        .expect_success("after the failures")?;

    let mut forever = Failure::new(Endpoint::Token, 400, 0);
    forever.count = None;
    forever.error = Some("invalid_grant".into());
    idp.inject_failure(&forever)?;
    for _ in 0..3 {
        let r = idp.client_credentials(&cc_basic(), None)?;
        assert_eq!(r.error(), Some("invalid_grant"));
    }
    idp.clear_failures()?;
    idp.client_credentials(&cc_basic(), None)?
        .expect_success("cleared")?;

    let stats = idp.token_requests()?;
    assert_eq!(stats.total, 7);
    assert_eq!(stats.client(d::CC_BASIC), 7);
    assert_eq!(stats.error("temporarily_unavailable"), 2);
    assert_eq!(stats.error("invalid_grant"), 3);
    Ok(())
}

#[test]
fn device_interval_and_slow_down_are_configurable() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        device_interval: Some(5),
        device_slow_down: Some(true),
        ..Default::default()
    })?;
    let client = TestClient::public(d::DEVICE_CLI);
    let da = idp.start_device_authorization(&client, Some("api"))?;
    assert_eq!(da.interval, Some(5));
    let first = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(first.error(), Some("authorization_pending"));
    let fast = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(fast.error(), Some("slow_down"));
    // The required interval grew to 10 s; polling again right away is still too fast.
    let still_fast = idp.poll_device_token(&client, &da.device_code)?;
    assert_eq!(still_fast.error(), Some("slow_down"));
    assert_eq!(idp.token_requests()?.error("slow_down"), 2);
    Ok(())
}

#[test]
fn pause_resume_and_stop_simulate_outages() -> Result<()> {
    let idp = Idp::start_default()?;
    let addr = format!("127.0.0.1:{}", idp.port());
    idp.pause()?;
    // The kernel still accepts the connection; nothing answers.
    let mut s = TcpStream::connect(&addr).expect("connect while paused");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(b"GET /test/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).expect_err("a paused IdP does not answer");
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    idp.resume()?;
    // The queued request is answered once the IdP runs again.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = s.read(&mut buf).expect("answered after resume");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(idp.token_requests()?.total, 0);

    assert!(idp.is_running());
    idp.stop()?;
    assert!(!idp.is_running());
    let refused = TcpStream::connect(&addr).expect_err("nothing listens after stop");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    Ok(())
}

/// A one-shot loopback "client" listener that records the callback request line.
fn callback_listener() -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let body = "logged in";
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        tx.send(line).unwrap();
    });
    (port, rx)
}

fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

#[test]
fn browser_login_for_auth_code_with_pkce() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        consent: Some(tokctl_e2e::Consent::Click),
        ..Default::default()
    })?;
    let (port, rx) = callback_listener();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let verifier = "a-test-only-pkce-verifier-that-is-long-enough-0123456789";
    let mut url = url::Url::parse(&idp.url("/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", d::NATIVE_CLI)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid api")
        .append_pair("state", "st-123")
        .append_pair("code_challenge", &pkce_challenge(verifier))
        .append_pair("code_challenge_method", "S256");

    let r = idp.complete_browser_login(url.as_str(), d::BOB, d::BOB_PASSWORD)?;
    assert_eq!(r.status, Some(200), "the loopback listener was fetched");
    assert_eq!(r.body.as_deref(), Some("logged in"));
    assert_eq!(r.param("state").as_deref(), Some("st-123"));
    assert_eq!(r.param("iss").as_deref(), Some(idp.issuer()));
    let code = r.param("code").expect("a code");
    let line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(line.starts_with("GET /callback?"));

    let client = TestClient::public(d::NATIVE_CLI);
    let t = idp
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect),
                ("code_verifier", verifier),
            ],
        )?
        .expect_success("code exchange")?;
    assert!(t.refresh_token().is_some());
    assert_eq!(idp.introspect(t.access_token().unwrap())?["sub"], d::BOB);
    assert!(!idp.events_of("consent").is_empty());
    Ok(())
}

#[test]
fn browser_login_can_be_denied() -> Result<()> {
    let idp = Idp::start_default()?;
    let (port, _rx) = callback_listener();
    let mut url = url::Url::parse(&idp.url("/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", d::NATIVE_CLI)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &format!("http://127.0.0.1:{port}/callback"))
        .append_pair("scope", "openid")
        .append_pair("state", "s")
        .append_pair("code_challenge", &pkce_challenge("v".repeat(43).as_str()))
        .append_pair("code_challenge_method", "S256");
    let r = idp.deny_browser_login(url.as_str())?;
    assert_eq!(r.param("error").as_deref(), Some("access_denied"));
    assert!(r.param("code").is_none());
    Ok(())
}

#[test]
fn idp_serves_tls_with_a_test_ca() -> Result<()> {
    let pki = Pki::new()?;
    let ca = pki.ca("ca")?;
    let (cert, key) = pki.leaf("ca", "leaf", "IP:127.0.0.1")?;
    let idp = Idp::start(IdpConfig {
        tls: Some(IdpTls {
            cert_file: cert,
            key_file: key,
            ca_file: Some(ca),
        }),
        ..Default::default()
    })?;
    assert!(idp.issuer().starts_with("https://127.0.0.1:"));
    let t = idp
        .client_credentials(&cc_basic(), None)?
        .expect_success("over TLS")?;
    assert_eq!(idp.introspect(t.access_token().unwrap())?["active"], true);
    Ok(())
}

#[test]
fn missing_idp_config_values_are_rejected_clearly() {
    // A bad TTL must stop the IdP with a message, not start it with a surprise.
    let err = Idp::start(IdpConfig {
        access_token_ttl: Some(0),
        ..Default::default()
    })
    .expect_err("ttl 0 is invalid");
    assert!(err.to_string().contains("access_token_ttl"), "{err}");
}

#[test]
fn keychain_starts_fast_and_round_trips_secrets() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let kc = Keychain::start(dir.path())?;
    let ready = t.elapsed();
    eprintln!("keychain ready in {ready:?}");
    assert!(ready < Duration::from_secs(10));
    assert!(kc.bus_address().starts_with("unix:path="));
    assert!(kc.name_has_owner("org.freedesktop.secrets")?);

    let attrs = [("service", "tokctl-e2e"), ("username", "alice")];
    assert_eq!(kc.secret_tool_lookup(&attrs)?, None);
    kc.secret_tool_store("e2e item", &attrs, "s3cr3t-value")?;
    assert_eq!(
        kc.secret_tool_lookup(&attrs)?.as_deref(),
        Some("s3cr3t-value")
    );
    assert_eq!(
        kc.secret_tool_lookup(&[("service", "tokctl-e2e"), ("username", "bob")])?,
        None
    );
    // The keyring file on disk is encrypted.
    let mut plaintext = false;
    for e in walk(&dir.path().join("data")) {
        if std::fs::read(&e)
            .map(|b| b.windows(12).any(|w| w == b"s3cr3t-value"))
            .unwrap_or(false)
        {
            plaintext = true;
        }
    }
    assert!(!plaintext, "the secret is in a keyring file in clear");
    kc.secret_tool_clear(&attrs)?;
    assert_eq!(kc.secret_tool_lookup(&attrs)?, None);

    let keyring_pid = kc.secret_service_pid().unwrap();
    drop(kc);
    assert!(tokctl_e2e::wait_gone(keyring_pid, Duration::from_secs(2)));
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn keychain_without_secret_service_and_stopped_service() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let bare = Keychain::start_bus_only(dir.path())?;
    assert!(!bare.name_has_owner("org.freedesktop.secrets")?);
    // No auto-activation on our private bus: a lookup fails instead of starting a keyring.
    assert!(bare.secret_tool_lookup(&[("service", "x")]).is_err());
    assert!(!bare.name_has_owner("org.freedesktop.secrets")?);

    let dir2 = tempfile::tempdir().unwrap();
    let mut kc = Keychain::start(dir2.path())?;
    kc.stop_secret_service()?;
    assert!(!kc.name_has_owner("org.freedesktop.secrets")?);
    assert!(kc.secret_service_pid().is_none());
    Ok(())
}

#[test]
fn test_env_is_isolated_and_scans_its_files() -> Result<()> {
    let mut env = TestEnv::new()?;
    let root = env.root().to_path_buf();
    let mode = std::fs::metadata(env.runtime_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(env.socket_path().starts_with(env.runtime_dir()));
    assert_eq!(
        env.socket_path(),
        env.runtime_dir().join("tokctl").join("tokctld.sock")
    );

    let cfg = env.write_config("default_profile = \"x\"\n")?;
    assert_eq!(cfg, env.config_home().join("tokctl/config.toml"));

    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    let out = env.run(env.command("env"), None)?;
    let vars: std::collections::BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    assert_eq!(vars["HOME"], root.join("home").to_string_lossy());
    assert_eq!(vars["XDG_RUNTIME_DIR"], root.join("run").to_string_lossy());
    assert_eq!(vars["TMPDIR"], root.join("tmp").to_string_lossy());
    assert_eq!(
        vars["DBUS_SESSION_BUS_ADDRESS"],
        env.keychain().bus_address()
    );
    assert_eq!(vars["TOKCTL_LOG"], "debug");
    assert_eq!(vars["TOKCTL_NO_AUTOSTART"], "1");
    assert!(vars["PATH"].starts_with(&*tokctl_e2e::bin_dir().to_string_lossy()));
    // Nothing of the test runner's own environment leaks in.
    let allowed = [
        "PATH",
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR",
        "TMPDIR",
        "DBUS_SESSION_BUS_ADDRESS",
        "TOKCTL_LOG",
        "LANG",
        "NO_COLOR",
        "GIT_CONFIG_NOSYSTEM",
        "USER",
        "TOKCTL_NO_AUTOSTART",
        "PWD",
        "_",
    ];
    for k in vars.keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected variable {k}");
    }
    env.remove_env("TOKCTL_LOG");
    assert!(!env.envs().iter().any(|(k, _)| k == "TOKCTL_LOG"));

    // secret-tool inside the environment reaches its keychain.
    env.keychain().secret_tool_store(
        "t",
        &[("service", "tokctl"), ("username", "p")],
        "kc-value",
    )?;
    assert_eq!(
        env.secret_tool_lookup(&[("service", "tokctl"), ("username", "p")])?
            .as_deref(),
        Some("kc-value")
    );
    let via_env = env.run(
        {
            let mut c = env.command("secret-tool");
            c.args(["lookup", "service", "tokctl", "username", "p"]);
            c
        },
        None,
    )?;
    assert_eq!(via_env.stdout, b"kc-value");

    let needle = "planted-secret-3f9a";
    assert!(env.files_containing(needle)?.is_empty());
    std::fs::create_dir_all(env.state_home().join("tokctl")).unwrap();
    let planted = env.state_home().join("tokctl/state.json");
    std::fs::write(&planted, format!("{{\"x\":\"{needle}\"}}")).unwrap();
    assert_eq!(env.files_containing(needle)?, vec![planted]);
    assert!(
        env.files_containing("kc-value")?.is_empty(),
        "keyring files are encrypted"
    );

    drop(env);
    assert!(!root.exists(), "the temp root is removed on drop");
    Ok(())
}

#[test]
fn test_env_kills_daemons_started_from_it() -> Result<()> {
    let env = TestEnv::new()?;
    let other = TestEnv::new()?;
    // A stand-in daemon: `sleep` under the name tokctld, started with this environment
    // and forgotten, as an autostarted daemon would be.
    let fake = env.tmp_dir().join("tokctld");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut child = env.command(&fake).arg("300").spawn().unwrap();
    let pid = child.id();
    let end = Instant::now() + Duration::from_secs(5);
    while !env.daemons_by_environment().contains(&pid) {
        assert!(Instant::now() < end, "the stand-in daemon was not found");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A tokctld from another environment is not ours.
    assert!(!other.daemons_by_environment().contains(&pid));
    drop(other);
    assert!(tokctl_e2e::is_alive(pid));

    assert!(
        env.daemon_status().expect("status").is_none(),
        "no socket, no status"
    );
    drop(env);
    assert!(
        !tokctl_e2e::is_alive(pid),
        "the daemon outlived its environment"
    );
    let status = child.wait().unwrap();
    assert!(!status.success());
    Ok(())
}
