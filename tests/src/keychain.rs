//! A private Secret Service: its own D-Bus session bus and gnome-keyring, per test.

use crate::error::{Error, Result};
use crate::proc::{self, Sig};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The keyring password; the keyring files live in a throwaway directory.
const KEYRING_PASSWORD: &str = "pw";
/// How long a fixture may take to come up before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The well-known bus name of the Secret Service.
const SECRETS_NAME: &str = "org.freedesktop.secrets";

/// A private session bus with (normally) gnome-keyring serving `org.freedesktop.secrets`,
/// unlocked, with a fresh `login` collection. Both processes are killed on drop.
pub struct Keychain {
    dir: PathBuf,
    bus_address: String,
    bus: Child,
    keyring: Option<Child>,
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("dir", &self.dir)
            .field("bus_address", &self.bus_address)
            .field("bus_pid", &self.bus.id())
            .field("keyring_pid", &self.keyring.as_ref().map(Child::id))
            .finish()
    }
}

impl Keychain {
    /// Starts a bus and an unlocked gnome-keyring under `dir` (created if missing) and waits
    /// until the Secret Service name has an owner.
    pub fn start(dir: &Path) -> Result<Keychain> {
        let mut kc = Self::start_bus_only(dir)?;
        kc.start_keyring()?;
        Ok(kc)
    }

