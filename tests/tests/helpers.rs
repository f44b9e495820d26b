//! Issue #5 (part): `tokctl exec` and `tokctl kube` against the real daemon and IdP.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use tokctl_e2e::{defaults, text, Idp, IdpConfig, Result, TestEnv};

/// A client-credentials profile `ci` with its secret stored, and a running daemon.
fn cc_env(idp: &Idp) -> Result<TestEnv> {
    let env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.ci]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"client_credentials\"\n",
        idp.issuer(),
        defaults::CC_BASIC
    ))?;
    env.spawn_daemon(&[])?;
    let o = env.tokctl(
        &["secret", "set", "ci"],
        Some(format!("{}\n", defaults::CC_BASIC_SECRET).as_bytes()),
    )?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    Ok(env)
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
