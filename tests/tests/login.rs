//! Issue #3 end to end: device, authorization-code and password logins through the real
//! daemon, a real keychain and the real IdP's pages; refresh-token rotation across daemon
//! restarts; logout with revocation.

use serde_json::Value;
use std::time::Duration;
use tokctl_e2e::{
    defaults, text, Idp, IdpConfig, LoginSession, Result, TestClient, TestEnv, DEVICE_GRANT,
};

const EVENT_WAIT: Duration = Duration::from_secs(20);
const LOGIN_WAIT: Duration = Duration::from_secs(60);

/// A config with one profile `name` of `grant` for `client`.
fn profile(issuer: &str, name: &str, client: &str, grant: &str) -> String {
    format!(
        "[profile.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\ngrant = \"{grant}\"\n\
         scopes = [\"openid\", \"offline_access\"]\n"
    )
}

/// An IdP, and an environment with a running daemon and one profile of `grant` for it.
fn setup(cfg: IdpConfig, name: &str, client: &str, grant: &str) -> Result<(Idp, TestEnv)> {
    let idp = Idp::start(cfg)?;
    let env = TestEnv::new()?;
    env.write_config(&profile(idp.issuer(), name, client, grant))?;
    env.spawn_daemon(&[])?;
    Ok((idp, env))
}

/// `tokctl get PROFILE`, asserting success; returns the token.
fn get(env: &TestEnv, profile: &str) -> Result<String> {
    let o = env.tokctl(&["get", profile], None)?;
    assert!(o.status.success(), "get {profile}: {}", text(&o.stderr));
    Ok(text(&o.stdout))
}

#[test]
fn device_login_through_the_idp_pages_then_tokens_come_from_the_keychain() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig {
            device_interval: Some(2),
            ..Default::default()
        },
        "dev",
        defaults::DEVICE_CLI,
        "device_code",
    )?;
    assert_eq!(env.profile_status("dev")?["state"], "logged_out");

    let mut login = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    let da = login.wait_event("device_authorization", EVENT_WAIT)?;
    let user_code = da["user_code"].as_str().expect("user_code").to_string();
    let uri = da["verification_uri"].as_str().expect("verification_uri");
    assert!(uri.starts_with(idp.issuer()), "verification_uri {uri}");
    assert!(da["expires_in"].as_u64().unwrap_or(0) > 0);
    // Let the daemon poll a few times before the user approves.
    std::thread::sleep(Duration::from_secs(5));
    idp.complete_device_login(&user_code, defaults::ALICE, defaults::ALICE_PASSWORD)?;
    let status = login.finish(LOGIN_WAIT)?;
    assert!(
        status.success(),
        "login failed: {:?} {}",
        login.seen(),
        login.stderr()
    );
    assert_eq!(
        login.seen().last().map(|e| e["event"].clone()),
        Some("done".into())
    );

    // Polls honour the IdP's interval (2 s here); the earliest poll waits one interval too.
    let polls: Vec<f64> = idp
        .events_of("token")
        .iter()
        .filter(|e| e["grant_type"] == DEVICE_GRANT)
        .filter_map(|e| e["ts"].as_f64())
        .collect();
    assert!(polls.len() >= 2, "polls: {polls:?}");
    for w in polls.windows(2) {
        assert!(
            w[1] - w[0] >= 1.9,
            "polled faster than the interval: {polls:?}"
        );
    }

    // Logged in: the refresh token is in the keychain and nowhere in a file.
    let rt = env
        .stored_refresh_token("dev")?
        .expect("refresh token in the keychain");
    assert!(env.files_containing(&rt)?.is_empty());
    assert_eq!(env.profile_status("dev")?["state"], "valid");
    let token = get(&env, "dev")?;
    let intro = idp.introspect(&token)?;
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["sub"], defaults::ALICE);

    // Logging in again asks for nothing.
    let before = idp.endpoint_stats("device_authorization")?.total;
    let mut again = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    assert!(again.finish(LOGIN_WAIT)?.success(), "{}", again.stderr());
    let said = again
        .seen()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(said.contains("already logged in"), "{:?}", again.seen());
    assert_eq!(idp.endpoint_stats("device_authorization")?.total, before);

    // A new daemon starts from the keychain alone: one refresh, rotated and saved.
    env.restart_daemon()?;
    let refreshes = idp.token_requests()?.grant("refresh_token");
    let token2 = get(&env, "dev")?;
    assert_ne!(token2, token);
    assert_eq!(idp.token_requests()?.grant("refresh_token"), refreshes + 1);
    let rt2 = env
        .stored_refresh_token("dev")?
        .expect("rotated refresh token stored");
    assert_ne!(
        rt2, rt,
        "the IdP rotates refresh tokens; the new one must be stored"
    );
    assert_eq!(idp.introspect(&rt)?["active"], false);
    assert_eq!(idp.introspect(&rt2)?["active"], true);
    assert_eq!(
        idp.token_requests()?.error("invalid_grant"),
        0,
        "an old refresh token was reused"
    );
    Ok(())
}

