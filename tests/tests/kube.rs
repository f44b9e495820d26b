//! Issue #5 (part): real kubectl with `tokctl kube` as its exec credential plugin, against
//! an HTTPS Kubernetes API stand-in that accepts only tokens the IdP reports active.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokctl_e2e::{defaults, text, AuthScheme, Idp, IdpConfig, KubeApi, Result, TestEnv};

/// The plain kubectl binary; `/usr/bin/kubectl` is a dispatcher that may add requests.
fn kubectl() -> PathBuf {
    let plain = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    let k = if plain.is_file() {
        plain.to_path_buf()
    } else {
        PathBuf::from("/usr/bin/kubectl")
    };
    // Debian's own kubernetes-client (1.20) predates ExecCredential v1.
    assert!(
        k.is_file(),
        "kubectl is missing: these tests need kubectl 1.22+ (Google's apt repo: kubectl)"
    );
    k
}

/// A client-credentials profile `ci` with its secret stored, and a running daemon.
fn cc_env(idp: &Idp) -> Result<TestEnv> {
    TestEnv::with_cc_profile(idp)
}

/// Writes `text` to `$TMPDIR/<name>` and returns the path.
fn write_tmp(env: &TestEnv, name: &str, text: &str) -> PathBuf {
    let p = env.tmp_dir().join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn kubectl_gets_the_api_with_a_token_from_tokctl_kube() -> Result<()> {
    // Long-lived tokens: no background refresh may change the token between the runs.
    let idp = Arc::new(Idp::start(IdpConfig {
        client_credentials_ttl: Some(600),
        ..Default::default()
    })?);
    let api = KubeApi::start(idp.clone())?;
    let env = cc_env(&idp)?;
    let kc = api.kubeconfig(&env.bin_path("tokctl"), &["kube", "ci"]);
    let v1 = write_tmp(&env, "kubeconfig", &kc);
    // kubectl 1.32 still speaks v1beta1 to plugins configured with it.
    let beta = write_tmp(
        &env,
        "kubeconfig-beta",
        &kc.replace(
            "client.authentication.k8s.io/v1\n",
            "client.authentication.k8s.io/v1beta1\n",
        ),
    );
    // With the cluster's details (CA data included) in KUBERNETES_EXEC_INFO.
    let info = write_tmp(
        &env,
        "kubeconfig-info",
        &kc.replace(
            "interactiveMode: Never\n",
            "interactiveMode: Never\n      provideClusterInfo: true\n",
        ),
    );
    assert_ne!(std::fs::read_to_string(&info).ok(), Some(kc.clone()));

    let mut token = None;
    for cfg in [&v1, &beta, &info] {
        let mut c = env.command(kubectl());
        c.arg("--kubeconfig")
            .arg(cfg)
            .args(["get", "--raw", "/api"]);
        let o = env.run(c, None)?;
        assert!(o.status.success(), "kubectl: {}", text(&o.stderr));
        let body: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(body["kind"], "APIVersions");
        let seen = api.requests();
        let last = seen.last().expect("the server saw the request");
        assert_eq!(
            (last.scheme, last.status),
            (AuthScheme::Bearer, 200),
            "{seen:?}"
        );
        let t = last.token.clone().expect("token");
        assert_eq!(idp.introspect(&t)?["active"], true);
        assert!(!text(&o.stderr).contains(&t) && !text(&o.stdout).contains(&t));
        token = Some(t);
    }
    let token = token.expect("token");
    assert!(
        api.requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(token.as_str())),
        "both runs got the daemon's cached token"
    );
    assert_eq!(idp.token_requests()?.total, 1);

    // The server-version request kubectl makes itself.
    let mut c = env.command(kubectl());
    c.arg("--kubeconfig")
        .arg(&v1)
        .args(["version", "-o", "json"]);
    let o = env.run(c, None)?;
    assert!(o.status.success(), "kubectl version: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.32.0-tokctl-test");

    // The stand-in really checks: a token the IdP does not know is refused.
    let before = api.requests().len();
    let mut c = env.command(kubectl());
    c.arg("--kubeconfig")
        .arg(&v1)
        .args(["--token", "not-a-token", "get", "--raw", "/api"]);
    let o = env.run(c, None)?;
    assert!(!o.status.success(), "an unknown token was accepted");
    assert!(api.requests()[before..].iter().all(|r| r.status == 401));

    // A profile that needs a login: tokctl exits 4 without prompting, and its message
    // reaches the user through kubectl's error.
    let mut cfg = std::fs::read_to_string(env.config_path()).expect("config");
    cfg.push_str(&format!(
        "\n[profile.nologin]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"device_code\"\n",
        idp.issuer(),
        defaults::DEVICE_CLI
    ));
    env.write_config(&cfg)?;
    let (status, body) = env.socket_request("POST", "/v1/reload", Some("{}"))?;
    assert_eq!(status, 200, "reload: {body}");
    let nologin = write_tmp(
        &env,
        "kubeconfig-nologin",
        &api.kubeconfig(&env.bin_path("tokctl"), &["kube", "nologin"]),
    );
    let before = api.requests().len();
    let mut c = env.command(kubectl());
    c.arg("--kubeconfig")
        .arg(&nologin)
        .args(["get", "--raw", "/api"]);
    let o = env.run(c, None)?;
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("tokctl login nologin") && err.contains("exit code 4"),
        "{err}"
    );
    assert_eq!(
        api.requests().len(),
        before,
        "no request without a credential"
    );

    // kubectl keeps exec credentials in memory only: no file of this HOME has the token.
    assert!(env.files_containing(&token)?.is_empty());
    Ok(())
}

