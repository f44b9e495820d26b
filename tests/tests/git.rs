//! Issue #5 (part): real `git clone` and `git push` through `git-credential-tokctl` against
//! a real `git http-backend` that accepts only tokens the IdP reports active, with Debian's
//! git 2.39 (Basic) and git 2.47 (Bearer through the `authtype` capability).

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use tokctl_e2e::{
    defaults, text, AuthScheme, Challenge, GitServer, Idp, IdpConfig, Result, SeenRequest, TestEnv,
};

/// Debian's git: no `authtype` capability, so tokens go as a Basic password.
const DEBIAN_GIT: &str = "/usr/bin/git";
/// A git 2.46+: announces `capability[]=authtype` and can send `Authorization: Bearer`.
const NEW_GIT: &str = "/usr/local/bin/git";
/// The username the route hands out with Basic.
const ROUTE_USER: &str = "x-token";
/// The repository every test clones.
const REPO: &str = "org/repo.git";

/// A running IdP, git server (with `org/repo.git`) and daemon whose config routes the
/// server's `/org/` to a client-credentials profile; PATH holds `git-credential-tokctl`.
struct Fixture {
    idp: Arc<Idp>,
    server: GitServer,
    env: TestEnv,
}

fn fixture(challenge: Challenge) -> Result<Fixture> {
    // Long-lived tokens: no background refresh may change the token a test is watching.
    let idp = Arc::new(Idp::start(IdpConfig {
        client_credentials_ttl: Some(600),
        ..Default::default()
    })?);
    let server = GitServer::start(idp.clone(), challenge)?;
    server.create_repo(REPO)?;
    let mut env = TestEnv::new()?;
    env.write_config(&format!(
        "[profile.ci]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"client_credentials\"\n\n\
         [[route]]\nurl = \"{}\"\nprofile = \"ci\"\nusername = \"{ROUTE_USER}\"\n",
        idp.issuer(),
        defaults::CC_BASIC,
        server.url("org/"),
    ))?;
    env.spawn_daemon(&[])?;
    env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;
    env.link_helper("git-credential-tokctl")?;
    Ok(Fixture { idp, server, env })
}

/// Fails loudly when a git the tests need is missing (the machine notes list both).
fn need(git: &str) {
    assert!(
        Path::new(git).is_file(),
        "{git} is missing: these tests need Debian's git and a git 2.46+ in /usr/local/bin"
    );
}

/// Runs `git args…` in the test's environment with tokctl as the only credential helper,
/// path-aware (the route is `/org/`), no prompting, and GIT_TRACE on stderr (which shows
/// the helper calls; git never traces credential values there).
fn git(f: &Fixture, git: &str, args: &[&str]) -> Result<Output> {
    let mut c = f.env.command(git);
    c.args([
        "-c",
        "credential.helper=",
        "-c",
        "credential.helper=tokctl",
        "-c",
        "credential.useHttpPath=true",
        "-c",
        "user.name=Test User",
        "-c",
        "user.email=user@example.test",
    ])
    .args(args)
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_TRACE", "1");
    f.env.run(c, None)
}

/// Clones `repo` into `$HOME/<dir>`.
fn clone(f: &Fixture, g: &str, repo: &str, dir: &str) -> Result<Output> {
    let dest = f.env.home().join(dir);
    git(
        f,
        g,
        &["clone", &f.server.url(repo), &dest.to_string_lossy()],
    )
}

/// `len` pseudo-random bytes (xorshift), which zlib cannot shrink.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// The requests that carried a credential.
fn with_credential(seen: &[SeenRequest]) -> Vec<&SeenRequest> {
    seen.iter().filter(|r| r.token.is_some()).collect()
}

