//! The listening socket: a private directory, a singleton lock, stale-socket recovery, a
//! socket inherited from systemd or launchd, and a listener that drops connections from
//! other users before reading a byte.

use axum::serve::Listener;
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// Why the daemon could not take its socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another tokctld holds the lock for this socket (its pid, when it wrote one).
    #[error("tokctld is already running on {}{}; not starting a second one", .0.display(), pid_note(*.1))]
    AlreadyRunning(PathBuf, Option<u32>),
    /// The directory or path is unsafe; the message says how to fix it.
    #[error("{0}")]
    Unsafe(String),
    /// An operating system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the listening socket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// tokctld bound it itself, and removes it on exit.
    Bound,
    /// Passed by systemd socket activation (`LISTEN_FDS`); the socket unit owns the file.
    Systemd,
    /// Passed by launchd (the LaunchAgent's `Sockets`); launchd owns the file.
    #[cfg_attr(not(target_os = "macos"), allow(dead_code))]
    Launchd,
}

impl Origin {
    /// A word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Bound => "bound",
            Origin::Systemd => "systemd",
            Origin::Launchd => "launchd",
        }
    }
}

/// The bound socket with its lock; dropping it releases the lock.
pub struct BoundSocket {
    /// The listening socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The path it is bound to.
    pub path: PathBuf,
    /// Who created it.
    pub origin: Origin,
    /// Device and inode of the socket we created, so shutdown removes only our own. `None`
    /// for an inherited socket: the service manager keeps it for the next activation.
    ident: Option<(u64, u64)>,
    _lock: OwnedFd,
}

impl BoundSocket {
    /// Removes the socket file if it is still the one this process created.
    pub fn remove(&self) {
        let Some(ident) = self.ident else { return };
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == ident {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Checks (or creates, 0700) the socket's directory: it must be a real directory owned by
/// `uid` with no group or other permissions.
pub fn prepare_dir(dir: &Path, uid: u32) -> Result<(), SocketError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {
                    // Make the mode exact even if an odd umask removed owner bits.
                    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                        .map_err(io_err("cannot chmod socket directory", dir))?;
                }
                // Another daemon starting at the same moment made it first; whatever is
                // there now must pass the same checks as a directory found at the start.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("cannot create socket directory", dir)(e)),
            }
            check_dir(dir, uid)
        }
        Err(e) => Err(io_err("cannot inspect socket directory", dir)(e)),
        Ok(_) => check_dir(dir, uid),
    }
}

