//! Issue #2 end to end: client credentials through the real daemon, a real keychain and a
//! real oidc-provider IdP.

use std::time::{Duration, Instant};
use tokctl_e2e::{defaults, text, Idp, IdpConfig, Result, TestEnv};

fn cc_config(issuer: &str, client: &str, auth: &str) -> String {
    format!(
        "default_profile = \"ci\"\n\n[profile.ci]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\n\
         grant = \"client_credentials\"\nclient_auth = \"{auth}\"\n"
    )
}

/// Sets up a client-credentials profile with its secret stored through `tokctl secret set`.
fn cc_env(idp: &Idp, client: &str, secret: &str, auth: &str) -> Result<TestEnv> {
    let env = TestEnv::new()?;
    env.write_config(&cc_config(idp.issuer(), client, auth))?;
    env.spawn_daemon(&[])?;
    env.set_client_secret("ci", secret)?;
    Ok(env)
}

#[test]
fn client_credentials_token_is_active_cached_and_secret_lives_only_in_the_keychain() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(
        &idp,
        defaults::CC_BASIC,
        defaults::CC_BASIC_SECRET,
        "client_secret_basic",
    )?;

    let o = env.tokctl(&["get"], None)?;
    assert!(o.status.success(), "get failed: {}", text(&o.stderr));
    let token = text(&o.stdout);
    assert!(!token.is_empty());
    let intro = idp.introspect(&token)?;
    assert_eq!(intro["active"], true, "introspection: {intro}");
    assert_eq!(intro["client_id"], defaults::CC_BASIC);

    // The second get is served from the cache: same token, no new token request.
    let before = idp.token_requests()?.total;
    let o = env.tokctl(&["get", "ci", "--format", "json"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    assert_eq!(j["access_token"], token.as_str());
    assert_eq!(j["profile"], "ci");
    assert!(j["expires_at"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        idp.token_requests()?.total,
        before,
        "a cached get must not reach the IdP"
    );

    // The secret is in the Secret Service, readable with secret-tool, and in no file.
    let stored =
        env.secret_tool_lookup(&[("service", "tokctl"), ("username", "ci:client_secret")])?;
    assert_eq!(stored.as_deref(), Some(defaults::CC_BASIC_SECRET));
    let files = env.files_containing(defaults::CC_BASIC_SECRET)?;
    assert!(files.is_empty(), "secret found in files: {files:?}");
    // Nor is the access token written anywhere.
    let files = env.files_containing(&token)?;
    assert!(files.is_empty(), "access token found in files: {files:?}");

    let o = env.tokctl(&["status", "--json"], None)?;
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status json");
    assert_eq!(s["profiles"][0]["name"], "ci");
    assert_eq!(s["profiles"][0]["state"], "valid");
    Ok(())
}

#[test]
fn client_secret_post_works_and_header_format() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(
        &idp,
        defaults::CC_POST,
        defaults::CC_POST_SECRET,
        "client_secret_post",
    )?;
    let o = env.tokctl(&["get", "--format", "header"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let line = text(&o.stdout);
    let token = line
        .strip_prefix("Authorization: Bearer ")
        .expect("header format");
    assert_eq!(idp.introspect(token)?["active"], true);
    Ok(())
}

#[test]
fn the_daemon_renews_before_expiry_without_being_asked() -> Result<()> {
    let idp = Idp::start(IdpConfig {
        client_credentials_ttl: Some(8),
        access_token_ttl: Some(8),
        ..Default::default()
    })?;
    let env = cc_env(
        &idp,
        defaults::CC_BASIC,
        defaults::CC_BASIC_SECRET,
        "client_secret_basic",
    )?;
    let first = text(&env.tokctl(&["get", "--min-ttl", "1s"], None)?.stdout);
    let after_first = idp.token_requests()?.total;
    // 8 s tokens: the margin is half the lifetime (plus jitter), so a renewal is due at
    // about 4 s; give the scheduler until 7.5 s, before the old token expires.
    let deadline = Instant::now() + Duration::from_millis(7500);
    while idp.token_requests()?.total == after_first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        idp.token_requests()?.total,
        after_first + 1,
        "no background renewal before expiry"
    );
    let second = text(&env.tokctl(&["get", "--min-ttl", "1s"], None)?.stdout);
    assert_ne!(first, second, "the renewed token should be served");
    assert_eq!(
        idp.token_requests()?.total,
        after_first + 1,
        "serving the renewed token must not refetch"
    );
    assert_eq!(idp.introspect(&second)?["active"], true);
    Ok(())
}

#[test]
fn wrong_secret_is_one_clear_line_naming_invalid_client_exit_2() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(
        &idp,
        defaults::CC_BASIC,
        "not-the-secret",
        "client_secret_basic",
    )?;
    let o = env.tokctl(&["get"], None)?;
    assert_eq!(o.status.code(), Some(2), "stderr: {}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(
        !err.contains("not-the-secret"),
        "the secret leaked into the error: {err}"
    );
    assert!(o.stdout.is_empty());
    Ok(())
}

#[test]
fn idp_down_and_no_valid_token_exits_5() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(
        &idp,
        defaults::CC_BASIC,
        defaults::CC_BASIC_SECRET,
        "client_secret_basic",
    )?;
    idp.stop()?;
    let o = env.tokctl(&["get"], None)?;
    assert_eq!(o.status.code(), Some(5), "stderr: {}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    // The daemon keeps running.
    assert!(env.daemon_status()?.is_some());
    Ok(())
}

#[test]
fn a_missing_daemon_is_started_and_racing_clients_leave_one() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    env.write_config(&cc_config(
        idp.issuer(),
        defaults::CC_BASIC,
        "client_secret_basic",
    ))?;
    assert!(env.daemon_status()?.is_none());
    // Four clients at once against no daemon.
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut c = env.cmd("tokctl");
            c.args(["status", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().expect("spawn tokctl")
        })
        .collect();
    for ch in children {
        let o = ch.wait_with_output().expect("wait");
        assert!(o.status.success(), "status failed: {}", text(&o.stderr));
    }
    let pid = env.daemon_pid().expect("a daemon answers");
    std::thread::sleep(Duration::from_millis(300));
    let alive = env.daemons_by_environment();
    assert_eq!(alive, vec![pid], "exactly one daemon must survive");
    // And it serves tokens once a secret is set.
    let o = env.tokctl(
        &["secret", "set", "ci"],
        Some(defaults::CC_BASIC_SECRET.as_bytes()),
    )?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = env.tokctl(&["get"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    Ok(())
}

#[test]
fn no_autostart_means_exit_3() -> Result<()> {
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    let o = env.tokctl(&["get"], None)?;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    Ok(())
}

#[test]
fn another_uid_gets_nothing() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(
        &idp,
        defaults::CC_BASIC,
        defaults::CC_BASIC_SECRET,
        "client_secret_basic",
    )?;
    assert_eq!(env.tokctl(&["get"], None)?.status.code(), Some(0));
    // Open the path up so that only the peer-credential check stands in the way.
    let sock = env.socket_path();
    let mut p = sock.clone();
    while let Some(parent) = p.parent() {
        let _ = std::process::Command::new("chmod")
            .arg("o+x")
            .arg(parent)
            .status();
        if parent == std::path::Path::new("/") {
            break;
        }
        p = parent.to_path_buf();
    }
    std::process::Command::new("chmod")
        .arg("0666")
        .arg(&sock)
        .status()
        .expect("chmod");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env.bin_path("tokctl"))
        .args(["get"])
        .env_clear()
        .env("TOKCTL_SOCKET", &sock)
        .env("TOKCTL_NO_AUTOSTART", "1")
        .env("HOME", "/nonexistent");
    let o = env.run(c, None)?;
    assert!(!o.status.success(), "another uid got an answer");
    assert!(
        o.stdout.is_empty(),
        "another uid got bytes: {}",
        text(&o.stdout)
    );
    let log = env.daemon_log(0);
    assert!(log.contains("peer uid 65534 rejected"), "daemon log: {log}");
    // The daemon still serves its own user.
    assert_eq!(env.tokctl(&["get"], None)?.status.code(), Some(0));
    Ok(())
}

