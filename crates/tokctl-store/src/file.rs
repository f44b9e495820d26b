//! The file backend (`store = "file"`, an explicit opt-in): one JSON file, mode 0600.
//!
//! Layout: `{"version": 1, "secrets": {"<profile>:<kind>": "<secret>"}}`. Every operation
//! reads the file afresh, so a file edited or broken behind the daemon's back is noticed.
//! Writes replace the whole file atomically: a temporary file in the same directory,
//! created 0600 from the start, fsynced, renamed over the old one, then the directory is
//! fsynced so the rename survives a crash.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::OFlags;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{SecretKey, StoreError};

const VERSION: u32 = 1;

/// A secrets file bigger than this is not ours; refusing it keeps a mistaken path from
/// being slurped into memory.
const MAX_LEN: u64 = 4 << 20;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: u32,
    secrets: BTreeMap<String, Zeroizing<String>>,
}

/// The secrets file and the lock that serializes read-modify-write cycles in this process.
pub(crate) struct FileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileStore {
    /// Checks an existing file (owner, mode, format) so a bad file is reported at startup;
    /// a missing one is created on the first write.
    pub(crate) fn open(path: PathBuf) -> Result<FileStore, StoreError> {
        let store = FileStore {
            path,
            lock: Mutex::new(()),
        };
        store.read()?;
        store.remove_stale_temporaries();
        Ok(store)
    }