#[test]
fn device_denial_and_expiry_end_with_exit_6() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig {
            device_interval: Some(1),
            device_code_ttl: Some(4),
            ..Default::default()
        },
        "dev",
        defaults::DEVICE_CLI,
        "device_code",
    )?;

    let mut login = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    let da = login.wait_event("device_authorization", EVENT_WAIT)?;
    idp.deny_device_login(da["user_code"].as_str().expect("user_code"))?;
    let status = login.finish(LOGIN_WAIT)?;
    assert_eq!(status.code(), Some(6), "{:?}", login.seen());
    let err = login.seen().last().cloned().unwrap_or_default();
    assert_eq!(err["event"], "error");
    assert_eq!(err["error"], "denied");

    // Nobody approves: the code expires after 4 s and the login ends on its own.
    let started = std::time::Instant::now();
    let mut login = LoginSession::start(&env, &["dev", "--no-browser"], None)?;
    login.wait_event("device_authorization", EVENT_WAIT)?;
    let status = login.finish(LOGIN_WAIT)?;
    assert_eq!(status.code(), Some(6), "{:?}", login.seen());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(env.stored_refresh_token("dev")?.is_none());
    assert_eq!(env.profile_status("dev")?["state"], "logged_out");
    // The daemon is still there after both.
    assert!(env.daemon_status()?.is_some());
    Ok(())
}

/// A plain HTTP GET to the loopback listener: status, or `None` when nothing listens.
fn probe(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[test]
fn auth_code_loopback_takes_one_right_callback_and_refuses_the_rest() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig::default(),
        "web",
        defaults::NATIVE_CLI,
        "authorization_code",
    )?;
    let mut login = LoginSession::start(&env, &["web", "--no-browser"], None)?;
    let ev = login.wait_event("browser", EVENT_WAIT)?;
    let url = ev["url"].as_str().expect("url").to_string();
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_param(&url, "nonce").is_some(), "openid needs a nonce");
    let state = query_param(&url, "state").expect("state");
    // At least 128 bits: 22 base64url characters.
    assert!(state.len() >= 22, "short state {state}");
    let redirect = query_param(&url, "redirect_uri").expect("redirect_uri");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");

    // Junk and a wrong state are refused and do not end the login. (The right state with a
    // wrong or missing iss ends it with an error: tests/tests/tls_mixup.rs.)
    let base = redirect.trim_end_matches("/callback");
    assert_eq!(probe(&format!("{base}/favicon.ico")), Some(404));
    assert_eq!(probe(&format!("{redirect}?code=x&state=wrong")), Some(400));
    assert_eq!(
        probe(&format!("{redirect}?code=x")),
        Some(400),
        "no state at all"
    );
    assert_eq!(idp.token_requests()?.grant("authorization_code"), 0);

    // The user logs in at the IdP; its redirect reaches the listener and succeeds.
    let r = idp.complete_browser_login(&url, defaults::ALICE, defaults::ALICE_PASSWORD)?;
    assert_eq!(r.status, Some(200));
    let body = r.body.clone().unwrap_or_default();
    assert!(body.contains("Login succeeded"), "{body}");
    assert_eq!(r.param("iss").as_deref(), Some(idp.issuer()));
    let status = login.finish(LOGIN_WAIT)?;
    assert!(status.success(), "{:?} {}", login.seen(), login.stderr());

    // The same callback again: the port is closed now.
    assert_eq!(probe(&r.url), None, "the loopback port stayed open");
    assert_eq!(idp.token_requests()?.grant("authorization_code"), 1);

    let token = get(&env, "web")?;
    assert_eq!(idp.introspect(&token)?["sub"], defaults::ALICE);
    assert!(env.stored_refresh_token("web")?.is_some());
    Ok(())
}