#[test]
fn a_bad_config_is_reported_with_file_and_line() -> Result<()> {
    let env = TestEnv::new()?;
    let path = env.write_config("[profile.ci]\nissuer = \"https://idp.example.com\"\nclient_id = \"x\"\ngrnt = \"password\"\n")?;
    let o = env.run_bin("tokctld", &[])?;
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains(&format!("{}:4", path.display())), "{err}");
    assert!(err.contains("grnt"), "{err}");
    // Through the client's autostart, the user sees the same line.
    let o = env.tokctl(&["get"], None)?;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("grnt"), "{}", text(&o.stderr));
    // An http issuer that is not loopback is refused too.
    env.write_config("[profile.ci]\nissuer = \"http://idp.example.com\"\nclient_id = \"x\"\ngrant = \"client_credentials\"\n")?;
    let o = env.run_bin("tokctld", &[])?;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains(":2: profile.ci.issuer"),
        "{}",
        text(&o.stderr)
    );
    Ok(())
}

#[test]
fn no_keychain_is_a_clear_error_never_a_plaintext_fallback() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::without_keychain()?;
    env.write_config(&cc_config(
        idp.issuer(),
        defaults::CC_BASIC,
        "client_secret_basic",
    ))?;
    env.spawn_daemon(&[])?;
    let o = env.tokctl(
        &["secret", "set", "ci"],
        Some(defaults::CC_BASIC_SECRET.as_bytes()),
    )?;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("secret store unavailable"),
        "{}",
        text(&o.stderr)
    );
    assert!(env.files_containing(defaults::CC_BASIC_SECRET)?.is_empty());
    // The daemon is still up.
    assert!(env.daemon_status()?.is_some());
    Ok(())
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() -> Result<()> {
    let env = TestEnv::new()?;
    let pid = env.spawn_daemon(&[])?;
    assert!(env.socket_path().exists());
    tokctl_e2e::signal(pid, tokctl_e2e::Sig::Term)?;
    assert!(
        tokctl_e2e::wait_gone(pid, Duration::from_secs(5)),
        "daemon did not exit"
    );
    assert!(!env.socket_path().exists(), "socket left behind");
    let log = env.daemon_log(0);
    assert!(log.contains("stopped"), "{log}");
    Ok(())
}
