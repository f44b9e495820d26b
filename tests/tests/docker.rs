//! Issue #5 (part): `docker-credential-tokctl` with the real docker CLI (28, no engine:
//! `docker manifest inspect`, `docker login`/`logout`) and the real skopeo (Debian) against
//! the harness's registry, which accepts only tokens the IdP reports active; and the
//! helper protocol's edge cases, called the way docker calls it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use tokctl_e2e::{
    defaults, text, AuthScheme, Idp, IdpConfig, Registry, Result, TestEnv, MANIFEST_TYPE,
};

/// The docker CLI the machine notes name (28.x; calls credential helpers without an engine).
const DOCKER: &str = "/usr/local/bin/docker";
/// Debian's skopeo.
const SKOPEO: &str = "/usr/bin/skopeo";
/// What docker-credential-helpers answer when they hold nothing for a server.
const NOT_FOUND: &str = "credentials not found in native keychain\n";

/// A running IdP, registry and daemon. The config routes the registry (as
/// `https://127.0.0.1:<port>/`) to `profile`; `localhost:<port>` (the same server under
/// another name) is mapped to tokctl in docker's and skopeo's config but has no route.
struct Fixture {
    idp: Arc<Idp>,
    registry: Registry,
    env: TestEnv,
    /// `$DOCKER_CONFIG`.
    docker_config: PathBuf,
    /// skopeo's `--authfile`.
    authfile: PathBuf,
}

impl Fixture {
    /// `localhost:<port>`: the registry under a name no route covers.
    fn unrouted_host(&self) -> String {
        self.registry.host().replace("127.0.0.1", "localhost")
    }
}

/// Client-credentials profile `ci` routed to the registry.
fn fixture() -> Result<Fixture> {
    fixture_with(None)
}

/// As [`fixture`]; with `Some(profile)`, the registry is routed to a password-grant
/// profile of that name, logged in as alice (so the keychain holds a refresh token).
fn fixture_with(password_profile: Option<&str>) -> Result<Fixture> {
    // Long-lived tokens: no background refresh may change the token a test is watching.
    let idp = Arc::new(Idp::start(IdpConfig {
        client_credentials_ttl: Some(600),
        access_token_ttl: Some(600),
        ..Default::default()
    })?);
    let registry = Registry::start(idp.clone())?;
    let mut env = TestEnv::new()?;
    let (profile, client, grant) = match password_profile {
        Some(p) => (p, defaults::PASSWORD_CLI, "password"),
        None => ("ci", defaults::CC_BASIC, "client_credentials"),
    };
    env.write_config(&format!(
        "[profile.{profile}]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\ngrant = \"{grant}\"\n\n\
         [[route]]\nurl = \"https://{host}/\"\nprofile = \"{profile}\"\n\n\
         [[route]]\nurl = \"https://git.test/org/\"\nprofile = \"{profile}\"\nusername = \"x-token\"\n\n\
         [[route]]\nurl = \"https://id.test/\"\nprofile = \"{profile}\"\nusername = \"<token>\"\n",
        issuer = idp.issuer(),
        host = registry.host(),
    ))?;
    env.spawn_daemon(&[])?;
    if password_profile.is_some() {
        env.password_login(profile, defaults::PASSWORD_CLI_SECRET)?;
    } else {
        env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;
    }
    env.link_helper("docker-credential-tokctl")?;

    // docker: `credHelpers` in $DOCKER_CONFIG/config.json; skopeo: the same key in its
    // auth file, and a private registries.conf so the machine's does not apply.
    let helpers = serde_json::json!({
        "credHelpers": {
            registry.host(): "tokctl",
            registry.host().replace("127.0.0.1", "localhost"): "tokctl",
        }
    });
    let docker_config = env.tmp_dir().join("docker");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    std::fs::write(docker_config.join("config.json"), helpers.to_string()).expect("config");
    env.set_env("DOCKER_CONFIG", &docker_config);
    let authfile = env.tmp_dir().join("auth.json");
    std::fs::write(&authfile, helpers.to_string()).expect("auth file");
    let registries_conf = env.tmp_dir().join("registries.conf");
    std::fs::write(&registries_conf, "unqualified-search-registries = []\n").expect("conf");
    env.set_env("CONTAINERS_REGISTRIES_CONF", &registries_conf);
    Ok(Fixture {
        idp,
        registry,
        env,
        docker_config,
        authfile,
    })
}

