//! Issue #5 (part): `tokctl exec` and `tokctl kube` against the real daemon and IdP.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use tokctl_e2e::{text, Idp, IdpConfig, Result, TestEnv};

/// A client-credentials profile `ci` with its secret stored, and a running daemon.
fn cc_env(idp: &Idp) -> Result<TestEnv> {
    TestEnv::with_cc_profile(idp)
}

#[test]
fn exec_hands_the_token_to_the_command_and_passes_its_exit_code() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = cc_env(&idp)?;
    let out = env.tmp_dir().join("seen");
    let script = format!(
        "printf %s \"$MY_TOKEN\" > '{}'; test -z \"$TOKCTL_ACCESS_TOKEN\" || exit 99; exit 7",
        out.display()
    );
    let o = env.tokctl(
        &["exec", "ci", "--env", "MY_TOKEN", "--", "sh", "-c", &script],
        None,
    )?;
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    let token = std::fs::read_to_string(&out).expect("the command ran");
    assert_eq!(idp.introspect(&token)?["active"], true);
    std::fs::remove_file(&out).ok();

    // Default variable; stdout is the command's own.
    let o = env.tokctl(
        &[
            "exec",
            "ci",
            "--",
            "sh",
            "-c",
            "printf %s \"$TOKCTL_ACCESS_TOKEN\"",
        ],
        None,
    )?;
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), token, "the cached token is handed over");

    // Shell conventions when the command cannot run; a bad variable name is a usage error.
    let o = env.tokctl(&["exec", "ci", "--", "/nonexistent/cmd"], None)?;
    assert_eq!(o.status.code(), Some(127));
    assert!(!text(&o.stderr).contains(&token));
    let o = env.tokctl(&["exec", "ci", "--env", "A=B", "--", "true"], None)?;
    assert_eq!(o.status.code(), Some(2));
    Ok(())
}