    /// Removes temporary files a crashed write left behind; they are 0600 but hold secrets
    /// that may since have been rotated or deleted.
    fn remove_stale_temporaries(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let prefix = prefix.as_encoded_bytes().to_vec();
        let me = rustix::process::getuid().as_raw();
        for entry in entries.flatten() {
            let fname = entry.file_name();
            let b = fname.as_encoded_bytes();
            if b.starts_with(&prefix) && b.ends_with(b".tmp") {
                let ours = entry
                    .metadata()
                    .is_ok_and(|m| m.file_type().is_file() && m.uid() == me);
                if ours {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a secret; `None` when the file or the key does not exist.
    pub(crate) fn get(&self, key: &SecretKey) -> Result<Option<SecretString>, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let doc = self.read()?;
        Ok(doc.and_then(|d| {
            d.secrets
                .get(&key.username())
                .map(|v| SecretString::from(v.as_str()))
        }))
    }

    /// Writes a secret, then reads the file back and compares.
    pub(crate) fn set(&self, key: &SecretKey, value: &SecretString) -> Result<(), StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.read()?.unwrap_or(FileDoc {
            version: VERSION,
            secrets: BTreeMap::new(),
        });
        doc.secrets.insert(
            key.username(),
            Zeroizing::new(String::from(value.expose_secret())),
        );
        self.write(&doc)?;
        drop(doc);
        let back = self.read()?;
        let same = back
            .as_ref()
            .and_then(|d| d.secrets.get(&key.username()))
            .is_some_and(|v| v.as_bytes() == value.expose_secret().as_bytes());
        if !same {
            return Err(StoreError::Corrupt(format!(
                "the {key} read back from {} differs from what was written",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Deletes a secret; `false` when there was none.
    pub(crate) fn delete(&self, key: &SecretKey) -> Result<bool, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut doc) = self.read()? else {
            return Ok(false);
        };
        if doc.secrets.remove(&key.username()).is_none() {
            return Ok(false);
        }
        self.write(&doc)?;
        Ok(true)
    }

    fn io_err(&self, doing: &str, e: io::Error) -> StoreError {
        StoreError::Io(format!(
            "cannot {doing} the secrets file {}: {e}",
            self.path.display()
        ))
    }

    /// Opens, checks and parses the file; `None` if it does not exist.
    fn read(&self) -> Result<Option<FileDoc>, StoreError> {
        let path = self.path.display();
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(StoreError::Io(format!(
                    "refusing to use the secrets file {path}: it is a symbolic link; \
                     point the config at the real file"
                )))
            }
            Err(e) => return Err(self.io_err("open", e)),
        };
        // Checked on the open descriptor, so the file cannot be swapped between check and read.
        let meta = file.metadata().map_err(|e| self.io_err("inspect", e))?;
        check_safe(&self.path, &meta)?;
        if meta.len() > MAX_LEN {
            return Err(StoreError::Corrupt(format!(
                "the secrets file {path} is {} bytes, too large to be a tokctl secrets file",
                meta.len()
            )));
        }
        // Sized up front (plus one byte to see EOF) so the buffer never reallocates and
        // leaves an unzeroized copy of the secrets behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
        (&mut file)
            .take(MAX_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.io_err("read", e))?;
        let doc: FileDoc = serde_json::from_slice(&buf).map_err(|e| {
            // serde_json's message can quote the offending value, which may be a secret:
            // report only the kind of error and its position.
            let what = match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "not valid JSON",
                serde_json::error::Category::Data => "not in the tokctl secrets format",
                serde_json::error::Category::Eof => "truncated",
            };
            StoreError::Corrupt(format!(
                "the secrets file {path} is {what} (line {}, column {}); fix or remove it \
                 (removing it loses the secrets in it: log in again afterwards)",
                e.line(),
                e.column()
            ))
        })?;
        if doc.version != VERSION {
            return Err(StoreError::Corrupt(format!(
                "the secrets file {path} has version {}, this tokctl reads version {VERSION}",
                doc.version
            )));
        }
        Ok(Some(doc))
    }

    /// Atomically replaces the file with `doc`.
    fn write(&self, doc: &FileDoc) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = self.path.file_name().ok_or_else(|| {
            StoreError::Io(format!(
                "the secrets file path {} does not name a file",
                self.path.display()
            ))
        })?;
        // Only directories we create get 0700; an existing one is the user's choice.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot create the directory {} for the secrets file: {e}",
                    dir.display()
                ))
            })?;

        // Serialized twice: first only to count, so the real buffer is allocated once at its
        // final size and no reallocation leaves a stray copy of the secrets.
        let mut counter = Counter(0);
        serde_json::to_writer_pretty(&mut counter, doc)
            .map_err(|e| StoreError::Io(format!("cannot encode the secrets file: {e}")))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(counter.0 + 1));
        serde_json::to_writer_pretty(&mut *buf, doc)
            .map_err(|e| StoreError::Io(format!("cannot encode the secrets file: {e}")))?;
        buf.push(b'\n');

        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{nonce}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        // create_new (O_EXCL) refuses an existing file or symlink at the temporary path, and
        // mode 0600 applies at creation, so the secrets are never readable by others, even
        // for a moment or under umask 000.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot create the temporary file {}: {e}",
                    tmp.display()
                ))
            })?;
        let guard = RemoveOnDrop(Some(&tmp));
        f.write_all(&buf)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.io_err("write", e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| self.io_err("replace", e))?;
        guard.disarm();
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            StoreError::Io(format!(
                "cannot sync the directory {} of the secrets file: {e}",
                dir.display()
            ))
        })?;
        Ok(())
    }
}

/// Refuses files that others could read or replace: not a regular file, not owned by us,
/// or with any group/other permission bit.
fn check_safe(path: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let p = path.display();
    if !meta.file_type().is_file() {
        return Err(StoreError::Io(format!(
            "refusing to use the secrets file {p}: it is not a regular file"
        )));
    }
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(StoreError::Io(format!(
            "refusing to use the secrets file {p}: it is owned by uid {}, not by you (uid {me}); \
             remove it, or give it to yourself with chown",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Io(format!(
            "refusing to use the secrets file {p}: its mode {mode:04o} lets other users access it; \
             run `chmod 600 {p}`, and consider the secrets in it exposed (log in again to rotate them)"
        )));
    }
    Ok(())
}

/// An `io::Write` that only counts bytes.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Removes a half-written temporary file when a write fails.
struct RemoveOnDrop<'a>(Option<&'a Path>);

impl RemoveOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}