/// Fails loudly when a client the tests need is missing (the machine notes list both).
fn need(program: &str) {
    assert!(
        Path::new(program).is_file(),
        "{program} is missing: these tests need the docker CLI and Debian's skopeo"
    );
}

/// `docker manifest inspect --insecure IMAGE`: `--insecure` skips verification of the test
/// CA (the docker CLI reads CAs only from /etc/docker/certs.d, which tests do not touch).
fn docker_inspect(f: &Fixture, image: &str) -> Result<Output> {
    need(DOCKER);
    let mut c = f.env.command(DOCKER);
    c.args(["manifest", "inspect", "--insecure", image]);
    f.env.run(c, None)
}

/// `skopeo inspect` with the test CA and the auth file naming tokctl.
fn skopeo_inspect(f: &Fixture, image: &str) -> Result<Output> {
    need(SKOPEO);
    let mut c = f.env.command(SKOPEO);
    c.arg("inspect")
        .arg("--authfile")
        .arg(&f.authfile)
        .arg("--cert-dir")
        .arg(f.registry.cert_dir())
        .arg(format!("docker://{image}"));
    f.env.run(c, None)
}

/// Runs the helper as docker does: `docker-credential-tokctl OP` with `input` on stdin.
fn helper(f: &Fixture, op: &str, input: &[u8]) -> Result<Output> {
    let mut c = f.env.command("docker-credential-tokctl");
    c.arg(op);
    f.env.run(c, Some(input))
}

/// The token `tokctl get PROFILE` prints (the daemon's cached one).
fn cached_token(f: &Fixture, profile: &str) -> Result<String> {
    let o = f.env.tokctl(&["get", profile], None)?;
    assert!(o.status.success(), "get: {}", text(&o.stderr));
    Ok(text(&o.stdout).trim_end().to_owned())
}