/// A `kubectl proxy` child, killed by pid on drop.
struct Proxy {
    child: Child,
    port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kubectl proxy` on a free loopback port and waits for its "Starting to serve"
/// line.
fn start_proxy(env: &TestEnv, kubeconfig: &Path) -> Proxy {
    let mut c = env.command(kubectl());
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["proxy", "--port=0", "--address=127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("kubectl proxy starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
    let mut proxy = Proxy { child, port: 0 };
    proxy.port = port.unwrap_or_else(|| panic!("kubectl proxy said {line:?}"));
    proxy
}

/// `GET path` through the proxy; the status code.
fn get_via(proxy: &Proxy, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn kubectl_runs_tokctl_again_once_the_token_has_expired() -> Result<()> {
    // Short-lived tokens, so one kubectl process outlives its first credential.
    let idp = Arc::new(Idp::start(IdpConfig {
        client_credentials_ttl: Some(15),
        ..Default::default()
    })?);
    let api = KubeApi::start(idp.clone())?;
    let env = cc_env(&idp)?;
    // The plugin is a wrapper that counts its runs and notes the expirationTimestamp it
    // handed kubectl, as epoch seconds; the token stays in the shell's memory.
    let count = env.tmp_dir().join("plugin-runs");
    let expiries = env.tmp_dir().join("plugin-expiries");
    let wrapper = write_tmp(
        &env,
        "tokctl-kube",
        &format!(
            "#!/bin/sh\necho run >> '{count}'\nout=$('{tokctl}' kube ci) || exit $?\n\
             printf '%s\\n' \"$out\"\n\
             ts=$(printf '%s\\n' \"$out\" | sed -n 's/.*\"expirationTimestamp\":\"\\([^\"]*\\)\".*/\\1/p')\n\
             date -u -d \"$ts\" +%s >> '{expiries}'\n",
            count = count.display(),
            tokctl = env.bin_path("tokctl").display(),
            expiries = expiries.display(),
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let kc = write_tmp(&env, "kubeconfig", &api.kubeconfig(&wrapper, &[]));
    let runs = || {
        std::fs::read_to_string(&count)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    let proxy = start_proxy(&env, &kc);
    assert_eq!(get_via(&proxy, "/api"), 200);
    let first = api.requests();
    let old = first.last().and_then(|r| r.token.clone()).expect("a token");
    let exp = idp.introspect(&old)?["exp"].as_u64().expect("exp");
    assert_eq!(runs(), 1);
    let kube_exp: u64 = std::fs::read_to_string(&expiries)
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse().ok())
        .expect("the plugin noted an expiry");
    // What kubectl was told is the IdP's expiry (the daemon takes it at receipt).
    assert!(
        kube_exp.abs_diff(exp) <= 2,
        "expirationTimestamp {kube_exp} vs the IdP's exp {exp}"
    );

    // Still valid: the same process keeps using its cached credential (checked only with
    // time to spare, so a slow machine cannot turn this into a false failure).
    if now_secs() + 3 < exp {
        assert_eq!(get_via(&proxy, "/version"), 200);
        assert_eq!(
            runs(),
            1,
            "kubectl re-ran the plugin while its token was valid"
        );
    }

    // Once both the IdP's expiry and the one kubectl was told have passed, the same
    // kubectl process asks the plugin again and sends the new token.
    let deadline = Instant::now() + Duration::from_secs(60);
    while now_secs() < exp.max(kube_exp) + 1 {
        assert!(
            Instant::now() < deadline,
            "the clock did not reach the expiry"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after_expiry = SystemTime::now();
    assert_eq!(get_via(&proxy, "/api"), 200);
    assert_eq!(
        runs(),
        2,
        "kubectl did not re-run the plugin after the expiry"
    );
    let seen = api.requests();
    let last = seen.last().expect("request");
    let new = last.token.clone().expect("token");
    assert_ne!(new, old, "a new token after the old one expired");
    assert!(last.at >= after_expiry);
    assert_eq!(idp.introspect(&new)?["active"], true);
    assert!(
        seen.iter().all(|r| r.status == 200),
        "no request was refused: the expired token was never sent: {seen:?}"
    );
    assert!(seen
        .iter()
        .filter(|r| r.token.as_deref() == Some(old.as_str()))
        .all(|r| r.at < after_expiry));
    // The wrapper's notes and kubectl's cache hold no token.
    assert!(env.files_containing(&old)?.is_empty());
    assert!(env.files_containing(&new)?.is_empty());
    Ok(())
}