fn check_dir(dir: &Path, uid: u32) -> Result<(), SocketError> {
    let m = fs::symlink_metadata(dir).map_err(io_err("cannot inspect socket directory", dir))?;
    let d = dir.display();
    if m.file_type().is_symlink() {
        return Err(SocketError::Unsafe(format!(
            "socket directory {d} is a symlink; refusing to use it (remove it and let tokctld create the directory)"
        )));
    }
    if !m.is_dir() {
        return Err(SocketError::Unsafe(format!(
            "socket directory {d} is not a directory"
        )));
    }
    if m.uid() != uid {
        return Err(SocketError::Unsafe(format!(
            "socket directory {d} is owned by uid {}, not by you (uid {uid}); remove it or set TOKCTL_SOCKET",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(SocketError::Unsafe(format!(
            "socket directory {d} is accessible by other users (mode {:o}); run `chmod 700 {d}`",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Takes the singleton lock next to the socket and writes our pid into it (for the
/// message a second daemon prints). `AlreadyRunning` when another daemon has it.
pub fn lock(socket: &Path) -> Result<OwnedFd, SocketError> {
    let lock_path = socket.with_extension("lock");
    let fd = rustix::fs::open(
        &lock_path,
        OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("cannot open lock file", &lock_path)(e.into()))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            // Only the holder writes, so readers see a whole pid or an empty file.
            let _ = rustix::fs::ftruncate(&fd, 0);
            let _ = rustix::io::pwrite(&fd, std::process::id().to_string().as_bytes(), 0);
            Ok(fd)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SocketError::AlreadyRunning(
            socket.to_path_buf(),
            holder_pid(&fd),
        )),
        Err(e) => Err(io_err("cannot lock", &lock_path)(e.into())),
    }
}

/// The pid the lock's holder wrote. A daemon that has just won the lock writes it a moment
/// later, and until then the file is empty or still names the previous (dead) holder, so
/// wait briefly for a live pid rather than print none or a stale one.
fn holder_pid(fd: &OwnedFd) -> Option<u32> {
    let read = || {
        let mut buf = [0u8; 16];
        let n = rustix::io::pread(fd, &mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    let alive = |pid: u32| {
        rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| {
            !matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            )
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
    loop {
        let pid = read();
        if pid.is_some_and(alive) || std::time::Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Prepares the directory, takes the lock, clears a stale socket of ours and binds a new
/// socket with mode 0600.
pub fn bind(path: &Path, uid: u32) -> Result<BoundSocket, SocketError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            SocketError::Unsafe(format!("socket path {} has no directory", path.display()))
        })?;
    prepare_dir(dir, uid)?;
    let lock = lock(path)?;
    remove_stale(path, uid)?;
    // The umask is process-wide, but nothing else creates files this early in start-up.
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(io_err("cannot bind socket", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod socket", path))?;
    let m = fs::symlink_metadata(path).map_err(io_err("cannot inspect socket", path))?;
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        origin: Origin::Bound,
        ident: Some((m.dev(), m.ino())),
        _lock: lock,
    })
}

/// Takes over a listening socket passed by a service manager: same directory rules and
/// singleton lock as [`bind`], the file tightened to 0600, and left in place on exit.
/// `expected` is the path clients use; a different one is logged, not refused.
pub fn adopt(
    listener: std::os::unix::net::UnixListener,
    origin: Origin,
    expected: &Path,
    uid: u32,
) -> Result<BoundSocket, SocketError> {
    let actual = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let Some(path) = actual else {
        return Err(SocketError::Unsafe(format!(
            "the socket passed by {} is not bound to a path; use a ListenStream path such as %t/tokctl/tokctld.sock",
            origin.as_str()
        )));
    };
    if path != expected {
        tracing::warn!(
            "the {} socket is {}, but clients look for {}; set TOKCTL_SOCKET to the same path for both",
            origin.as_str(),
            path.display(),
            expected.display()
        );
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_dir(dir, uid)?;
    }
    let lock = lock(&path)?;
    let m = fs::symlink_metadata(&path).map_err(io_err("cannot inspect socket", &path))?;
    if m.uid() == uid && m.mode() & 0o077 != 0 {
        // systemd-socket-activate and a SocketMode-less unit create it by the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot chmod socket", &path))?;
    }
    Ok(BoundSocket {
        listener,
        path,
        origin,
        ident: None,
        _lock: lock,
    })
}

/// The listening socket a service manager passed to this process, if any: systemd's
/// `LISTEN_FDS` protocol on Linux, `launch_activate_socket` on macOS.
///
/// Call it first thing in `main`, before any thread starts: it removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment, so no child (a browser, a
/// helper) mistakes our descriptors for its own.
pub fn inherited() -> Result<Option<(std::os::unix::net::UnixListener, Origin)>, SocketError> {
    #[cfg(target_os = "macos")]
    if let Some(l) = launchd::listener()? {
        return Ok(Some((l, Origin::Launchd)));
    }
    Ok(systemd_listener()?.map(|l| (l, Origin::Systemd)))
}

/// The first descriptor of the `LISTEN_FDS` protocol (sd_listen_fds(3)).
const LISTEN_FDS_START: i32 = 3;

fn systemd_listener() -> Result<Option<std::os::unix::net::UnixListener>, SocketError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // Meant for another process (we were started by one that got them): not ours to take.
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let bad = |m: String| SocketError::Unsafe(format!("socket activation: {m}"));
    match fds.trim().parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        Ok(n) => {
            return Err(bad(format!(
                "{n} sockets passed; tokctld.socket must have exactly one ListenStream"
            )))
        }
        Err(_) => return Err(bad(format!("LISTEN_FDS={fds:?} is not a number"))),
    }
    let fd = take_listen_fd().ok_or_else(|| {
        bad(format!(
            "LISTEN_FDS=1 but descriptor {LISTEN_FDS_START} is not an open socket"
        ))
    })?;
    listener_from_fd(fd).map(Some)
}

/// Checks that a passed descriptor is a listening Unix stream socket and makes it ours
/// (close-on-exec, so a browser we start does not keep it open).
fn listener_from_fd(fd: OwnedFd) -> Result<std::os::unix::net::UnixListener, SocketError> {
    use rustix::net::{sockopt, SocketAddrAny, SocketType};
    let bad = |m: &str| SocketError::Unsafe(format!("socket activation: {m}"));
    if sockopt::get_socket_type(&fd).ok() != Some(SocketType::STREAM) {
        return Err(bad(
            "the passed descriptor is not a stream socket (use ListenStream=)",
        ));
    }
    if !matches!(rustix::net::getsockname(&fd), Ok(SocketAddrAny::Unix(_))) {
        return Err(bad(
            "the passed socket is not a Unix socket; tokctld only listens on a path",
        ));
    }
    // macOS declares SO_ACCEPTCONN but does not implement it; launchd sockets listen.
    #[cfg(not(target_os = "macos"))]
    if !sockopt::get_socket_acceptconn(&fd).unwrap_or(false) {
        return Err(bad("the passed socket is not listening"));
    }
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| bad(&format!("cannot set close-on-exec: {e}")))?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Takes ownership of descriptor 3, once, after checking it is an open socket.
#[allow(unsafe_code)]
fn take_listen_fd() -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    // /proc tells without touching the descriptor whether it is open and a socket.
    #[cfg(target_os = "linux")]
    {
        let target = fs::read_link(format!("/proc/self/fd/{LISTEN_FDS_START}")).ok()?;
        if !target.to_string_lossy().starts_with("socket:") {
            return None;
        }
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: LISTEN_PID names this process, so the service manager passed descriptor 3
    // to it and nothing in this process has opened or owns it (std opens nothing at 3
    // before main, and this runs before any other code opens files); TAKEN makes sure it
    // is adopted at most once.
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) })
}

#[cfg(target_os = "macos")]
mod launchd {
    //! launch_activate_socket(3): the sockets of the LaunchAgent's `Sockets` dictionary.
    #![allow(unsafe_code)]

    use super::{listener_from_fd, SocketError};
    use std::os::fd::{FromRawFd, OwnedFd};

    /// The key of the `Sockets` entry in launchd/dev.tokctl.tokctld.plist.
    const SOCKET_NAME: &std::ffi::CStr = c"Listeners";

    extern "C" {
        fn launch_activate_socket(
            name: *const libc::c_char,
            fds: *mut *mut libc::c_int,
            cnt: *mut libc::size_t,
        ) -> libc::c_int;
    }

    /// The first listening socket launchd holds for us; `None` when not started by launchd.
    pub fn listener() -> Result<Option<std::os::unix::net::UnixListener>, SocketError> {
        let mut fds: *mut libc::c_int = std::ptr::null_mut();
        let mut cnt: libc::size_t = 0;
        // SAFETY: the name is a NUL-terminated string and both out-pointers are valid.
        let rc = unsafe { launch_activate_socket(SOCKET_NAME.as_ptr(), &mut fds, &mut cnt) };
        if rc == libc::ESRCH || rc == libc::ENOENT {
            // Not managed by launchd, or the plist has no such socket: bind our own.
            return Ok(None);
        }
        if rc != 0 {
            return Err(SocketError::Unsafe(format!(
                "launch_activate_socket: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        // SAFETY: on success launchd returns `cnt` descriptors in a malloc'd array that
        // the caller owns and frees; each descriptor is ours to close.
        let owned: Vec<OwnedFd> = unsafe {
            let v = std::slice::from_raw_parts(fds, cnt)
                .iter()
                .map(|fd| OwnedFd::from_raw_fd(*fd))
                .collect();
            libc::free(fds.cast());
            v
        };
        // Extra descriptors (an IPv6 twin of a TCP entry, say) are closed on drop.
        match owned.into_iter().next() {
            Some(fd) => listener_from_fd(fd).map(Some),
            None => Ok(None),
        }
    }
}

/// With the lock held: a socket of ours that refuses connections is stale and removed;
/// anything else at the path is left alone and reported.
fn remove_stale(path: &Path, uid: u32) -> Result<(), SocketError> {
    let m = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot inspect socket", path)(e)),
        Ok(m) => m,
    };
    let p = path.display();
    if !m.file_type().is_socket() {
        return Err(SocketError::Unsafe(format!(
            "{p} exists and is not a socket; refusing to replace it (move it away or set TOKCTL_SOCKET)"
        )));
    }
    if m.uid() != uid {
        return Err(SocketError::Unsafe(format!(
            "socket {p} belongs to uid {}; refusing to replace it",
            m.uid()
        )));
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(SocketError::Unsafe(format!(
            "another server answers on {p} without holding the lock; stop it first"
        ))),
        Err(_) => fs::remove_file(path).map_err(io_err("cannot remove stale socket", path)),
    }
}

/// A listener that hands out only connections from the daemon's own uid; others are
/// closed before anything is read or written.
pub struct PeerCheckedListener {
    inner: UnixListener,
    uid: u32,
}

impl PeerCheckedListener {
    /// Wraps a listening socket.
    pub fn new(inner: UnixListener, uid: u32) -> Self {
        PeerCheckedListener { inner, uid }
    }
}

impl Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.uid => return (stream, addr),
                    Ok(cred) => {
                        tracing::warn!(peer_uid = cred.uid(), peer_pid = ?cred.pid(), "peer uid {} rejected", cred.uid());
                    }
                    Err(e) => {
                        tracing::warn!("cannot read peer credentials, connection closed: {e}")
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        rustix::process::getuid().as_raw()
    }

    #[test]
    fn creates_private_dir_and_socket_even_with_umask_000() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("tokctl").join("tokctld.sock");
        let old = rustix::process::umask(Mode::empty());
        let b = bind(&sock, uid());
        rustix::process::umask(old);
        let b = b.unwrap();
        let dm = fs::metadata(t.path().join("tokctl")).unwrap().mode() & 0o7777;
        let sm = fs::symlink_metadata(&sock).unwrap().mode() & 0o7777;
        assert_eq!(dm, 0o700);
        assert_eq!(sm, 0o600);
        // A second daemon on the same socket loses the lock and leaves the socket alone.
        assert!(matches!(
            bind(&sock, uid()),
            Err(SocketError::AlreadyRunning(_, Some(p))) if p == std::process::id()
        ));
        assert!(sock.exists());
        b.remove();
        assert!(!sock.exists());
    }

    #[test]
    fn daemons_racing_to_create_the_directory_all_get_it() {
        // Threads released together stand in for daemons started at once; without the
        // AlreadyExists arm the first round already failed here.
        const THREADS: usize = 6;
        let t = tempfile::tempdir().unwrap();
        for round in 0..50 {
            let dir = t.path().join(format!("r{round}"));
            let gate = std::sync::Barrier::new(THREADS);
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            gate.wait();
                            prepare_dir(&dir, uid())
                        })
                    })
                    .collect();
                for h in hs {
                    let r = h.join().unwrap();
                    assert!(r.is_ok(), "round {round}: {}", r.unwrap_err());
                }
            });
            assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn a_loser_waits_for_the_winners_pid_instead_of_printing_none_or_a_dead_one() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("s.sock");
        let lock_path = sock.with_extension("lock");
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        // The state a loser can meet: the lock taken, the file still naming the last holder.
        fs::write(&lock_path, dead_pid.to_string()).unwrap();
        let winner = fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
        rustix::fs::flock(&winner, FlockOperation::NonBlockingLockExclusive).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(60));
            rustix::fs::ftruncate(&winner, 0).unwrap();
            rustix::io::pwrite(&winner, std::process::id().to_string().as_bytes(), 0).unwrap();
            winner
        });
        let r = lock(&sock);
        let _winner = writer.join().unwrap();
        assert!(
            matches!(r, Err(SocketError::AlreadyRunning(_, Some(p))) if p == std::process::id()),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn refuses_open_foreign_or_symlinked_dirs() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let e = bind(&open.join("s.sock"), uid()).err().unwrap().to_string();
        assert!(e.contains("chmod 700"), "{e}");

        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = bind(&link.join("s.sock"), uid()).err().unwrap().to_string();
        assert!(e.contains("symlink"), "{e}");

        let e = bind(&real.join("s.sock"), uid() + 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not by you"), "{e}");
    }

    #[test]
    fn listen_fds_for_another_process_are_ignored_and_never_passed_on() {
        // Only this test touches LISTEN_*; the pid is never ours.
        std::env::set_var("LISTEN_PID", "1");
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDNAMES", "x");
        assert!(systemd_listener().unwrap().is_none());
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(v).is_none(), "{v} still set");
        }
        // Ours, but not a socket at fd 3: a clear error rather than adopting a stray fd.
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "2");
        let e = systemd_listener().unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn an_adopted_socket_is_tightened_locked_and_left_in_place() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        prepare_dir(&dir, uid()).unwrap();
        let sock = dir.join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
        let b = adopt(l, Origin::Systemd, &sock, uid()).unwrap();
        assert_eq!(fs::symlink_metadata(&sock).unwrap().mode() & 0o777, 0o600);
        assert!(matches!(
            bind(&sock, uid()),
            Err(SocketError::AlreadyRunning(..))
        ));
        b.remove();
        assert!(sock.exists(), "the service manager's socket stays");
    }

    #[test]
    fn replaces_only_a_stale_socket_of_its_own() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        let sock = dir.join("s.sock");
        prepare_dir(&dir, uid()).unwrap();
        // A stale socket: bound, then the listener dropped without unlinking.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let b = bind(&sock, uid()).unwrap();
        drop(b);
        // A regular file at the path is never replaced.
        fs::remove_file(&sock).ok();
        fs::write(&sock, "keep").unwrap();
        let e = bind(&sock, uid()).err().unwrap().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(fs::read_to_string(&sock).unwrap(), "keep");
        // A live socket without the lock (e.g. another program) is not stolen.
        fs::remove_file(&sock).unwrap();
        let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = bind(&sock, uid()).err().unwrap().to_string();
        assert!(e.contains("another server"), "{e}");
    }
}