/// Asserts that the registry granted requests only with an active token sent as Basic
/// with the route's username, and returns the tokens it saw.
fn assert_active_basic(f: &Fixture) -> Result<Vec<String>> {
    let seen = f.registry.requests();
    assert!(
        seen.iter().any(|r| r.status == 200),
        "no request succeeded: {seen:?}"
    );
    for r in seen.iter().filter(|r| r.token.is_some()) {
        assert_eq!(r.scheme, AuthScheme::Basic, "{r:?}");
        assert_eq!(r.username.as_deref(), Some("oauth2"), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let tokens = f.registry.tokens_seen();
    assert_eq!(tokens.len(), 1, "one token for the whole run");
    assert_eq!(f.idp.introspect(&tokens[0])?["active"], true);
    Ok(tokens)
}

#[test]
fn docker_manifest_inspect_gets_an_active_token_from_the_helper() -> Result<()> {
    let f = fixture()?;
    let o = docker_inspect(&f, &f.registry.image())?;
    assert!(o.status.success(), "docker: {}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).expect("manifest JSON");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], MANIFEST_TYPE);
    let tokens = assert_active_basic(&f)?;
    assert_eq!(tokens[0], cached_token(&f, "ci")?, "tokctl's own token");
    // The first request of each exchange carries nothing (the challenge asks for Basic).
    assert!(f
        .registry
        .requests()
        .iter()
        .any(|r| r.status == 401 && r.scheme == AuthScheme::None));
    // docker wrote no credential anywhere.
    assert!(f.env.files_containing(&tokens[0])?.is_empty());
    Ok(())
}

#[test]
fn skopeo_inspect_gets_an_active_token_from_the_helper() -> Result<()> {
    let f = fixture()?;
    let o = skopeo_inspect(&f, &f.registry.image())?;
    assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
    assert_eq!(v["Digest"], f.registry.manifest_digest());
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["RepoTags"], serde_json::json!(["1"]));
    let tokens = assert_active_basic(&f)?;
    assert_eq!(tokens[0], cached_token(&f, "ci")?);
    assert!(f.env.files_containing(&tokens[0])?.is_empty());
    Ok(())
}

#[test]
fn an_unrouted_registry_gets_no_token() -> Result<()> {
    let f = fixture()?;
    let image = f.registry.image().replace("127.0.0.1", "localhost");
    let o = docker_inspect(&f, &image)?;
    assert!(!o.status.success(), "docker got in without a token");
    let o = skopeo_inspect(&f, &image)?;
    assert!(!o.status.success(), "skopeo got in without a token");
    let seen = f.registry.requests();
    assert!(!seen.is_empty(), "both clients reached the registry");
    // skopeo sends an empty Basic credential (`:`) when it has none; that is not a token.
    assert!(
        seen.iter()
            .all(|r| r.token.as_deref().unwrap_or("").is_empty() && r.status == 401),
        "{seen:?}"
    );
    Ok(())
}

#[test]
fn the_helper_follows_dockers_protocol() -> Result<()> {
    let f = fixture()?;
    let host = f.registry.host();

    // get: docker's JSON for the routed registry, with the route's default username.
    let o = helper(&f, "get", host.as_bytes())?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ServerURL"], host.as_str());
    assert_eq!(v["Username"], "oauth2");
    let token = v["Secret"].as_str().expect("Secret").to_owned();
    assert_eq!(f.idp.introspect(&token)?["active"], true);
    assert_eq!(v.as_object().map(|o| o.len()), Some(3));
    // A URL (as docker sends for Docker Hub) routes the same; so does a typed newline.
    for input in [
        format!("https://{host}"),
        format!("https://{host}/v1/"),
        format!("{host}\n"),
    ] {
        let o = helper(&f, "get", input.as_bytes())?;
        assert!(o.status.success(), "{input:?}: {}", text(&o.stdout));
        assert!(text(&o.stdout).contains(&token));
    }
    let before = f.idp.token_requests()?.total;

    // Not found: exactly docker-credential-helpers' text and exit 1, for an unrouted
    // registry, a path route (docker names registries by host only), a `<token>` username
    // (that would make docker treat the Secret as a refresh token), and hostile input.
    let lookalike = format!("{}.evil.test", host.replace(':', "-"));
    let oversized = format!("{host}/{}", "a".repeat(100_000));
    let inputs: Vec<Vec<u8>> = vec![
        f.unrouted_host().into_bytes(),
        b"registry.example.com".to_vec(),
        b"git.test".to_vec(),
        b"id.test".to_vec(),
        format!("{host}\r").into_bytes(),
        format!("{host}\r\nregistry.example.com").into_bytes(),
        format!("{host}\0").into_bytes(),
        Vec::new(),
        oversized.into_bytes(),
        lookalike.into_bytes(),
        format!(
            "127.0.0.1.evil.test:{}",
            f.registry.host().rsplit(':').next().unwrap_or("")
        )
        .into_bytes(),
        format!("https://a@{host}").into_bytes(),
        format!("https://oauth2:x@{host}/").into_bytes(),
        format!("evil.test@{host}").into_bytes(),
        format!(
            "http://{}",
            host.replace("127.0.0.1", "registry.example.com")
        )
        .into_bytes(),
        format!("ftp://{host}").into_bytes(),
        "127.0.0.1\u{ff1a}5000".to_owned().into_bytes(),
    ];
    for input in &inputs {
        let o = helper(&f, "get", input)?;
        let shown = String::from_utf8_lossy(&input[..input.len().min(60)]).into_owned();
        assert_eq!(o.status.code(), Some(1), "{shown:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), NOT_FOUND, "{shown:?}");
        assert!(!text(&o.stderr).contains(&token));
    }
    assert_eq!(f.idp.token_requests()?.total, before, "no token fetched");

    // list: the routed registry only, keyed as docker names it.
    let o = helper(&f, "list", b"")?;
    assert!(o.status.success(), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v, serde_json::json!({ host.clone(): "oauth2" }));

    // store: re-saving tokctl's own credentials (what `docker login` does after a get) is
    // a quiet no-op; anything else is refused in one line that quotes no secret.
    let ours = serde_json::json!({"ServerURL": host, "Username": "oauth2", "Secret": token});
    let o = helper(&f, "store", ours.to_string().as_bytes())?;
    assert!(o.status.success(), "{}", text(&o.stdout));
    assert!(o.stdout.is_empty());
    for (server, user, secret) in [
        (host.as_str(), "oauth2", "a-typed-password"),
        (host.as_str(), "someone", token.as_str()),
        ("registry.example.com", "oauth2", "a-typed-password"),
    ] {
        let theirs = serde_json::json!({"ServerURL": server, "Username": user, "Secret": secret});
        let o = helper(&f, "store", theirs.to_string().as_bytes())?;
        assert_eq!(o.status.code(), Some(1));
        let out = text(&o.stdout);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("not stored"), "{out}");
        assert!(!out.contains(secret) && !text(&o.stderr).contains(secret));
    }
    let o = helper(&f, "store", b"{\"ServerURL\":\"x\",\"Secret\":\"CANARY-")?;
    assert_eq!(o.status.code(), Some(1));
    assert!(!text(&o.stdout).contains("CANARY"));

    // erase: docker sends only the server URL, which names no token: a no-op with exit 0.
    let o = helper(&f, "erase", host.as_bytes())?;
    assert!(o.status.success());
    let o = helper(&f, "get", host.as_bytes())?;
    assert!(text(&o.stdout).contains(&token), "erase dropped nothing");
    assert_eq!(f.idp.token_requests()?.total, before);

    // Unknown actions and a missing action.
    let o = helper(&f, "frobnicate", b"")?;
    assert_eq!(o.status.code(), Some(1));
    let o = f.env.run(f.env.command("docker-credential-tokctl"), None)?;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr).lines().count(), 1);
    Ok(())
}