    /// Starts only the session bus: Secret Service clients then fail fast with
    /// "ServiceUnknown", the "no keychain" case. Nothing is auto-activated on this bus.
    pub fn start_bus_only(dir: &Path) -> Result<Keychain> {
        for sub in ["", "data", "config", "cache", "home"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format!("creating {}", dir.join(sub).display()), e))?;
        }
        let run = dir.join("run");
        fs::create_dir_all(&run).map_err(|e| Error::io("creating the keychain runtime dir", e))?;
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700 on the keychain runtime dir", e))?;

        let socket = dir.join("bus");
        // Our own config: no service directories, so no daemon is ever auto-activated.
        let conf = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        let conf_path = dir.join("bus.conf");
        fs::write(&conf_path, conf).map_err(|e| Error::io("writing bus.conf", e))?;
        let log = log_file(dir, "dbus-daemon.log")?;
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf_path.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .env_clear()
            .env("PATH", system_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| missing_tool(e, "dbus-daemon", "dbus"))?;
        let rx = proc::first_line_then(bus.stdout.take().expect("piped"), |_| {});
        let bus_address = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(a) if !a.is_empty() => a,
            _ => {
                let status = format!("{:?}", bus.try_wait());
                proc::kill_child(&mut bus);
                return Err(Error::Exited {
                    what: "dbus-daemon".into(),
                    status,
                    output: fs::read_to_string(dir.join("dbus-daemon.log")).unwrap_or_default(),
                });
            }
        };
        Ok(Keychain {
            dir: dir.to_path_buf(),
            bus_address,
            bus,
            keyring: None,
        })
    }

    fn start_keyring(&mut self) -> Result<()> {
        let log = log_file(&self.dir, "gnome-keyring.log")?;
        let mut child = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env_clear()
            .envs(self.env())
            .env("HOME", self.dir.join("home"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| Error::io("log file", e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| missing_tool(e, "gnome-keyring-daemon", "gnome-keyring"))?;
        {
            use std::io::Write;
            // --unlock reads the password up to EOF; dropping the handle closes stdin.
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(KEYRING_PASSWORD.as_bytes())
                .map_err(|e| Error::io("writing the keyring password", e))?;
        }
        self.keyring = Some(child);
        self.wait_for_secrets()
    }

    fn wait_for_secrets(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.name_has_owner(SECRETS_NAME)? {
                return Ok(());
            }
            if let Some(k) = self.keyring.as_mut() {
                if let Ok(Some(status)) = k.try_wait() {
                    return Err(Error::Exited {
                        what: "gnome-keyring-daemon".into(),
                        status: status.to_string(),
                        output: fs::read_to_string(self.dir.join("gnome-keyring.log"))
                            .unwrap_or_default(),
                    });
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("{SECRETS_NAME} to appear on the private bus"),
                    after: READY_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the bus whether `name` has an owner.
    pub fn name_has_owner(&self, name: &str) -> Result<bool> {
        let mut cmd = self.command("dbus-send");
        cmd.arg(format!("--bus={}", self.bus_address)).args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &format!("string:{name}"),
        ]);
        let out = proc::run(cmd, None, Duration::from_secs(10))?;
        if !out.status.success() {
            return Err(Error::protocol(
                "dbus-send NameHasOwner",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).contains("boolean true"))
    }

    /// The address for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// The directory holding the bus socket, keyring files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of gnome-keyring-daemon, if it runs.
    pub fn secret_service_pid(&self) -> Option<u32> {
        self.keyring.as_ref().map(Child::id)
    }

    /// Freezes the Secret Service (SIGSTOP): calls to it hang, the dangerous case.
    pub fn pause_secret_service(&self) -> Result<()> {
        self.signal_keyring(Sig::Stop)
    }

    /// Lets a paused Secret Service run again (SIGCONT).
    pub fn resume_secret_service(&self) -> Result<()> {
        self.signal_keyring(Sig::Cont)
    }

    /// Kills the Secret Service; the bus stays, so clients get "ServiceUnknown".
    pub fn stop_secret_service(&mut self) -> Result<()> {
        if let Some(mut k) = self.keyring.take() {
            proc::kill_child(&mut k);
        }
        let end = Instant::now() + READY_TIMEOUT;
        while self.name_has_owner(SECRETS_NAME)? {
            if Instant::now() > end {
                return Err(Error::Timeout {
                    what: format!("{SECRETS_NAME} to leave the bus"),
                    after: READY_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Locks the `login` collection: reads then fail with "NoStorageAccess" (no prompt
    /// can be shown here).
    pub fn lock(&self) -> Result<()> {
        let mut cmd = self.command("secret-tool");
        cmd.args([
            "lock",
            "--collection=/org/freedesktop/secrets/collection/login",
        ]);
        let out = proc::run(cmd, None, Duration::from_secs(20))?;
        check_secret_tool("lock", &out)
    }

    fn signal_keyring(&self, sig: Sig) -> Result<()> {
        let pid = self
            .secret_service_pid()
            .ok_or_else(|| Error::Setup("no Secret Service is running in this keychain".into()))?;
        proc::signal(pid, sig)
    }

    /// Stores `secret` with `attrs` through `secret-tool store` (secret passed on stdin).
    pub fn secret_tool_store(
        &self,
        label: &str,
        attrs: &[(&str, &str)],
        secret: &str,
    ) -> Result<()> {
        let mut cmd = self.command("secret-tool");
        cmd.arg("store").arg(format!("--label={label}"));
        push_attrs(&mut cmd, attrs);
        let out = proc::run(cmd, Some(secret.as_bytes()), Duration::from_secs(20))?;
        check_secret_tool("store", &out)
    }

    /// Looks up the secret with `attrs` through `secret-tool lookup`; `None` if no item.
    pub fn secret_tool_lookup(&self, attrs: &[(&str, &str)]) -> Result<Option<String>> {
        let mut cmd = self.command("secret-tool");
        cmd.arg("lookup");
        push_attrs(&mut cmd, attrs);
        let out = proc::run(cmd, None, Duration::from_secs(20))?;
        // secret-tool exits 1 with empty output when nothing matches.
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        if out.stdout.is_empty() && out.stderr.is_empty() {
            return Ok(None);
        }
        check_secret_tool("lookup", &out).map(|()| None)
    }

    /// Deletes every item matching `attrs` through `secret-tool clear`.
    pub fn secret_tool_clear(&self, attrs: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.command("secret-tool");
        cmd.arg("clear");
        push_attrs(&mut cmd, attrs);
        let out = proc::run(cmd, None, Duration::from_secs(20))?;
        // clear exits 1 when nothing matched, which is fine here.
        if out.status.success() || out.stderr.is_empty() {
            Ok(())
        } else {
            check_secret_tool("clear", &out)
        }
    }

    /// The environment a Secret Service client needs to reach this keychain.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), system_path()),
            (
                "DBUS_SESSION_BUS_ADDRESS".into(),
                self.bus_address.clone().into(),
            ),
            ("XDG_DATA_HOME".into(), self.dir.join("data").into()),
            ("XDG_RUNTIME_DIR".into(), self.dir.join("run").into()),
        ]
    }

    /// A command with exactly [`Keychain::env`] as its environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .envs(self.env())
            .env("HOME", self.dir.join("home"));
        c
    }
}

impl Drop for Keychain {
    fn drop(&mut self) {
        if let Some(mut k) = self.keyring.take() {
            proc::kill_child(&mut k);
        }
        proc::kill_child(&mut self.bus);
    }
}

fn push_attrs(cmd: &mut Command, attrs: &[(&str, &str)]) {
    for (k, v) in attrs {
        cmd.arg(k).arg(v);
    }
}

fn check_secret_tool(what: &str, out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::protocol(
            format!("secret-tool {what}"),
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File> {
    fs::File::create(dir.join(name)).map_err(|e| Error::io(format!("creating {name}"), e))
}

/// PATH for helper processes: the caller's, else the usual system one.
pub(crate) fn system_path() -> OsString {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

pub(crate) fn missing_tool(e: std::io::Error, program: &str, package: &str) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::Setup(format!(
            "`{program}` not found: install the Debian package `{package}` (see .ci/run)"
        ))
    } else {
        Error::io(format!("starting {program}"), e)
    }
}
