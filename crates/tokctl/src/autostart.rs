//! Connecting to the socket, and starting `tokctld` when nothing listens (like sccache).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokctl_proto::{printable, ApiError, ErrorCode};
use tokio::net::UnixStream;

/// The daemon's program name, looked up next to this executable and then on `PATH`.
const DAEMON: &str = "tokctld";

/// How long a started daemon gets to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between connection attempts while the daemon starts.
const RETRY_INTERVAL: Duration = Duration::from_millis(15);

/// Connects to `path`; when nothing listens there, starts the daemon (unless
/// `TOKCTL_NO_AUTOSTART=1`) and retries until it answers.
pub async fn connect(path: &Path) -> Result<UnixStream, ApiError> {
    match try_connect(path).await? {
        Some(s) => return Ok(s),
        None if autostart_disabled() => {
            return Err(unreachable(format!(
                "tokctld is not running (nothing listens on {}) and TOKCTL_NO_AUTOSTART=1; \
                 start tokctld or its service",
                shown(path)
            )))
        }
        None => {}
    }
    let mut daemon = Spawned::start()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        tokio::time::sleep(RETRY_INTERVAL).await;
        if let Some(s) = try_connect(path).await? {
            return Ok(s);
        }
        // A daemon that exits 0 lost the start race to another one: keep trying to connect.
        daemon.check()?;
        if Instant::now() >= deadline {
            return Err(unreachable(format!(
                "started tokctld, but nothing listens on {} after {}s{}",
                shown(path),
                START_TIMEOUT.as_secs(),
                daemon.log_hint()
            )));
        }
    }
}

/// One attempt: `Ok(None)` when no daemon listens (no socket file, or a stale one).
async fn try_connect(path: &Path) -> Result<Option<UnixStream>, ApiError> {
    match UnixStream::connect(path).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(unreachable(format!(
            "cannot connect to tokctld at {}: {e}",
            shown(path)
        ))),
    }
}

fn autostart_disabled() -> bool {
    std::env::var_os("TOKCTL_NO_AUTOSTART").is_some_and(|v| v == "1")
}

fn unreachable(message: String) -> ApiError {
    ApiError::new(ErrorCode::DaemonUnreachable, message)
}

fn shown(path: &Path) -> String {
    printable(&path.to_string_lossy(), 200)
}

/// A daemon this client started, and where its stderr goes.
struct Spawned {
    child: Child,
    /// The log file and its length before the daemon started, so only its own lines are read.
    log: Option<(PathBuf, u64)>,
}

impl Spawned {
    /// Starts the daemon detached: own process group, no terminal I/O, stderr to the log.
    fn start() -> Result<Self, ApiError> {
        let program = daemon_program();
        let (stderr, log) = match open_log() {
            Some((file, path, len)) => (Stdio::from(file), Some((path, len))),
            None => (Stdio::null(), None),
        };
        let mut cmd = Command::new(&program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: Ctrl-C in this terminal must not stop the daemon.
            .process_group(0)
            // Do not keep the caller's directory busy for the daemon's lifetime.
            .current_dir("/");
        for var in ["TOKCTL_SOCKET", "TOKCTL_CONFIG"] {
            if let Some(abs) = absolute_env(var) {
                cmd.env(var, abs);
            }
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                unreachable(format!(
                    "tokctld is not running and cannot be started: no `{DAEMON}` next to tokctl \
                     or on PATH"
                ))
            } else {
                unreachable(format!("cannot start {}: {e}", shown(&program)))
            }
        })?;
        Ok(Spawned { child, log })
    }

    /// Fails when the daemon already exited with an error.
    fn check(&mut self) -> Result<(), ApiError> {
        let status = match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => status,
            _ => return Ok(()),
        };
        let line = self.log.as_ref().and_then(|(p, from)| last_line(p, *from));
        Err(unreachable(match line {
            Some(line) => format!("tokctld exited: {line}"),
            None => format!("tokctld exited ({status}){}", self.log_hint()),
        }))
    }

    /// Where to look for the daemon's own explanation.
    fn log_hint(&self) -> String {
        match &self.log {
            Some((p, _)) => format!("; see {}", shown(p)),
            None => String::new(),
        }
    }
}

/// `tokctld` next to the running executable when it exists there, else a `PATH` lookup.
fn daemon_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(DAEMON)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(DAEMON))
}

/// Opens `$XDG_STATE_HOME/tokctl/tokctld.log` for appending (private, created if needed).
fn open_log() -> Option<(File, PathBuf, u64)> {
    let dir = tokctl_proto::state_dir()?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    let path = dir.join("tokctld.log");
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    let len = file.metadata().ok()?.len();
    Some((file, path, len))
}

/// The value of `var` made absolute, when it is set and relative (the daemon runs in `/`).
fn absolute_env(var: &str) -> Option<PathBuf> {
    let v = PathBuf::from(std::env::var_os(var).filter(|v| !v.is_empty())?);
    if v.is_absolute() {
        return None;
    }
    std::path::absolute(v).ok()
}

/// The last non-empty line written to the log after byte `from`, made safe to print.
fn last_line(path: &Path, from: u64) -> Option<String> {
    // The last line is all that is shown, so the tail is enough even for a chatty daemon.
    const TAIL: u64 = 4096;
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = from.max(len.saturating_sub(TAIL));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| printable(l, 300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn last_line_reads_only_what_the_new_daemon_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "old run failed\n").unwrap();
        let from = std::fs::metadata(&p).unwrap().len();
        assert_eq!(last_line(&p, from), None);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"starting\nerror: bad config \x1b[31mline 3\n\n")
            .unwrap();
        assert_eq!(
            last_line(&p, from).as_deref(),
            Some("error: bad config \\u{1b}[31mline 3")
        );
        assert_eq!(last_line(&dir.path().join("missing"), 0), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_and_stale_sockets_count_as_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(try_connect(&missing).await.unwrap().is_none());
        // A socket file whose listener is gone (a crashed daemon) refuses connections.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(try_connect(&stale).await.unwrap().is_none());
        // A path the daemon could never create is a real error, not a reason to start one.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = try_connect(&file.join("x.sock")).await.unwrap_err();
        assert_eq!(e.error, ErrorCode::DaemonUnreachable);
    }
}
