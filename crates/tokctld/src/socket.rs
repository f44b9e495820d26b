//! The listening socket: a private directory, a singleton lock, stale-socket recovery, and
//! a listener that drops connections from other users before reading a byte.

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
    /// Another tokctld holds the lock for this socket.
    #[error("tokctld is already running on {0}")]
    AlreadyRunning(PathBuf),
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

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The bound socket with its lock; dropping it releases the lock.
pub struct BoundSocket {
    /// The listening socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The path it is bound to.
    pub path: PathBuf,
    /// Device and inode of the socket we created, so shutdown removes only our own.
    ident: (u64, u64),
    _lock: OwnedFd,
}

impl BoundSocket {
    /// Removes the socket file if it is still the one this process created.
    pub fn remove(&self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
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
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err("cannot create socket directory", dir))?;
            // Make the mode exact even if an odd umask removed owner bits.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("cannot chmod socket directory", dir))?;
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

/// Takes the singleton lock next to the socket. `AlreadyRunning` when another daemon has it.
pub fn lock(socket: &Path) -> Result<OwnedFd, SocketError> {
    let lock_path = socket.with_extension("lock");
    let fd = rustix::fs::open(
        &lock_path,
        OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("cannot open lock file", &lock_path)(e.into()))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(SocketError::AlreadyRunning(socket.to_path_buf()))
        }
        Err(e) => Err(io_err("cannot lock", &lock_path)(e.into())),
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
        ident: (m.dev(), m.ino()),
        _lock: lock,
    })
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
            Err(SocketError::AlreadyRunning(_))
        ));
        assert!(sock.exists());
        b.remove();
        assert!(!sock.exists());
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
