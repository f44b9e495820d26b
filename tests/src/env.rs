//! An isolated user environment for running tokctl: its own HOME, XDG dirs, keychain.

use crate::error::{Error, Result};
use crate::keychain::{self, Keychain};
use crate::proc::{self, Sig};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokctl_proto::StatusResponse;

/// Default time limit for [`TestEnv::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`TestEnv::spawn_daemon`] waits for the socket to answer.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh temp root with HOME, XDG_CONFIG_HOME, XDG_STATE_HOME, XDG_DATA_HOME,
/// XDG_CACHE_HOME, XDG_RUNTIME_DIR (0700) and TMPDIR, plus a private keychain.
///
/// Commands made by [`TestEnv::cmd`] and [`TestEnv::command`] see exactly this
/// environment. On drop, every `tokctld` started from it is ended by pid.
pub struct TestEnv {
    root: tempfile::TempDir,
    keychain: Keychain,
    bin_dir: PathBuf,
    // `None` removes an inherited variable.
    extra: Vec<(OsString, Option<OsString>)>,
    daemons: Mutex<Vec<Child>>,
    seen_pids: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("root", &self.root.path())
            .field("keychain", &self.keychain)
            .finish()
    }
}

/// Where cargo put the workspace binaries: the test binary runs from
/// `target/<profile>/deps/`, the binaries live in `target/<profile>/`.
/// `TOKCTL_BIN_DIR` overrides.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TOKCTL_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir
}

impl TestEnv {
    /// A new environment with a running, unlocked keychain.
    pub fn new() -> Result<TestEnv> {
        Self::build(true)
    }

    /// A new environment whose session bus has no Secret Service (the "no keychain" case).
    pub fn without_keychain() -> Result<TestEnv> {
        Self::build(false)
    }

    fn build(with_secret_service: bool) -> Result<TestEnv> {
        let root = tempfile::Builder::new()
            .prefix("tokctl-e2e")
            .tempdir()
            .map_err(|e| Error::io("creating the test root", e))?;
        for d in [
            "home", "config", "state", "data", "cache", "run", "tmp", "logs",
        ] {
            let p = root.path().join(d);
            fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        fs::set_permissions(root.path().join("run"), fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700 on XDG_RUNTIME_DIR", e))?;
        let kc_dir = root.path().join("keychain");
        let keychain = if with_secret_service {
            Keychain::start(&kc_dir)?
        } else {
            Keychain::start_bus_only(&kc_dir)?
        };
        Ok(TestEnv {
            root,
            keychain,
            bin_dir: bin_dir(),
            extra: vec![],
            daemons: Mutex::new(vec![]),
            seen_pids: Mutex::new(vec![]),
        })
    }

    /// The temp root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `$HOME`.
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    /// `$XDG_CONFIG_HOME`.
    pub fn config_home(&self) -> PathBuf {
        self.root().join("config")
    }

    /// `$XDG_STATE_HOME`.
    pub fn state_home(&self) -> PathBuf {
        self.root().join("state")
    }

    /// `$XDG_DATA_HOME`.
    pub fn data_home(&self) -> PathBuf {
        self.root().join("data")
    }

    /// `$XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.root().join("run")
    }

    /// `$TMPDIR`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root().join("tmp")
    }

    /// Where daemons started by [`TestEnv::spawn_daemon`] write stdout/stderr.
    pub fn logs_dir(&self) -> PathBuf {
        self.root().join("logs")
    }

    /// This environment's keychain.
    pub fn keychain(&self) -> &Keychain {
        &self.keychain
    }

    /// This environment's keychain, mutably (to stop its Secret Service).
    pub fn keychain_mut(&mut self) -> &mut Keychain {
        &mut self.keychain
    }