#[test]
fn docker_login_stores_nothing_and_logout_keeps_the_token() -> Result<()> {
    let f = fixture()?;
    need(DOCKER);
    let host = f.registry.host();
    let login = |user: &str, password: &str| -> Result<Output> {
        let mut c = f.env.command(DOCKER);
        c.args(["login", &host, "-u", user, "--password-stdin"]);
        f.env.run(c, Some(format!("{password}\n").as_bytes()))
    };

    // Without an engine, docker 28 checks the password at the registry itself, then calls
    // `store`. tokctl's own token (what `tokctl get` prints) is accepted as a no-op...
    let token = cached_token(&f, "ci")?;
    let o = login("oauth2", &token)?;
    assert!(o.status.success(), "docker login: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("Login Succeeded"),
        "{}",
        text(&o.stdout)
    );

    // ...any other credential, even one the registry accepts, is refused with the reason.
    let other = f
        .idp
        .client_credentials(
            &tokctl_e2e::TestClient::basic(defaults::CC_POST, defaults::CC_POST_SECRET),
            None,
        )?
        .expect_success("a token that is not tokctl's")?
        .access_token()
        .expect("access token")
        .to_owned();
    let o = login("someone", &other)?;
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("not stored") && err.contains("tokctl login"),
        "{err}"
    );
    assert!(!err.contains(&other) && !text(&o.stdout).contains(&other));

    // docker's config still holds only the helper mapping: no `auths` secret.
    let cfg = std::fs::read_to_string(f.docker_config.join("config.json")).expect("config");
    assert!(!cfg.contains(&token) && !cfg.contains(&other), "{cfg}");
    assert!(f.env.files_containing(&token)?.is_empty());

    // logout calls erase, which keeps tokctl's token: the next inspect still works.
    let mut c = f.env.command(DOCKER);
    c.args(["logout", &host]);
    let o = f.env.run(c, None)?;
    assert!(o.status.success(), "docker logout: {}", text(&o.stderr));
    let o = docker_inspect(&f, &f.registry.image())?;
    assert!(o.status.success(), "docker: {}", text(&o.stderr));

    // skopeo login/logout go through the same helper calls.
    let skopeo = |args: &[&str], stdin: Option<&str>| -> Result<Output> {
        need(SKOPEO);
        let mut c = f.env.command(SKOPEO);
        c.args(args).arg("--authfile").arg(&f.authfile);
        if args[0] == "login" {
            c.arg("--cert-dir").arg(f.registry.cert_dir());
        }
        c.arg(&host);
        f.env.run(c, stdin.map(str::as_bytes))
    };
    let token = cached_token(&f, "ci")?;
    let o = skopeo(
        &["login", "-u", "oauth2", "--password-stdin"],
        Some(&format!("{token}\n")),
    )?;
    assert!(o.status.success(), "skopeo login: {}", text(&o.stderr));
    let o = skopeo(
        &["login", "-u", "someone", "--password-stdin"],
        Some(&format!("{other}\n")),
    )?;
    assert!(!o.status.success(), "skopeo stored a foreign credential");
    assert!(
        text(&o.stderr).contains("not stored"),
        "{}",
        text(&o.stderr)
    );
    let o = skopeo(&["logout"], None)?;
    assert!(o.status.success(), "skopeo logout: {}", text(&o.stderr));
    let auth = std::fs::read_to_string(&f.authfile).expect("auth file");
    assert!(!auth.contains(&token) && !auth.contains(&other), "{auth}");
    let o = skopeo_inspect(&f, &f.registry.image())?;
    assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
    Ok(())
}