#[test]
fn kube_prints_an_exec_credential_in_the_version_kubectl_asks_for() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = cc_env(&idp)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let o = env.tokctl(&["kube", "ci"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("ExecCredential JSON");
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(v["kind"], "ExecCredential");
    let token = v["status"]["token"].as_str().expect("token");
    assert_eq!(idp.introspect(token)?["active"], true);
    // RFC 3339 in UTC, within the token's 60 s lifetime from now.
    let ts = v["status"]["expirationTimestamp"].as_str().expect("expiry");
    assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
    let exp = rfc3339_secs(ts);
    assert!(exp > now && exp <= now + 61 + 5, "{ts} vs now {now}");

    env.set_env(
        "KUBERNETES_EXEC_INFO",
        r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}"#,
    );
    let o = env.tokctl(&["kube", "ci"], None)?;
    let v: Value = serde_json::from_slice(&o.stdout).expect("ExecCredential JSON");
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1beta1");

    env.set_env(
        "KUBERNETES_EXEC_INFO",
        r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#,
    );
    let o = env.tokctl(&["kube", "ci"], None)?;
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    Ok(())
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ` (days from civil, proleptic Gregorian).
fn rfc3339_secs(ts: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    u64::try_from(secs).expect("after 1970")
}

#[test]
fn the_date_helper_is_right() {
    assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), 0);
    assert_eq!(rfc3339_secs("2023-11-14T22:13:20Z"), 1_700_000_000);
    assert_eq!(rfc3339_secs("2000-03-01T00:00:00Z"), 951_868_800);
}

/// An environment whose PATH has `git-credential-tokctl` (a link to `tokctl`, the way it is
/// installed) and a config routing `https://git.test/org/` to the `ci` profile.
fn git_env(idp: &Idp) -> Result<TestEnv> {
    let mut env = cc_env(idp)?;
    let mut cfg = std::fs::read_to_string(env.config_path()).expect("config");
    cfg.push_str(
        "\n[[route]]\nurl = \"https://git.test/org/\"\nprofile = \"ci\"\nusername = \"x-token\"\n",
    );
    env.write_config(&cfg)?;
    let o = env.socket_request("POST", "/v1/reload", Some("{}"))?;
    assert_eq!(o.0, 200, "reload: {}", o.1);
    env.link_helper("git-credential-tokctl")?;
    Ok(env)
}

/// `git credential fill` with `input`, through tokctl as the only helper; git's own
/// prompting is off so a missing answer fails instead of asking.
fn git_fill(env: &TestEnv, git: &str, input: &str) -> Result<std::process::Output> {
    let mut c = env.command(git);
    c.args([
        "-c",
        "credential.helper=",
        "-c",
        "credential.helper=tokctl",
        "-c",
        "credential.useHttpPath=true",
        "credential",
        "fill",
    ])
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_ASKPASS", "/bin/false");
    env.run(c, Some(input.as_bytes()))
}

#[test]
fn git_credential_fill_gets_an_active_token_for_routed_urls_only() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = git_env(&idp)?;
    for git in ["/usr/bin/git", "/usr/local/bin/git"] {
        if !std::path::Path::new(git).exists() {
            continue;
        }
        let o = git_fill(
            &env,
            git,
            "protocol=https\nhost=git.test\npath=org/repo.git\n\n",
        )?;
        assert!(o.status.success(), "{git}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(out.contains("username=x-token"), "{git}: {out}");
        let pw = out
            .lines()
            .find_map(|l| l.strip_prefix("password="))
            .expect("password line");
        assert_eq!(idp.introspect(pw)?["active"], true, "{git}");

        // Another path, a look-alike host or plain http: tokctl answers nothing, so git
        // (with prompting off) fails to fill.
        for input in [
            "protocol=https\nhost=git.test\npath=other/repo.git\n\n",
            "protocol=https\nhost=git.test.evil.example\npath=org/repo.git\n\n",
            "protocol=http\nhost=git.test\npath=org/repo.git\n\n",
        ] {
            let o = git_fill(&env, git, input)?;
            assert!(!o.status.success(), "{git} answered for {input:?}");
            assert!(!text(&o.stdout).contains(pw));
        }
    }
    Ok(())
}

#[test]
fn the_git_helper_ignores_hostile_input_and_erase_drops_only_its_token() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let env = git_env(&idp)?;
    let helper = |op: &str, input: &[u8]| -> Result<std::process::Output> {
        let mut c = env.command("git-credential-tokctl");
        c.arg(op);
        env.run(c, Some(input))
    };
    let o = helper("get", b"protocol=https\nhost=git.test\npath=org/r.git\n\n")?;
    let token = text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("password=").map(String::from))
        .expect("answer");
    let before = idp.token_requests()?.total;

    let big = format!(
        "protocol=https\nhost=git.test\npath={}\n\n",
        "a".repeat(100_000)
    );
    for bad in [
        &b"protocol=https\nhost=git.test\r\npath=org/r.git\n\n"[..],
        b"protocol=https\nhost=evil.test\nhost=git.test\npath=org/r.git\n\n",
        b"protocol=https\nhost=git.test\0\npath=org/r.git\n\n",
        b"protocol=https\npath=org/r.git\n\n",
        big.as_bytes(),
    ] {
        let o = helper("get", bad)?;
        assert!(o.status.success(), "helpers exit 0 so git moves on");
        assert!(
            o.stdout.is_empty(),
            "answered hostile input {:?}",
            String::from_utf8_lossy(&bad[..bad.len().min(60)])
        );
    }

    // Bearer when git announces authtype (git 2.46+).
    let o = helper(
        "get",
        b"capability[]=authtype\nprotocol=https\nhost=git.test\npath=org/r.git\n\n",
    )?;
    let out = text(&o.stdout);
    assert!(
        out.contains("authtype=Bearer") && out.contains(&format!("credential={token}")),
        "{out}"
    );

    // store writes nothing; erase of a foreign password is a no-op; erase of our token
    // drops it, and the next get fetches a fresh one.
    helper(
        "store",
        format!("protocol=https\nhost=git.test\npath=org/r.git\nusername=x\npassword={token}\n\n")
            .as_bytes(),
    )?;
    helper(
        "erase",
        b"protocol=https\nhost=git.test\npath=org/r.git\nusername=x\npassword=not-ours\n\n",
    )?;
    let o = helper("get", b"protocol=https\nhost=git.test\npath=org/r.git\n\n")?;
    assert!(text(&o.stdout).contains(&format!("password={token}")));
    assert_eq!(idp.token_requests()?.total, before, "nothing refetched yet");
    helper(
        "erase",
        format!("protocol=https\nhost=git.test\npath=org/r.git\nusername=x\npassword={token}\n\n")
            .as_bytes(),
    )?;
    let o = helper("get", b"protocol=https\nhost=git.test\npath=org/r.git\n\n")?;
    let fresh = text(&o.stdout);
    assert!(
        fresh.contains("password=") && !fresh.contains(&token),
        "{fresh}"
    );
    assert_eq!(idp.token_requests()?.total, before + 1);
    assert!(env.files_containing(&token)?.is_empty());
    Ok(())
}