/// Clone, commit, push with `g`; the server must see `scheme` with one active token.
fn clone_and_push(g: &str, scheme: AuthScheme) -> Result<()> {
    need(g);
    let f = fixture(Challenge::BasicAndBearer)?;
    let o = clone(&f, g, REPO, "work")?;
    assert!(o.status.success(), "{g} clone: {}", text(&o.stderr));
    let work = f.env.home().join("work");
    assert_eq!(
        std::fs::read_to_string(work.join("README")).expect("cloned file"),
        "served by the tokctl e2e git server\n"
    );

    let seen = f.server.requests();
    // What the server saw (tokens redacted by Debug), for the test log.
    eprintln!("{g} clone: {seen:#?}");
    assert_eq!(
        seen.first().map(|r| (r.scheme, r.status)),
        Some((AuthScheme::None, 401)),
        "git asks without a credential first, and is challenged: {seen:?}"
    );
    let authed = with_credential(&seen);
    assert!(!authed.is_empty(), "no credential reached the server");
    let token = authed[0].token.clone().expect("token");
    for r in &authed {
        assert_eq!(r.scheme, scheme, "{g}: {seen:?}");
        assert_eq!(r.status, 200, "{g}: {seen:?}");
        assert_eq!(
            r.token.as_deref(),
            Some(token.as_str()),
            "one token for the clone"
        );
        let user = (scheme == AuthScheme::Basic).then(|| ROUTE_USER.to_owned());
        assert_eq!(r.username, user, "{g}");
    }
    assert_eq!(f.idp.introspect(&token)?["active"], true);
    assert_eq!(f.idp.token_requests()?.total, 1);

    // A push: receive-pack over HTTP with the same credential. The pack is over 1 MiB
    // (git's http.postBuffer), so git sends it chunked after a 4-byte probe request.
    std::fs::write(work.join("pushed"), incompressible(2 << 20)).expect("write");
    let work_s = work.to_string_lossy().into_owned();
    let o = git(&f, g, &["-C", &work_s, "add", "pushed"])?;
    assert!(o.status.success(), "add: {}", text(&o.stderr));
    let o = git(&f, g, &["-C", &work_s, "commit", "-q", "-m", "pushed"])?;
    assert!(o.status.success(), "commit: {}", text(&o.stderr));
    f.server.clear_requests();
    let o = git(&f, g, &["-C", &work_s, "push", "origin", "main"])?;
    let seen = f.server.requests();
    eprintln!("{g} push: {seen:#?}");
    assert!(o.status.success(), "{g} push: {}", text(&o.stderr));
    let local = git(&f, g, &["-C", &work_s, "rev-parse", "HEAD"])?;
    assert_eq!(f.server.head(REPO)?, text(&local.stdout), "the push landed");
    let pack = seen
        .iter()
        .find(|r| {
            r.method == "POST" && r.target.ends_with("/git-receive-pack") && r.token.is_some()
        })
        .unwrap_or_else(|| panic!("no receive-pack POST with a credential: {seen:?}"));
    assert_eq!((pack.scheme, pack.status), (scheme, 200), "{seen:?}");
    assert_eq!(pack.token.as_deref(), Some(token.as_str()));
    assert_eq!(
        f.idp.token_requests()?.total,
        1,
        "the cached token served the push"
    );

    // git was told the token; it must not have written it anywhere (tokctl's `store`
    // writes nothing, and there is no other helper).
    assert!(f.env.files_containing(&token)?.is_empty());
    assert!(!text(&o.stderr).contains(&token));
    Ok(())
}

#[test]
fn debian_git_clones_and_pushes_with_the_token_as_basic_password() -> Result<()> {
    clone_and_push(DEBIAN_GIT, AuthScheme::Basic)
}

#[test]
fn git_2_46_plus_clones_and_pushes_with_a_bearer_token() -> Result<()> {
    let v = std::process::Command::new(NEW_GIT)
        .arg("--version")
        .output();
    eprintln!(
        "{NEW_GIT}: {}",
        v.map(|o| text(&o.stdout)).unwrap_or_default()
    );
    clone_and_push(NEW_GIT, AuthScheme::Bearer)
}