#[test]
fn auth_code_denied_at_the_idp_exits_6() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig::default(),
        "web",
        defaults::NATIVE_CLI,
        "authorization_code",
    )?;
    let mut login = LoginSession::start(&env, &["web", "--no-browser"], None)?;
    let url = login.wait_event("browser", EVENT_WAIT)?["url"]
        .as_str()
        .expect("url")
        .to_string();
    let r = idp.deny_browser_login(&url)?;
    assert_eq!(r.param("error").as_deref(), Some("access_denied"));
    assert!(r.body.clone().unwrap_or_default().contains("Login failed"));
    let status = login.finish(LOGIN_WAIT)?;
    assert_eq!(status.code(), Some(6), "{:?}", login.seen());
    assert!(env.stored_refresh_token("web")?.is_none());
    Ok(())
}

#[test]
fn password_login_warns_and_the_password_is_kept_nowhere() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig::default(),
        "legacy",
        defaults::PASSWORD_CLI,
        "password",
    )?;
    env.set_client_secret("legacy", defaults::PASSWORD_CLI_SECRET)?;

    // A wrong password: one line, no password in it, nothing stored.
    let o = env.tokctl(
        &["login", "legacy", "--username", "alice", "--password-stdin"],
        Some(b"not-alices-password\n"),
    )?;
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(!err.contains("not-alices-password"), "{err}");
    assert!(err.lines().any(|l| l.contains("invalid_grant")), "{err}");
    assert!(env.stored_refresh_token("legacy")?.is_none());

    let o = env.login_as_alice("legacy", defaults::ALICE_PASSWORD)?;
    let err = text(&o.stderr);
    assert!(err.contains("deprecated"), "no deprecation warning: {err}");
    let token = get(&env, "legacy")?;
    assert_eq!(idp.introspect(&token)?["sub"], defaults::ALICE);

    // Neither password is in any file (config, logs, state) nor in the daemon's argv.
    for pw in [defaults::ALICE_PASSWORD, "not-alices-password"] {
        assert!(env.files_containing(pw)?.is_empty(), "{pw} found in a file");
    }
    let pid = env.daemon_pid().expect("daemon");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&argv).contains(defaults::ALICE_PASSWORD));
    Ok(())
}

