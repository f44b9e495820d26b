//! Issue #6 end to end: the always-on agent.
//!
//! - socket activation with the real `systemd-socket-activate` (the daemon serves on the
//!   inherited socket);
//! - SIGHUP with profiles added, changed and removed, and with a broken file;
//! - SIGTERM: requests in flight finish, exit 0 within seconds, no socket left;
//! - 20 daemons started at once on one socket leave exactly one;
//! - the LaunchAgent plist parses and names its socket; the systemd units pass
//!   `systemd-analyze --user verify` with nothing on stderr;
//! - `tokctl doctor` on a healthy and on a broken setup; completions and man page;
//! - `scripts/install.sh` into a temp prefix;
//! - a desktop notification on the private session bus when the IdP rejects the refresh
//!   token, with no token text in it.
//!
//! Figures are printed on lines starting with `FIGURE` (`--no-capture` shows them).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tokctl_e2e::{bin_dir, defaults, is_alive, signal, text, Idp, IdpConfig, Result, Sig, TestEnv};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn cc_profile(name: &str, issuer: &str, client: &str) -> String {
    format!(
        "[profile.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\n\
         grant = \"client_credentials\"\n"
    )
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns true, up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Children this test started, ended (by pid) when the test ends, pass or fail.
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn profile_names(env: &TestEnv) -> Vec<String> {
    env.daemon_status()
        .ok()
        .flatten()
        .map(|s| s.profiles.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

#[test]
fn socket_activation_serves_on_the_inherited_socket() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    env.write_config(&cc_profile("ci", idp.issuer(), defaults::CC_BASIC))?;
    let sock = env.socket_path();
    let dir = sock.parent().expect("socket dir").to_path_buf();
    fs::create_dir_all(&dir).expect("socket dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    // systemd-socket-activate passes only the variables named with -E.
    let mut cmd = env.command("systemd-socket-activate");
    cmd.arg("-l").arg(&sock);
    for (k, _) in env.envs() {
        cmd.arg("-E").arg(k);
    }
    let log = env.logs_dir().join("activated.log");
    let log_file = fs::File::create(&log).expect("log");
    cmd.arg(env.bin_path("tokctld"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file);
    let mut reap = Reap(vec![cmd.spawn().expect("systemd-socket-activate runs")]);
    let activator = reap.0[0].id();
    assert!(
        eventually(Duration::from_secs(10), || sock.exists()),
        "systemd-socket-activate did not create {}",
        sock.display()
    );
    // The first connection starts tokctld in place of systemd-socket-activate (exec).
    env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;
    let o = env.tokctl(&["get", "ci"], None)?;
    assert!(o.status.success(), "get: {}", text(&o.stderr));
    let token = text(&o.stdout);
    assert_eq!(idp.introspect(&token)?["active"], true);
    let st = env.daemon_status()?.expect("daemon answers");
    assert_eq!(
        st.pid, activator,
        "the activated process itself serves (no second daemon was started)"
    );
    let daemon_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        daemon_log.contains("origin=\"systemd\""),
        "the daemon says it took the inherited socket: {daemon_log}"
    );
    // systemd-socket-activate made the socket by the umask; tokctld tightens it.
    let mode = fs::symlink_metadata(&sock).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // SIGTERM: exit 0; the socket file belongs to the socket manager and stays.
    signal(activator, Sig::Term)?;
    let status = wait_exit(&mut reap.0[0], Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    let m = fs::symlink_metadata(&sock).expect("inherited socket left in place");
    assert!(m.file_type().is_socket());
    // A daemon started by hand afterwards recovers the now stale socket.
    env.spawn_daemon(&[])?;
    let o = env.tokctl(&["status", "--json"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    Ok(())
}

#[test]
fn sighup_reloads_added_changed_and_removed_profiles_and_keeps_the_last_good_config() -> Result<()>
{
    let env = TestEnv::new()?;
    let issuer = "http://127.0.0.1:9/";
    env.write_config(&cc_profile("a", issuer, "client-a"))?;
    env.spawn_daemon(&[])?;
    assert_eq!(profile_names(&env), ["a"]);

    env.write_config(&format!(
        "{}{}",
        cc_profile("a", issuer, "client-a"),
        cc_profile("b", issuer, "client-b")
    ))?;
    env.signal_daemon(Sig::Hup)?;
    assert!(
        eventually(Duration::from_secs(10), || profile_names(&env)
            == ["a", "b"]),
        "profile b added: {:?}",
        profile_names(&env)
    );
    assert!(
        env.daemon_log(0).contains("added: b"),
        "{}",
        env.daemon_log(0)
    );

    // A broken file: one clear line with file and line, and the last good config stays.
    env.write_config(&format!(
        "{}[profile.c]\nissuer = \"{issuer}\"\nclient_id = \"c\"\ngrant = \"telepathy\"\n",
        cc_profile("b", issuer, "client-b")
    ))?;
    let pid = env.daemon_pid().expect("daemon");
    env.signal_daemon(Sig::Hup)?;
    assert!(
        eventually(Duration::from_secs(10), || env
            .daemon_log(0)
            .contains("config not reloaded")),
        "{}",
        env.daemon_log(0)
    );
    let log = env.daemon_log(0);
    let line = log
        .lines()
        .find(|l| l.contains("config not reloaded"))
        .expect("error line");
    assert!(
        line.contains("config.toml:8:"),
        "names file and line: {line}"
    );
    assert!(line.contains("telepathy"), "{line}");
    assert_eq!(env.daemon_pid(), Some(pid), "still the same daemon");
    assert_eq!(profile_names(&env), ["a", "b"], "last good config kept");

    // Remove a, change b.
    env.write_config(&cc_profile("b", issuer, "client-b2"))?;
    env.signal_daemon(Sig::Hup)?;
    assert!(
        eventually(Duration::from_secs(10), || profile_names(&env) == ["b"]),
        "profile a removed: {:?}",
        profile_names(&env)
    );
    let log = env.daemon_log(0);
    assert!(
        log.contains("changed: b") && log.contains("removed: a"),
        "{log}"
    );
    Ok(())
}

#[test]
fn sigterm_finishes_in_flight_requests_exits_zero_and_removes_the_socket() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    env.write_config(&cc_profile("ci", idp.issuer(), defaults::CC_BASIC))?;
    let log = env.logs_dir().join("term.log");
    let log_file = fs::File::create(&log).expect("log");
    let mut daemon = env.cmd("tokctld");
    daemon
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file);
    let mut reap = Reap(vec![daemon.spawn().expect("tokctld starts")]);
    let pid = reap.0[0].id();
    assert!(eventually(Duration::from_secs(20), || env
        .daemon_status()
        .ok()
        .flatten()
        .is_some()));
    env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;

    // A request in flight: the IdP is frozen while the daemon waits for its token.
    idp.pause()?;
    let mut get = env.cmd("tokctl");
    get.args(["get", "ci"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let get = get.spawn().expect("tokctl get");
    // Collected on its own thread, so the child is waited for on every path.
    let get = thread::spawn(move || get.wait_with_output());
    // In flight for sure: the daemon shows the profile refreshing (it waits on the IdP).
    let refreshing = || {
        env.daemon_status().ok().flatten().is_some_and(|s| {
            s.profiles
                .iter()
                .any(|p| p.state == tokctl_proto::ProfileState::Refreshing)
        })
    };
    assert!(
        eventually(Duration::from_secs(20), refreshing),
        "the get never reached the daemon"
    );
    let t0 = Instant::now();
    signal(pid, Sig::Term)?;
    thread::sleep(Duration::from_millis(700));
    assert!(is_alive(pid), "the daemon waits for the request in flight");
    idp.resume()?;
    let got: Output = get.join().expect("get thread").expect("get finishes");
    let status = wait_exit(&mut reap.0[0], Duration::from_secs(10)).expect("exits after SIGTERM");
    let took = t0.elapsed();
    assert!(got.status.success(), "in-flight get: {}", text(&got.stderr));
    assert_eq!(idp.introspect(&text(&got.stdout))?["active"], true);
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let sock = env.socket_path();
    assert!(!sock.exists(), "socket removed: {}", sock.display());

    // An idle daemon stops at once, on SIGTERM and on SIGINT alike.
    let mut idle = Duration::ZERO;
    for sig in [Sig::Term, Sig::Int] {
        let mut c = env.cmd("tokctld");
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        reap.0.push(c.spawn().expect("tokctld starts"));
        let child = reap.0.last_mut().expect("just pushed");
        assert!(eventually(Duration::from_secs(20), || env
            .daemon_status()
            .ok()
            .flatten()
            .is_some_and(|s| s.pid == child.id())));
        let t1 = Instant::now();
        signal(child.id(), sig)?;
        let status = wait_exit(child, Duration::from_secs(5)).expect("idle daemon stops");
        if sig == Sig::Term {
            idle = t1.elapsed();
        }
        assert_eq!(status.code(), Some(0), "{sig:?}");
        assert!(!sock.exists(), "socket removed after {sig:?}");
    }
    println!(
        "FIGURE SIGTERM: with a request in flight (IdP frozen 0.7 s) exit 0 after {:.2} s, \
         request answered; idle daemon gone {:.0} ms after SIGTERM (SIGINT: exit 0 too); socket \
         removed each time",
        took.as_secs_f64(),
        idle.as_secs_f64() * 1000.0
    );
    Ok(())
}

#[test]
fn twenty_daemons_at_once_leave_exactly_one() -> Result<()> {
    const N: usize = 20;
    let env = TestEnv::new()?;
    env.write_config(&cc_profile("ci", "http://127.0.0.1:9/", "x"))?;
    let mut reap = Reap(Vec::new());
    let logs: Vec<PathBuf> = (0..N)
        .map(|i| env.logs_dir().join(format!("race.{i}.log")))
        .collect();
    let t0 = Instant::now();
    for log in &logs {
        let f = fs::File::create(log).expect("log");
        let mut c = env.cmd("tokctld");
        c.stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f);
        reap.0.push(c.spawn().expect("tokctld starts"));
    }
    // Every loser exits by itself; the winner keeps running.
    let mut exited = [None; N];
    let settled = eventually(Duration::from_secs(30), || {
        for (i, c) in reap.0.iter_mut().enumerate() {
            if exited[i].is_none() {
                exited[i] = c.try_wait().ok().flatten();
            }
        }
        exited.iter().filter(|e| e.is_none()).count() == 1
    });
    let alive: Vec<usize> = (0..N).filter(|i| exited[*i].is_none()).collect();
    assert!(settled, "running after 30 s: {alive:?}");
    let winner = reap.0[alive[0]].id();
    let st = env.daemon_status()?.expect("the winner answers");
    assert_eq!(st.pid, winner);
    for (i, e) in exited.iter().enumerate() {
        let Some(e) = e else { continue };
        let msg = fs::read_to_string(&logs[i]).unwrap_or_default();
        assert_eq!(e.code(), Some(0), "loser {i}: {msg}");
        assert!(
            msg.contains("already running") && msg.contains(&format!("(pid {winner})")),
            "loser {i} says why: {msg}"
        );
    }
    // Still exactly one afterwards, and it serves.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(env.daemons_by_environment(), [winner]);
    let o = env.tokctl(&["status", "--json"], None)?;
    assert!(o.status.success());
    println!(
        "FIGURE race: {N} tokctld started at once -> 1 running (pid {winner}), {} exited 0 \
         with \"already running\", settled in {:.2} s",
        N - 1,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn launchd_plist_parses_and_names_its_socket() {
    let plist = repo_root().join("launchd/dev.tokctl.tokctld.plist");
    let script =
        "import json, plistlib, sys\nprint(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&plist)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "plistlib: {}", text(&o.stderr));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(p["Label"], "dev.tokctl.tokctld");
    assert_eq!(p["ProgramArguments"][0], "@TOKCTLD@");
    let l = &p["Sockets"]["Listeners"];
    assert_eq!(l["SockPathName"], "@SOCKET@", "{p}");
    assert_eq!(l["SockPathMode"], 0o600, "{p}");
    assert_eq!(l["SockType"], "stream");
    assert_eq!(p["EnvironmentVariables"]["TOKCTL_SOCKET"], "@SOCKET@");
    assert_eq!(p["KeepAlive"]["SuccessfulExit"], false);
    for k in ["StandardOutPath", "StandardErrorPath"] {
        assert_eq!(p[k], "@HOME@/Library/Logs/tokctld.log", "{k}");
    }
}

/// `systemd-analyze --user verify` on copies of the units whose ExecStart is `tokctld`;
/// returns its output.
fn verify_units(dir: &Path) -> Output {
    let run = dir.join("run");
    fs::create_dir_all(&run).expect("runtime dir");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod");
    Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(dir.join("tokctld.socket"))
        .arg(dir.join("tokctld.service"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", &run)
        .env("HOME", dir)
        .output()
        .expect("systemd-analyze runs")
}

fn copy_units(dir: &Path, exec_start: &Path, extra: &str) {
    let src = repo_root().join("systemd");
    fs::copy(src.join("tokctld.socket"), dir.join("tokctld.socket")).expect("copy");
    let service = fs::read_to_string(src.join("tokctld.service")).expect("read");
    let fixed: Vec<String> = service
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}{extra}", exec_start.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    fs::write(dir.join("tokctld.service"), fixed.join("\n") + "\n").expect("write");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let t = tempfile::tempdir().expect("tempdir");
    let tokctld = bin_dir().join("tokctld");
    copy_units(t.path(), &tokctld, "");
    let o = verify_units(t.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "verify printed warnings");
    assert_eq!(text(&o.stdout), "");
    let socket = fs::read_to_string(t.path().join("tokctld.socket")).expect("read");
    assert!(socket.contains("ListenStream=%t/tokctl/tokctld.sock"));
    assert!(socket.contains("SocketMode=0600") && socket.contains("DirectoryMode=0700"));
    let service = fs::read_to_string(t.path().join("tokctld.service")).expect("read");
    assert!(service.contains("Restart=on-failure"));
    // The check can fail: an unknown key is only a warning (exit 0), on stderr.
    let bad = tempfile::tempdir().expect("tempdir");
    copy_units(bad.path(), &tokctld, "\nProtectNothing=yes");
    let o = verify_units(bad.path());
    assert!(
        text(&o.stderr).contains("ProtectNothing"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn install_script_installs_into_a_temp_prefix() {
    let t = tempfile::tempdir().expect("tempdir");
    let prefix = t.path().join("prefix");
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .arg("--from")
        .arg(bin_dir())
        .env("PREFIX", &prefix)
        .env("HOME", t.path().join("home"))
        .output()
        .expect("install.sh runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("systemctl --user enable --now tokctld.socket"));
    let bin = prefix.join("bin");
    for b in ["tokctl", "tokctld"] {
        let m = fs::metadata(bin.join(b)).expect(b);
        assert_eq!(m.mode() & 0o777, 0o755, "{b}");
    }
    for helper in ["git-credential-tokctl", "docker-credential-tokctl"] {
        let target = fs::read_link(bin.join(helper)).expect(helper);
        assert_eq!(target, Path::new("tokctl"), "{helper}");
    }
    let o = Command::new(bin.join("tokctl"))
        .arg("--version")
        .output()
        .expect("installed tokctl runs");
    assert!(
        text(&o.stdout).starts_with("tokctl "),
        "{}",
        text(&o.stdout)
    );
    let man = fs::read_to_string(prefix.join("share/man/man1/tokctl.1")).expect("man page");
    assert!(man.contains(".TH tokctl 1"), "{man}");
    for f in [
        "share/bash-completion/completions/tokctl",
        "share/zsh/site-functions/_tokctl",
        "share/fish/vendor_completions.d/tokctl.fish",
    ] {
        assert!(fs::metadata(prefix.join(f)).expect(f).len() > 100, "{f}");
    }
    // A prefix outside HOME gets the units where `systemctl --user` looks under it.
    let units = prefix.join("lib/systemd/user");
    let service = fs::read_to_string(units.join("tokctld.service")).expect("service");
    let exec = format!("ExecStart={}", bin.join("tokctld").display());
    assert!(service.lines().any(|l| l == exec), "{service}");
    // The installed units verify clean, with their real ExecStart.
    let o = verify_units(&units);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        text(&o.stderr)
    );

    // A prefix inside HOME puts them in ~/.local/share/systemd/user; DESTDIR stages the
    // files while the units keep the final path.
    let home = t.path().join("home");
    let stage = t.path().join("stage");
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .arg("--from")
        .arg(bin_dir())
        .env("PREFIX", home.join(".local"))
        .env("DESTDIR", &stage)
        .env("HOME", &home)
        .output()
        .expect("install.sh runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let staged = stage.join(home.strip_prefix("/").expect("absolute"));
    let service = fs::read_to_string(staged.join(".local/share/systemd/user/tokctld.service"))
        .expect("unit under ~/.local/share/systemd/user");
    let exec = format!("ExecStart={}", home.join(".local/bin/tokctld").display());
    assert!(service.lines().any(|l| l == exec), "{service}");
    assert!(staged.join(".local/bin/tokctld").is_file());
    assert!(!home.join(".local").exists(), "nothing outside DESTDIR");
}

#[test]
fn completions_and_man_page_are_generated() -> Result<()> {
    let env = TestEnv::new()?;
    for shell in ["bash", "zsh", "fish"] {
        let o = env.run_bin("tokctl", &["completions", shell])?;
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        let s = text(&o.stdout);
        assert!(s.contains("tokctl") && s.contains("doctor"), "{shell}");
    }
    // The bash script is valid bash.
    let o = env.run_bin("tokctl", &["completions", "bash"])?;
    let check = tempfile::NamedTempFile::new().expect("tmp");
    fs::write(check.path(), &o.stdout).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(check.path())
        .output()
        .expect("bash");
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    let o = env.run_bin("tokctl", &["completions", "powershell-9000"])?;
    assert_eq!(o.status.code(), Some(2));
    let o = env.run_bin("tokctl", &["man"])?;
    assert!(o.status.success());
    let man = text(&o.stdout);
    assert!(
        man.contains(".TH tokctl 1") && man.contains(".SH SUBCOMMANDS"),
        "{man}"
    );
    Ok(())
}

fn doctor(env: &TestEnv) -> Result<(Output, serde_json::Value)> {
    let o = env.tokctl(&["doctor"], None)?;
    let j = env.tokctl(&["doctor", "--json"], None)?;
    assert_eq!(o.status.code(), j.status.code());
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("doctor --json");
    Ok((o, v))
}

fn check_of<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {v}"))
}

#[test]
fn doctor_on_a_healthy_and_a_broken_setup() -> Result<()> {
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    env.write_config(&cc_profile("ci", idp.issuer(), defaults::CC_BASIC))?;
    env.spawn_daemon(&[])?;
    env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;

    let (o, v) = doctor(&env)?;
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert_eq!(v["ok"], true, "{v}");
    for name in [
        "socket directory",
        "socket",
        "daemon",
        "config",
        "keychain",
        "issuer ci",
        "clock",
    ] {
        assert_eq!(check_of(&v, name)["status"], "ok", "{name}: {v}");
    }
    assert!(check_of(&v, "keychain")["detail"]
        .as_str()
        .unwrap_or("")
        .contains("Secret Service"));
    assert!(out.lines().all(|l| !l.starts_with("FAIL")), "{out}");

    // Broken: a bad line in the config, the keychain gone, the IdP down.
    env.write_config(&format!(
        "{}scopes = \"not-a-list\"\n",
        cc_profile("ci", idp.issuer(), defaults::CC_BASIC)
    ))?;
    env.keychain_mut().stop_secret_service()?;
    idp.stop()?;
    let (o, v) = doctor(&env)?;
    let out = text(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(2),
        "config is the first problem: {out}"
    );
    assert_eq!(v["ok"], false);
    for name in ["config", "keychain", "issuer ci"] {
        let c = check_of(&v, name);
        assert_eq!(c["status"], "fail", "{name}: {v}");
        assert!(
            !c["fix"].as_str().unwrap_or("").is_empty(),
            "{name} has a fix"
        );
    }
    assert!(check_of(&v, "config")["detail"]
        .as_str()
        .unwrap_or("")
        .contains("config.toml:5"));
    assert!(out.contains("fix: "), "{out}");
    assert!(text(&o.stderr).contains("problem"), "{}", text(&o.stderr));

    // No daemon at all: said so, with how to start it, and doctor starts none.
    env.kill_daemons();
    let (o, v) = doctor(&env)?;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stdout));
    let d = check_of(&v, "daemon");
    assert_eq!(d["status"], "fail");
    assert!(
        d["detail"].as_str().unwrap_or("").contains("not running"),
        "{d}"
    );
    assert!(d["fix"]
        .as_str()
        .unwrap_or("")
        .contains("systemctl --user start tokctld.socket"));
    assert!(env.daemon_pid().is_none(), "doctor must not autostart");

    // An open socket directory is a problem with its chmod.
    let dir = env.socket_path().parent().expect("dir").to_path_buf();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (o, v) = doctor(&env)?;
    assert_ne!(o.status.code(), Some(0));
    let c = check_of(&v, "socket directory");
    assert_eq!(c["status"], "fail");
    assert!(c["fix"].as_str().unwrap_or("").contains("chmod 700"), "{c}");
    Ok(())
}

/// A stand-in notification daemon: owns `org.freedesktop.Notifications` on the test's
/// private session bus and records every `Notify` call.
struct Notifications {
    calls: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, zbus::zvariant::OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push((app_name, summary, body));
        calls.len() as u32
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "tokctl-test".into(),
            "tokctl".into(),
            "0".into(),
            "1.2".into(),
        )
    }
}

#[test]
fn login_required_raises_a_desktop_notification_without_token_text() -> Result<()> {
    const P: &str = "p";
    let idp = Idp::start(IdpConfig::default())?;
    let env = TestEnv::new()?;
    let bus = env.keychain().bus_address().to_owned();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let _server = zbus::blocking::connection::Builder::address(bus.as_str())
        .and_then(|b| b.name("org.freedesktop.Notifications"))
        .and_then(|b| {
            b.serve_at(
                "/org/freedesktop/Notifications",
                Notifications {
                    calls: calls.clone(),
                },
            )
        })
        .and_then(|b| b.build())
        .expect("own org.freedesktop.Notifications on the private bus");
    // dbus-monitor sees the call as it crosses the bus, every argument as text.
    let monitor_log = env.logs_dir().join("dbus-monitor.log");
    let mut mon = env.command("dbus-monitor");
    mon.arg("--address")
        .arg(&bus)
        .arg("interface='org.freedesktop.Notifications',member='Notify'")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&monitor_log).expect("log"))
        .stderr(Stdio::null());
    let _reap = Reap(vec![mon.spawn().expect("dbus-monitor runs")]);
    thread::sleep(Duration::from_millis(300));

    env.write_config(&format!(
        "[profile.{P}]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"password\"\n",
        idp.issuer(),
        defaults::PASSWORD_CLI
    ))?;
    env.spawn_daemon(&[])?;
    env.password_login(P, defaults::PASSWORD_CLI_SECRET)?;
    let o = env.tokctl(&["get", P], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let access = text(&o.stdout);
    let rt = env.stored_refresh_token(P)?.expect("refresh token stored");
    assert!(calls.lock().expect("lock").is_empty(), "nothing to say yet");

    // The IdP's admin ends the session; the next refresh gets invalid_grant.
    idp.revoke(&rt, Some("refresh_token"))?;
    let (st, body) = env.socket_request(
        "POST",
        "/v1/invalidate",
        Some(&format!("{{\"profile\":\"{P}\"}}")),
    )?;
    assert_eq!(st, 200, "{body}");
    let o = env.tokctl(&["get", P], None)?;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert!(
        eventually(Duration::from_secs(10), || !calls
            .lock()
            .expect("lock")
            .is_empty()),
        "no notification arrived; daemon log: {}",
        env.daemon_log(0)
    );
    // More failing gets do not repeat it.
    for _ in 0..3 {
        let o = env.tokctl(&["get", P], None)?;
        assert_eq!(o.status.code(), Some(4));
    }
    thread::sleep(Duration::from_millis(500));
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (app, summary, body) = &calls[0];
    assert_eq!(app, "tokctl");
    assert!(summary.contains("login required"), "{summary}");
    assert!(body.contains(&format!("tokctl login {P}")), "{body}");
    let monitored = fs::read_to_string(&monitor_log).unwrap_or_default();
    assert!(monitored.contains("member=Notify"), "{monitored}");
    for secret in [
        access.as_str(),
        rt.as_str(),
        defaults::PASSWORD_CLI_SECRET,
        defaults::ALICE_PASSWORD,
    ] {
        assert!(!summary.contains(secret) && !body.contains(secret));
        assert!(!monitored.contains(secret), "a secret crossed the bus");
    }
    Ok(())
}

/// Runs `tokctl ARGS` on a pseudo-terminal (util-linux `script`) in `env`.
fn on_terminal(env: &TestEnv, args: &str) -> Result<String> {
    let mut c = env.command("script");
    c.args(["-qec"])
        .arg(format!("{} {args}", env.bin_path("tokctl").display()))
        .arg("/dev/null");
    let o = env.run(c, None)?;
    assert!(o.status.success(), "{}", text(&o.stdout));
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn status_is_a_table_on_a_terminal_with_colour_unless_no_color_and_json_in_a_pipe() -> Result<()> {
    let mut env = TestEnv::new()?;
    env.write_config(&format!(
        "{}scopes = [\"api:read\"]\n",
        cc_profile("ci", "http://127.0.0.1:9/", "x")
    ))?;
    env.spawn_daemon(&[])?;
    // A pipe gets JSON without asking.
    let o = env.tokctl(&["status"], None)?;
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status json in a pipe");
    assert_eq!(j["profiles"][0]["name"], "ci");

    env.remove_env("NO_COLOR");
    let table = on_terminal(&env, "status")?;
    let header = table
        .lines()
        .find(|l| l.starts_with("PROFILE"))
        .unwrap_or_else(|| panic!("no table: {table:?}"));
    for col in ["GRANT", "STATE", "EXPIRES IN", "SCOPES", "LAST ERROR"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.contains("api:read"), "{table:?}");
    assert!(
        table.contains("\x1b[2mlogged_out\x1b[0m"),
        "coloured state: {table:?}"
    );
    // --json on a terminal is JSON too.
    let json = on_terminal(&env, "status --json")?;
    assert!(json.trim_start().starts_with('{'), "{json:?}");

    env.set_env("NO_COLOR", "1");
    let plain = on_terminal(&env, "status")?;
    assert!(
        plain.contains("PROFILE") && plain.contains("logged_out"),
        "{plain:?}"
    );
    assert!(!plain.contains('\x1b'), "NO_COLOR is honoured: {plain:?}");
    Ok(())
}

#[test]
fn install_script_writes_a_launch_agent_on_macos() {
    // The macOS branch of install.sh, run here with a `uname` that answers Darwin; the
    // plist it writes is checked with plistlib like the template.
    let t = tempfile::tempdir().expect("tempdir");
    let fake = t.path().join("fakebin");
    fs::create_dir_all(&fake).expect("mkdir");
    fs::write(fake.join("uname"), "#!/bin/sh\necho Darwin\n").expect("write");
    fs::set_permissions(fake.join("uname"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = t.path().join("home dir");
    let tmp = t.path().join("tmp");
    fs::create_dir_all(&tmp).expect("mkdir");
    let prefix = t.path().join("prefix");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .arg("--from")
        .arg(bin_dir())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("PREFIX", &prefix)
        .output()
        .expect("install.sh runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("launchctl bootstrap"));
    let plist = home.join("Library/LaunchAgents/dev.tokctl.tokctld.plist");
    let script =
        "import json, plistlib, sys\nprint(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&plist)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "plistlib: {}", text(&o.stderr));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let uid = rustix::process::getuid().as_raw();
    let sock = tmp.join(format!("tokctl-{uid}/tokctld.sock"));
    let sock = sock.to_str().expect("utf-8");
    assert_eq!(
        p["ProgramArguments"][0],
        prefix.join("bin/tokctld").to_str().expect("utf-8")
    );
    assert_eq!(p["Sockets"]["Listeners"]["SockPathName"], sock);
    assert_eq!(p["EnvironmentVariables"]["TOKCTL_SOCKET"], sock);
    let log = home.join("Library/Logs/tokctld.log");
    assert_eq!(p["StandardErrorPath"], log.to_str().expect("utf-8"));
    assert!(
        !fs::read_to_string(&plist).expect("read").contains('@'),
        "placeholders left"
    );
    let dir = fs::metadata(tmp.join(format!("tokctl-{uid}"))).expect("socket dir made");
    assert_eq!(dir.mode() & 0o777, 0o700);
}

/// The system calls a `systemd-analyze syscall-filter` group allows, groups expanded.
fn syscall_group(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    for l in text(&o.stdout).lines().skip(1) {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('@') {
            if out.insert(l.to_owned()) {
                syscall_group(l, out);
            }
        } else {
            out.insert(l.to_owned());
        }
    }
}

/// The value of `key=` in the service unit.
fn unit_setting(key: &str) -> String {
    let unit = fs::read_to_string(repo_root().join("systemd/tokctld.service")).expect("unit");
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in tokctld.service"))
        .to_owned()
}

#[test]
fn the_daemon_stays_inside_the_units_seccomp_and_address_family_limits() -> Result<()> {
    // systemd is not PID 1 here, so the unit's sandbox cannot be applied for real; strace
    // shows every system call a working daemon makes (keychain writes over D-Bus, a token
    // from the IdP, doctor, SIGHUP, SIGTERM), and each must pass the unit's filters.
    let idp = Idp::start(IdpConfig::default())?;
    let mut env = TestEnv::new()?;
    env.set_env("TOKCTL_NO_AUTOSTART", "1");
    env.write_config(&cc_profile("ci", idp.issuer(), defaults::CC_BASIC))?;
    let trace = env.logs_dir().join("strace.log");
    let mut st = env.command("strace");
    st.args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(env.bin_path("tokctld"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut reap = Reap(vec![st
        .spawn()
        .expect("strace runs (Debian package strace)")]);
    assert!(eventually(Duration::from_secs(30), || env
        .daemon_status()
        .ok()
        .flatten()
        .is_some()));
    env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;
    let o = env.tokctl(&["get", "ci"], None)?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = env.tokctl(&["doctor"], None)?;
    assert!(o.status.success(), "{}", text(&o.stdout));
    env.signal_daemon(Sig::Hup)?;
    assert!(eventually(Duration::from_secs(10), || fs::read_to_string(
        &trace
    )
    .unwrap_or_default()
    .contains("--- SIGHUP")));
    env.signal_daemon(Sig::Term)?;
    let status = wait_exit(&mut reap.0[0], Duration::from_secs(20)).expect("strace ends");
    assert!(status.success(), "tokctld under strace: {status}");

    let mut allowed = std::collections::BTreeSet::new();
    let filter = unit_setting("SystemCallFilter");
    for group in filter.split_whitespace() {
        syscall_group(group, &mut allowed);
    }
    let families = unit_setting("RestrictAddressFamilies");
    let log = fs::read_to_string(&trace).expect("trace");
    let mut used = std::collections::BTreeSet::new();
    let mut outside = Vec::new();
    for line in log.lines() {
        let Some(call) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        used.insert(name.to_owned());
        if !allowed.contains(name) {
            outside.push(line.to_owned());
        }
        if name == "socket" {
            let family = args.split(',').next().unwrap_or("");
            assert!(families.split_whitespace().any(|f| f == family), "{line}");
        }
        // MemoryDenyWriteExecute: no writable+executable mapping, no exec added later.
        if (name == "mmap" && line.contains("PROT_WRITE") && line.contains("PROT_EXEC"))
            || (name == "mprotect" && line.contains("PROT_EXEC"))
        {
            panic!("W^X violated: {line}");
        }
    }
    assert!(used.len() > 30, "the trace is real: {used:?}");
    assert!(
        used.contains("sendmsg") || used.contains("sendto"),
        "{used:?}"
    );
    assert!(outside.is_empty(), "outside {filter}: {outside:#?}");
    println!(
        "FIGURE hardening: {} distinct system calls, all in {filter}; socket families within \
         {families}; no W+X mapping",
        used.len()
    );
    Ok(())
}

#[test]
fn under_journald_log_lines_carry_a_priority_and_no_timestamp_or_colour() -> Result<()> {
    // systemd sets JOURNAL_STREAM for a service whose output goes to the journal, which
    // adds its own timestamps.
    let mut env = TestEnv::new()?;
    env.write_config(&cc_profile("ci", "http://127.0.0.1:9/", "x"))?;
    env.set_env("JOURNAL_STREAM", "8:12345");
    env.set_env("TOKCTL_LOG", "info");
    env.spawn_daemon(&[])?;
    env.signal_daemon(Sig::Hup)?;
    assert!(eventually(Duration::from_secs(10), || env
        .daemon_log(0)
        .contains("config reloaded")));
    let log = env.daemon_log(0);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        // sd-daemon(3) priority prefixes: journald files each line at its level.
        assert!(
            l.starts_with("<6>INFO ") || l.starts_with("<4>WARN ") || l.starts_with("<3>ERROR "),
            "a plain line: {l:?}"
        );
        assert!(!l.contains('\x1b'), "no colour: {l:?}");
    }
    assert!(lines[0].starts_with("<6>INFO listening socket="), "{log}");
    // A broken config on reload is an error line, with file and line.
    env.write_config("[profile.ci\n")?;
    env.signal_daemon(Sig::Hup)?;
    assert!(eventually(Duration::from_secs(10), || env
        .daemon_log(0)
        .contains("<3>ERROR config not reloaded")));
    assert!(
        env.daemon_log(0).contains("config.toml:1:"),
        "{}",
        env.daemon_log(0)
    );
    Ok(())
}