#[test]
fn a_large_bearer_push_works_with_a_bigger_post_buffer_where_the_probe_is_refused() -> Result<()> {
    // Before a request larger than http.postBuffer git sends a 4-byte probe without the
    // Bearer credential (it adds that header itself, unlike curl's Basic). A server that
    // refuses the probe makes such pushes fail; a bigger http.postBuffer, as
    // docs/integrations.md says, sends the pack in one request with the credential.
    need(NEW_GIT);
    let f = fixture(Challenge::BasicAndBearer)?;
    f.server.set_admit_probe(false);
    let o = clone(&f, NEW_GIT, REPO, "work")?;
    assert!(o.status.success(), "clone: {}", text(&o.stderr));
    let work = f.env.home().join("work").to_string_lossy().into_owned();
    std::fs::write(
        f.env.home().join("work").join("big"),
        incompressible(3 << 20),
    )
    .expect("write");
    for args in [&["add", "big"][..], &["commit", "-q", "-m", "big"]] {
        let o = git(&f, NEW_GIT, &[&["-C", work.as_str()][..], args].concat())?;
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    }
    f.server.clear_requests();
    let o = git(
        &f,
        NEW_GIT,
        &[
            "-C",
            &work,
            "-c",
            "http.postBuffer=67108864",
            "push",
            "origin",
            "main",
        ],
    )?;
    let seen = f.server.requests();
    assert!(o.status.success(), "push: {}\n{seen:?}", text(&o.stderr));
    let posts: Vec<_> = seen.iter().filter(|r| r.method == "POST").collect();
    assert!(!posts.is_empty());
    for r in posts {
        assert_eq!((r.scheme, r.status), (AuthScheme::Bearer, 200), "{seen:?}");
    }
    let local = git(&f, NEW_GIT, &["-C", &work, "rev-parse", "HEAD"])?;
    assert_eq!(f.server.head(REPO)?, text(&local.stdout));
    Ok(())
}