    /// `$XDG_CONFIG_HOME/tokctl/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config_home().join("tokctl").join("config.toml")
    }

    /// Writes the tokctl config file and returns its path.
    pub fn write_config(&self, toml: &str) -> Result<PathBuf> {
        let p = self.config_path();
        fs::create_dir_all(p.parent().expect("has parent"))
            .map_err(|e| Error::io("creating the config dir", e))?;
        fs::write(&p, toml).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        Ok(p)
    }

    /// The socket path the contract gives for this environment.
    pub fn socket_path(&self) -> PathBuf {
        let vars = self.envs();
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        tokctl_proto::socket_path_from(&get, rustix::process::getuid().as_raw())
    }

    /// Adds or replaces a variable in this environment (`TOKCTL_NO_AUTOSTART`, `BROWSER`…).
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        let key = key.into();
        self.extra.retain(|(k, _)| *k != key);
        self.extra.push((key, Some(value.into())));
    }

    /// Removes a variable from this environment.
    pub fn remove_env(&mut self, key: &str) {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.into(), None));
    }

    /// Exactly the variables a command of this environment gets.
    pub fn envs(&self) -> Vec<(OsString, OsString)> {
        let mut path = OsString::from(&self.bin_dir);
        path.push(":");
        path.push(keychain::system_path());
        let r = self.root();
        let mut v: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), r.join("home").into()),
            ("XDG_CONFIG_HOME".into(), r.join("config").into()),
            ("XDG_STATE_HOME".into(), r.join("state").into()),
            ("XDG_DATA_HOME".into(), r.join("data").into()),
            ("XDG_CACHE_HOME".into(), r.join("cache").into()),
            ("XDG_RUNTIME_DIR".into(), r.join("run").into()),
            ("TMPDIR".into(), r.join("tmp").into()),
            (
                "DBUS_SESSION_BUS_ADDRESS".into(),
                self.keychain.bus_address().into(),
            ),
            ("TOKCTL_LOG".into(), "debug".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("NO_COLOR".into(), "1".into()),
            // git must not read the machine's or the developer's config.
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ];
        if let Some(user) = std::env::var_os("USER") {
            v.push(("USER".into(), user));
        }
        for (k, val) in &self.extra {
            v.retain(|(n, _)| n != k);
            if let Some(val) = val {
                v.push((k.clone(), val.clone()));
            }
        }
        v
    }

    /// Path of a workspace binary (`tokctl`, `tokctld`, `git-credential-tokctl`…).
    pub fn bin_path(&self, bin: &str) -> PathBuf {
        self.bin_dir.join(bin)
    }

    /// A command for a workspace binary with exactly this environment, run in `$HOME`.
    ///
    /// # Panics
    /// When the binary is not built, with the command that builds it.
    pub fn cmd(&self, bin: &str) -> Command {
        let path = self.bin_path(bin);
        assert!(
            path.is_file(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins` \
             (or set TOKCTL_BIN_DIR)",
            path.display()
        );
        self.command(path)
    }

    /// A command for any program (git, kubectl, secret-tool…) with exactly this
    /// environment, run in `$HOME`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear().envs(self.envs()).current_dir(self.home());
        c
    }

    /// Runs `cmd` with `stdin`, killing it after [`RUN_TIMEOUT`].
    pub fn run(&self, cmd: Command, stdin: Option<&[u8]>) -> Result<Output> {
        proc::run(cmd, stdin, RUN_TIMEOUT)
    }

    /// Runs a workspace binary with `args` and no stdin.
    pub fn run_bin(&self, bin: &str, args: &[&str]) -> Result<Output> {
        let mut c = self.cmd(bin);
        c.args(args);
        self.run(c, None)
    }

    /// Runs `tokctl` with `args` and `stdin`.
    pub fn tokctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let mut c = self.cmd("tokctl");
        c.args(args);
        self.run(c, stdin)
    }

    /// Stores `client_secret` for `profile` with `tokctl secret set` (stdin, as a user
    /// would), asserting it succeeds.
    pub fn set_client_secret(&self, profile: &str, client_secret: &str) -> Result<()> {
        let o = self.tokctl(
            &["secret", "set", profile],
            Some(format!("{client_secret}\n").as_bytes()),
        )?;
        assert!(o.status.success(), "secret set: {}", text(&o.stderr));
        Ok(())
    }

    /// A new environment with a client-credentials profile `ci` (client `cc-basic` of
    /// `idp`), its secret stored, and a running daemon: the common start of helper tests.
    pub fn with_cc_profile(idp: &crate::Idp) -> Result<TestEnv> {
        use crate::idp::defaults;
        let env = TestEnv::new()?;
        env.write_config(&format!(
            "[profile.ci]\nissuer = \"{}\"\nclient_id = \"{}\"\ngrant = \"client_credentials\"\n",
            idp.issuer(),
            defaults::CC_BASIC
        ))?;
        env.spawn_daemon(&[])?;
        env.set_client_secret("ci", defaults::CC_BASIC_SECRET)?;
        Ok(env)
    }

    /// Puts `name` (`git-credential-tokctl`, `docker-credential-tokctl`) first on this
    /// environment's PATH as a link to `tokctl`, the way `scripts/install.sh` installs the
    /// helpers, so git and docker find it by that name.
    pub fn link_helper(&mut self, name: &str) -> Result<()> {
        let bin = self.tmp_dir().join("bin");
        fs::create_dir_all(&bin).map_err(|e| Error::io("creating the helper dir", e))?;
        std::os::unix::fs::symlink(self.bin_path("tokctl"), bin.join(name))
            .map_err(|e| Error::io(format!("linking {name}"), e))?;
        let path = self
            .envs()
            .into_iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let first = format!("{}:", bin.display());
        if !path.starts_with(&first) {
            self.set_env("PATH", format!("{first}{path}"));
        }
        Ok(())
    }

    /// Stores `client_secret` for `profile` (a password-grant profile) and logs it in as
    /// alice with `--password-stdin`, asserting both succeed.
    pub fn password_login(&self, profile: &str, client_secret: &str) -> Result<()> {
        self.set_client_secret(profile, client_secret)?;
        self.login_as_alice(profile, crate::idp::defaults::ALICE_PASSWORD)?;
        Ok(())
    }

    /// `tokctl login <profile> --username alice --password-stdin` with `password`,
    /// asserting it succeeds; returns its output.
    pub fn login_as_alice(&self, profile: &str, password: &str) -> Result<Output> {
        let o = self.tokctl(
            &[
                "login",
                profile,
                "--username",
                crate::idp::defaults::ALICE,
                "--password-stdin",
            ],
            Some(format!("{password}\n").as_bytes()),
        )?;
        assert!(o.status.success(), "password login: {}", text(&o.stderr));
        Ok(o)
    }

    /// The refresh token the keychain holds for `profile`, read with `secret-tool`.
    pub fn stored_refresh_token(&self, profile: &str) -> Result<Option<String>> {
        self.secret_tool_lookup(&[
            ("service", "tokctl"),
            ("username", &format!("{profile}:refresh_token")),
        ])
    }

    /// `profile`'s entry of `tokctl status --json` (`Null` when absent).
    pub fn profile_status(&self, profile: &str) -> Result<serde_json::Value> {
        let o = self.tokctl(&["status", "--json"], None)?;
        assert!(o.status.success(), "status: {}", text(&o.stderr));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status json");
        Ok(s["profiles"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == profile))
            .cloned()
            .unwrap_or(serde_json::Value::Null))
    }

    /// Stops the answering daemon with SIGTERM, waits for the process itself to go (it
    /// holds the singleton lock until then), and starts a fresh one: only the keychain is
    /// left of the old state.
    pub fn restart_daemon(&self) -> Result<()> {
        let pid = self.daemon_pid().expect("a daemon answers");
        self.signal_daemon(Sig::Term)?;
        assert!(
            proc::wait_gone(pid, Duration::from_secs(10)),
            "the daemon did not stop on SIGTERM"
        );
        self.spawn_daemon(&[])?;
        Ok(())
    }

    /// Starts `tokctld` with `args` in the foreground of this environment (stdout and
    /// stderr to `logs/tokctld.N.log`) and waits until its socket answers `/v1/status`.
    /// Returns its pid; it is ended on drop.
    pub fn spawn_daemon(&self, args: &[&str]) -> Result<u32> {
        let mut daemons = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        let log_path = self
            .logs_dir()
            .join(format!("tokctld.{}.log", daemons.len()));
        let log =
            fs::File::create(&log_path).map_err(|e| Error::io("creating the daemon log", e))?;
        let mut cmd = self.cmd("tokctld");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io("daemon log", e))?)
            .stderr(log);
        let mut child = cmd.spawn().map_err(|e| Error::io("starting tokctld", e))?;
        let pid = child.id();
        let end = Instant::now() + DAEMON_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    what: "tokctld".into(),
                    status: status.to_string(),
                    output: fs::read_to_string(&log_path).unwrap_or_default(),
                });
            }
            if let Ok(Some(_)) = self.daemon_status() {
                break;
            }
            if Instant::now() > end {
                proc::kill_child(&mut child);
                return Err(Error::Timeout {
                    what: "tokctld to answer on its socket".into(),
                    after: DAEMON_READY_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemons.push(child);
        Ok(pid)
    }

    /// The log of the `n`th daemon started by [`TestEnv::spawn_daemon`].
    pub fn daemon_log(&self, n: usize) -> String {
        fs::read_to_string(self.logs_dir().join(format!("tokctld.{n}.log"))).unwrap_or_default()
    }

    /// `GET /v1/status` over the socket; `None` when nothing answers there.
    pub fn daemon_status(&self) -> Result<Option<StatusResponse>> {
        let (status, body) = match self.socket_request("GET", "/v1/status", None) {
            Ok(r) => r,
            Err(Error::Io { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if status != 200 {
            return Err(Error::protocol("GET /v1/status", format!("HTTP {status}")));
        }
        let s: StatusResponse = serde_json::from_str(&body)
            .map_err(|e| Error::protocol("GET /v1/status", format!("bad JSON: {e}")))?;
        self.seen_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.pid);
        Ok(Some(s))
    }

    /// The pid of the daemon answering on the socket, if any.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon_status().ok().flatten().map(|s| s.pid)
    }

    /// One HTTP/1.1 request over the daemon's Unix socket; returns status and body
    /// (chunked bodies decoded). Any error reaching the socket is an [`Error::Io`].
    pub fn socket_request(
        &self,
        method: &str,
        path: &str,
        json_body: Option<&str>,
    ) -> Result<(u16, String)> {
        self.socket_request_within(method, path, json_body, Duration::from_secs(60))
    }

    fn socket_request_within(
        &self,
        method: &str,
        path: &str,
        json_body: Option<&str>,
        read_timeout: Duration,
    ) -> Result<(u16, String)> {
        let sock = self.socket_path();
        let mut s = UnixStream::connect(&sock)
            .map_err(|e| Error::io(format!("connecting to {}", sock.display()), e))?;
        s.set_read_timeout(Some(read_timeout))
            .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(10))))
            .map_err(|e| Error::io("socket timeouts", e))?;
        let body = json_body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if json_body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .map_err(|e| Error::io("writing to the socket", e))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| Error::io("reading from the socket", e))?;
        parse_http_response(&raw)
    }

    /// Every regular file under the temp root whose bytes contain `needle` (logs,
    /// config, state, keychain files…): "this secret is in no file" checks.
    pub fn files_containing(&self, needle: &str) -> Result<Vec<PathBuf>> {
        files_containing(self.root(), needle.as_bytes())
    }

    /// `secret-tool lookup` against this environment's keychain.
    pub fn secret_tool_lookup(&self, attrs: &[(&str, &str)]) -> Result<Option<String>> {
        self.keychain.secret_tool_lookup(attrs)
    }

    /// Ends every daemon started from this environment now (also done on drop).
    pub fn kill_daemons(&self) {
        let mut daemons = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        for c in daemons.iter_mut() {
            proc::terminate_child(c, Duration::from_secs(2));
        }
        daemons.clear();
        drop(daemons);
        let mut pids: Vec<u32> = self
            .seen_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        // Short: a stopped (SIGSTOP) daemon accepts the connection but never answers.
        if let Ok((200, body)) =
            self.socket_request_within("GET", "/v1/status", None, Duration::from_secs(2))
        {
            if let Ok(s) = serde_json::from_str::<StatusResponse>(&body) {
                pids.push(s.pid);
            }
        }
        // A daemon the client autostarted that never answered (hung, or died before
        // binding) is found by its environment: our unique runtime dir.
        pids.extend(self.daemons_by_environment());
        pids.sort_unstable();
        pids.dedup();
        let me = std::process::id();
        for pid in pids.into_iter().filter(|p| *p != me) {
            if self.is_ours(pid) {
                proc::terminate_pid(pid, Duration::from_secs(2));
            }
        }
    }

    /// Pids of running `tokctld` processes whose environment is this one.
    pub fn daemons_by_environment(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim() == "tokctld")
                    .unwrap_or(false)
                    && self.is_ours(*pid)
            })
            .collect()
    }

    /// True when `pid` runs with this environment's XDG_RUNTIME_DIR.
    fn is_ours(&self, pid: u32) -> bool {
        let mut marker = b"XDG_RUNTIME_DIR=".to_vec();
        marker.extend_from_slice(self.runtime_dir().as_os_str().as_encoded_bytes());
        fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_slice()))
            .unwrap_or(false)
    }

    /// Sends `sig` to the daemon answering on the socket (SIGSTOP to simulate a hang or a
    /// suspend, SIGHUP to reload…).
    pub fn signal_daemon(&self, sig: Sig) -> Result<()> {
        let pid = self
            .daemon_pid()
            .ok_or_else(|| Error::Setup("no daemon answers on the socket".into()))?;
        proc::signal(pid, sig)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_daemons();
    }
}

fn files_containing(root: &Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", e))?;
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // A file can vanish between listing and reading (a daemon's temp file).
                if let Ok(bytes) = fs::read(&path) {
                    if contains(&bytes, needle) {
                        out.push(path);
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::protocol("socket response", "no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::protocol("socket response", "bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::protocol("socket response", "bad chunked encoding");
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A command's output as trimmed text (lossy UTF-8), for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_http_response(plain).unwrap(), (200, "{}".into()));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), (401, "abcde".into()));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn bin_dir_is_the_profile_dir() {
        // Test binaries run from target/<profile>/deps; binaries live one level up.
        let d = bin_dir();
        assert_ne!(d.file_name(), Some(OsStr::new("deps")));
        assert!(d.join("deps").is_dir(), "{} has no deps/", d.display());
    }
}