#[test]
fn no_refresh_token_reaches_docker_skopeo_or_the_registry() -> Result<()> {
    let f = fixture_with(Some("legacy"))?;
    let rt = f
        .env
        .stored_refresh_token("legacy")?
        .expect("a refresh token");
    let host = f.registry.host();
    let mut outputs = vec![
        docker_inspect(&f, &f.registry.image())?,
        skopeo_inspect(&f, &f.registry.image())?,
    ];
    assert!(outputs.iter().all(|o| o.status.success()));
    for (op, input) in [
        ("get", host.clone()),
        ("get", format!("https://{host}/")),
        ("get", "id.test".to_owned()),
        ("list", String::new()),
        ("erase", host.clone()),
        (
            "store",
            serde_json::json!({"ServerURL": host, "Username": "<token>", "Secret": "x"})
                .to_string(),
        ),
    ] {
        outputs.push(helper(&f, op, input.as_bytes())?);
    }
    for o in &outputs {
        assert!(!text(&o.stdout).contains(&rt) && !text(&o.stderr).contains(&rt));
        assert!(!text(&o.stdout).contains("<token>"), "{}", text(&o.stdout));
    }
    let tokens = assert_active_basic(&f)?;
    assert!(!tokens.contains(&rt));
    // The refresh token is still only in the keychain (and still the same one).
    assert_eq!(
        f.env.stored_refresh_token("legacy")?.as_deref(),
        Some(rt.as_str())
    );
    assert!(f.env.files_containing(&rt)?.is_empty());

    // Logged out: the routed registry gets an error saying what to do (not "not found"),
    // which docker shows; no login is started.
    let o = f.env.tokctl(&["logout", "legacy"], None)?;
    assert!(o.status.success(), "logout: {}", text(&o.stderr));
    let before = f.idp.token_requests()?.total;
    let o = helper(&f, "get", host.as_bytes())?;
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.starts_with("tokctl: ") && out.contains("tokctl login legacy"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    let o = docker_inspect(&f, &f.registry.image())?;
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("tokctl login legacy"), "{err}");
    assert_eq!(
        f.idp.token_requests()?.total,
        before,
        "no login, no token request"
    );
    Ok(())
}

#[test]
fn a_caller_that_never_closes_stdin_gets_nothing_after_five_seconds() -> Result<()> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let f = fixture()?;
    let mut c = f.env.command("docker-credential-tokctl");
    c.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("helper starts");
    // A routed host, but the input never ends: the helper must not wait for ever, nor
    // answer for a name that might still grow.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(f.registry.host().as_bytes())
        .expect("write");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the helper still waits for input after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert_eq!(status.code(), Some(1));
    assert_eq!(out, NOT_FOUND);
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(15),
        "{took:?}"
    );
    Ok(())
}