#[test]
fn a_reused_refresh_token_kills_the_grant_and_the_daemon_says_login_required() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig {
            access_token_ttl: Some(20),
            ..Default::default()
        },
        "legacy",
        defaults::PASSWORD_CLI,
        "password",
    )?;
    env.password_login("legacy", defaults::PASSWORD_CLI_SECRET)?;
    let rt1 = env.stored_refresh_token("legacy")?.expect("stored");
    // A restart forces a refresh from the keychain: rotation gives rt2.
    env.restart_daemon()?;
    get(&env, "legacy")?;
    let rt2 = env.stored_refresh_token("legacy")?.expect("stored");
    assert_ne!(rt1, rt2);

    // Someone replays rt1 (a stolen copy): the IdP detects the reuse and ends the grant.
    let client = TestClient::basic(defaults::PASSWORD_CLI, defaults::PASSWORD_CLI_SECRET);
    let replay = idp.refresh(&client, &rt1, None)?;
    assert_eq!(replay.error(), Some("invalid_grant"));
    assert_eq!(idp.introspect(&rt2)?["active"], false);

    // The daemon needs a new token (min-ttl above the lifetime after 2 s forces one): it
    // gets invalid_grant and says login_required, exit 4, without deleting anything.
    std::thread::sleep(Duration::from_millis(2500));
    let o = env.tokctl(&["get", "legacy", "--min-ttl", "60s"], None)?;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
    assert_eq!(env.profile_status("legacy")?["state"], "login_required");
    assert!(env.daemon_status()?.is_some());
    Ok(())
}

#[test]
fn logout_revokes_at_the_idp_and_forgets_locally() -> Result<()> {
    let (idp, env) = setup(
        IdpConfig::default(),
        "legacy",
        defaults::PASSWORD_CLI,
        "password",
    )?;
    env.password_login("legacy", defaults::PASSWORD_CLI_SECRET)?;
    let rt = env.stored_refresh_token("legacy")?.expect("stored");
    let token = get(&env, "legacy")?;

    let o = env.tokctl(&["logout", "legacy"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let revocations = idp.events_of("revocation");
    assert!(
        revocations
            .iter()
            .any(|e| e["token_type_hint"] == "refresh_token" && e["ok"] == true),
        "{revocations:?}"
    );
    assert_eq!(idp.introspect(&rt)?["active"], false);
    assert_eq!(idp.introspect(&token)?["active"], false);
    assert!(env.stored_refresh_token("legacy")?.is_none());
    assert_eq!(env.profile_status("legacy")?["state"], "logged_out");
    let o = env.tokctl(&["get", "legacy"], None)?;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    Ok(())
}

#[test]
fn a_real_browser_logs_in_through_the_loopback_redirect() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    env.write_config(&profile(
        idp.issuer(),
        "web",
        defaults::NATIVE_CLI,
        "authorization_code",
    ))?;
    env.spawn_daemon(&[])?;
    let driver =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/tokctl-test-browser");
    let out = env.tmp_dir().join("browser.json");
    env.set_env("BROWSER", &driver);
    env.set_env("TOKCTL_TEST_BROWSER_OUT", &out);
    env.set_env(
        "TOKCTL_TEST_BROWSER_LOG",
        env.logs_dir().join("browser.log"),
    );

    // No --no-browser: the client starts $BROWSER, which is headless Chromium acting as
    // alice on the IdP's pages; a cold Chromium on two busy cores takes its time.
    let mut login = LoginSession::start(&env, &["web"], None)?;
    let status = login.finish(Duration::from_secs(240))?;
    assert!(
        status.success(),
        "{:?} {} browser log: {}",
        login.seen(),
        login.stderr(),
        std::fs::read_to_string(env.logs_dir().join("browser.log")).unwrap_or_default()
    );
    // The browser writes its outcome after it has closed; give it a moment.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !out.exists() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let o: Value = serde_json::from_slice(&std::fs::read(&out).expect("browser outcome"))
        .expect("browser outcome json");
    assert_eq!(o["ok"], true, "{o}");
    assert_eq!(o["status"], 200, "{o}");
    assert!(
        o["text"].as_str().unwrap_or("").contains("Login succeeded"),
        "{o}"
    );
    assert_eq!(o["referrer_policy"], "no-referrer");

    let token = get(&env, "web")?;
    assert_eq!(idp.introspect(&token)?["sub"], defaults::ALICE);
    assert!(env.stored_refresh_token("web")?.is_some());
    Ok(())
}