#[test]
fn a_server_offering_only_basic_gets_basic_from_every_git() -> Result<()> {
    // Forges that take tokens only as a Basic password challenge with Basic alone; a git
    // that could do Bearer must still get the token in the form the server asked for.
    let f = fixture(Challenge::BasicOnly)?;
    for (i, g) in [DEBIAN_GIT, NEW_GIT].into_iter().enumerate() {
        need(g);
        f.server.clear_requests();
        let o = clone(&f, g, REPO, &format!("basic{i}"))?;
        assert!(o.status.success(), "{g} clone: {}", text(&o.stderr));
        let seen = f.server.requests();
        let authed = with_credential(&seen);
        assert!(!authed.is_empty(), "{g}: {seen:?}");
        for r in authed {
            assert_eq!(
                (r.scheme, r.status),
                (AuthScheme::Basic, 200),
                "{g}: {seen:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_revoked_token_is_erased_and_the_next_clone_gets_a_fresh_one() -> Result<()> {
    let f = fixture(Challenge::BasicAndBearer)?;
    for (i, g) in [DEBIAN_GIT, NEW_GIT].into_iter().enumerate() {
        need(g);
        let o = clone(&f, g, REPO, &format!("a{i}"))?;
        assert!(o.status.success(), "{g} clone: {}", text(&o.stderr));
        let seen = f.server.requests();
        let old = with_credential(&seen)
            .last()
            .and_then(|r| r.token.clone())
            .expect("a token was used");
        let before = f.idp.token_requests()?.total;

        // An admin revokes the token: the server now refuses it, git tells the helper to
        // erase it, and this clone fails (git does not retry within one command).
        f.idp.revoke(&old, Some("access_token"))?;
        f.server.clear_requests();
        let o = clone(&f, g, REPO, &format!("b{i}"))?;
        assert!(!o.status.success(), "{g} cloned with a revoked token");
        let err = text(&o.stderr);
        assert!(
            err.contains("credential-tokctl erase"),
            "{g} did not call erase:\n{err}"
        );
        assert!(!err.contains(&old), "the token is not in git's trace");
        let seen = f.server.requests();
        assert!(
            seen.iter()
                .any(|r| r.token.as_deref() == Some(old.as_str()) && r.status == 401),
            "{g}: {seen:?}"
        );
        assert_eq!(
            f.idp.token_requests()?.total,
            before,
            "erase itself fetches nothing"
        );

        // The next clone gets a fresh token from one IdP request, and succeeds.
        f.server.clear_requests();
        let o = clone(&f, g, REPO, &format!("c{i}"))?;
        assert!(
            o.status.success(),
            "{g} clone after erase: {}",
            text(&o.stderr)
        );
        let seen = f.server.requests();
        let authed = with_credential(&seen);
        assert!(!authed.is_empty());
        for r in &authed {
            assert_eq!(r.status, 200, "{g}: {seen:?}");
            assert_ne!(
                r.token.as_deref(),
                Some(old.as_str()),
                "{g} reused the revoked token"
            );
        }
        let fresh = authed[0].token.clone().expect("token");
        assert_eq!(f.idp.introspect(&fresh)?["active"], true);
        assert_eq!(f.idp.token_requests()?.total, before + 1, "{g}");
    }
    Ok(())
}

#[test]
fn an_unrouted_host_or_path_gets_no_credential() -> Result<()> {
    let f = fixture(Challenge::BasicAndBearer)?;
    f.server.create_repo("other/repo.git")?;
    for g in [DEBIAN_GIT, NEW_GIT] {
        need(g);
        // Same server, but a path outside the route, and a host name no route names.
        let localhost = format!("http://localhost:{}/{REPO}", f.server.port());
        for url in [f.server.url("other/repo.git"), localhost] {
            f.server.clear_requests();
            let dest = f.env.home().join("unrouted");
            let o = git(&f, g, &["clone", &url, &dest.to_string_lossy()])?;
            assert!(!o.status.success(), "{g} cloned {url} without a route");
            assert!(!dest.join("README").exists());
            let seen = f.server.requests();
            assert!(!seen.is_empty(), "{g} never reached {url}");
            assert!(
                seen.iter().all(|r| r.scheme == AuthScheme::None),
                "{g} sent a credential for {url}: {seen:?}"
            );
        }
    }
    assert_eq!(
        f.idp.token_requests()?.total,
        0,
        "no token was even fetched for an unrouted URL"
    );
    Ok(())
}

#[test]
fn the_documented_per_host_setup_keeps_other_helpers_away_from_the_token() -> Result<()> {
    let f = fixture(Challenge::BasicAndBearer)?;
    // A helper the user already has globally (`store`, a keychain…), played by a spy that
    // records only which operations git ran it for, never the values.
    let spy_log = f.env.tmp_dir().join("spy.log");
    let spy = f.env.tmp_dir().join("bin").join("git-credential-spy");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\ncat > /dev/null\n",
            spy_log.display()
        ),
    )
    .expect("write spy");
    std::fs::set_permissions(&spy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let base = format!("http://127.0.0.1:{}", f.server.port());
    let config = |g: &str, args: &[&str]| -> Result<()> {
        let mut c = f.env.command(g);
        c.args(["config", "--global"]).args(args);
        let o = f.env.run(c, None)?;
        assert!(
            o.status.success(),
            "git config {args:?}: {}",
            text(&o.stderr)
        );
        Ok(())
    };
    // Plain `git clone`: only the global config of the test HOME applies.
    let plain_clone = |g: &str, dir: &str| -> Result<Output> {
        let mut c = f.env.command(g);
        c.args(["clone", &f.server.url(REPO)])
            .arg(f.env.home().join(dir))
            .env("GIT_TERMINAL_PROMPT", "0");
        f.env.run(c, None)
    };
    let helper = format!("credential.{base}.helper");
    let use_path = format!("credential.{base}.useHttpPath");
    for (i, g) in [DEBIAN_GIT, NEW_GIT].into_iter().enumerate() {
        need(g);
        // docs/integrations.md, per host: reset the helper list for this URL, then tokctl.
        config(g, &["credential.helper", "spy"])?;
        config(g, &["--replace-all", &helper, ""])?;
        config(g, &["--add", &helper, "tokctl"])?;
        config(g, &[&use_path, "true"])?;
        std::fs::remove_file(&spy_log).ok();
        let o = plain_clone(g, &format!("doc{i}"))?;
        assert!(o.status.success(), "{g} clone: {}", text(&o.stderr));
        assert!(
            !spy_log.exists(),
            "{g} ran the global helper for a tokctl URL: {:?}",
            std::fs::read_to_string(&spy_log)
        );

        // Without the reset, git hands the token to the global helper too (`store`
        // would write it to ~/.git-credentials): the reason the docs insist on it.
        config(g, &["--unset-all", &helper])?;
        config(g, &["--add", &helper, "tokctl"])?;
        let o = plain_clone(g, &format!("noreset{i}"))?;
        assert!(o.status.success(), "{g} clone: {}", text(&o.stderr));
        let ops = std::fs::read_to_string(&spy_log).unwrap_or_default();
        assert!(ops.lines().any(|l| l == "store"), "{g}: {ops:?}");
        config(g, &["--unset-all", &helper])?;
    }
    Ok(())
}
