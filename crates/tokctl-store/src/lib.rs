//! Secret storage for tokctl: refresh tokens and client secrets, kept in the OS keychain
//! (Secret Service on Linux, the login Keychain on macOS) or, on explicit opt-in, in a
//! 0600 file. No network.
//!
//! The API is async; the blocking work runs off the executor (keychain calls on one
//! dedicated thread, file I/O on tokio's blocking pool), so it must be called from within a
//! tokio runtime with the time driver enabled. When no keychain answers, [`Store::open`]
//! fails with [`StoreError::Unavailable`]: there is no silent fallback to a file.
//!
//! Keychain calls are serialized on one thread and each has a deadline ([`DEFAULT_TIMEOUT`]
//! unless opened with [`Store::open_with_timeout`]). A call past its deadline fails with
//! [`StoreError::Timeout`]; while that call is still stuck in the provider, further calls
//! fail at once with [`StoreError::Unavailable`] rather than queue behind it, and queued
//! calls whose caller gave up are dropped, never run late. After a platform failure (the
//! keyring daemon restarted, the bus went away) the store reconnects and retries the call
//! once, so one `Store` serves for the life of a daemon.

mod error;
mod file;
#[cfg(target_os = "linux")]
mod item_paths;
#[cfg(not(target_os = "linux"))]
#[path = "item_paths_none.rs"]
mod item_paths;
mod key;
mod keychain;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyring_core::CredentialStore;
use secrecy::SecretString;

pub use error::StoreError;
pub use key::{SecretKey, SecretKind};
/// The keychain abstraction underneath, re-exported for [`Store::open_keychain_with`]
/// (its `mock` module gives tests an in-memory keychain with error injection).
pub use keyring_core;

/// The keychain service name of every tokctl item.
pub const SERVICE: &str = "tokctl";

/// How long one keychain call (including opening the keychain) may take before it fails
/// with [`StoreError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where secrets are kept; `store = "keychain" | "file"` in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The platform keychain.
    Keychain,
    /// A 0600 JSON file at this path (explicit opt-in).
    File(PathBuf),
}

/// A handle on the secret store. Cheap to clone; all clones share one backend.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Inner {
    Keychain(keychain::Keychain),
    File(Arc<file::FileStore>),
}

impl Store {
    /// Opens `backend` with [`DEFAULT_TIMEOUT`] for keychain calls.
    ///
    /// For the keychain this connects to it (Secret Service: the D-Bus session bus and the
    /// provider) and fails with [`StoreError::Unavailable`] if nothing answers. A locked
    /// keychain still opens: it is reported as [`StoreError::Locked`] by each call until it
    /// is unlocked, so a daemon can start before the user unlocks. For a file, an existing
    /// file is checked (owner, mode, format); a missing one is created by the first `set`.
    pub async fn open(backend: Backend) -> Result<Store, StoreError> {
        Self::open_with_timeout(backend, DEFAULT_TIMEOUT).await
    }

    /// Like [`Store::open`], with `timeout` for every keychain call instead of the default.
    pub async fn open_with_timeout(
        backend: Backend,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let inner = match backend {
            Backend::Keychain => Inner::Keychain(keychain::open_platform(timeout).await?),
            Backend::File(path) => Inner::File(Arc::new(
                blocking(move || file::FileStore::open(path)).await?,
            )),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Opens a keychain backed by any `keyring-core` store that `make` builds, with the same
    /// thread, timeouts and error mapping as the platform keychain. Meant for tests (e.g.
    /// `keyring_core::mock::Store`, which supports error injection) and for stores tokctl
    /// does not choose itself. `make` runs on the keychain thread, at open and again to
    /// reconnect after a platform failure; `description` is what [`Store::describe`]
    /// returns. Items get no custom label. Unlike the platform keychain, every write is read
    /// back and compared, since such a store might report success for a write it lost.
    pub async fn open_keychain_with<F>(
        make: F,
        description: impl Into<String>,
        timeout: Duration,
    ) -> Result<Store, StoreError>
    where
        F: Fn() -> keyring_core::Result<Arc<CredentialStore>> + Send + 'static,
    {
        let kc = keychain::Keychain::open(
            Box::new(make),
            description.into(),
            false,
            keychain::Verify::ReadBack,
            false,
            timeout,
        )
        .await?;
        Ok(Store {
            inner: Arc::new(Inner::Keychain(kc)),
        })
    }

    /// Reads a secret. `None` means the store positively has no such item; a locked,
    /// unreachable or failing store is an error, never `None`.
    pub async fn get(&self, key: &SecretKey) -> Result<Option<SecretString>, StoreError> {
        match &*self.inner {
            Inner::Keychain(k) => k.get(key).await,
            Inner::File(f) => {
                let (f, key) = (f.clone(), key.clone());
                blocking(move || f.get(&key)).await
            }
        }
    }

    /// Writes a secret (replacing any old value); `Ok` means the new value is stored, so a
    /// rotation is never half-written silently. The platform keychain's write reply is that
    /// acknowledgement (a failed write is an error); the file and stores from
    /// [`Store::open_keychain_with`] are read back and compared.
    pub async fn set(&self, key: &SecretKey, value: &SecretString) -> Result<(), StoreError> {
        match &*self.inner {
            Inner::Keychain(k) => k.set(key, value).await,
            Inner::File(f) => {
                let (f, key, value) = (f.clone(), key.clone(), value.clone());
                blocking(move || f.set(&key, &value)).await
            }
        }
    }

    /// Deletes a secret; `Ok(false)` when there was none.
    pub async fn delete(&self, key: &SecretKey) -> Result<bool, StoreError> {
        match &*self.inner {
            Inner::Keychain(k) => k.delete(key).await,
            Inner::File(f) => {
                let (f, key) = (f.clone(), key.clone());
                blocking(move || f.delete(&key)).await
            }
        }
    }

    /// The backend in words: `keychain (Secret Service)`, `keychain (macOS Keychain)` or
    /// `file (/path)`.
    pub fn describe(&self) -> String {
        match &*self.inner {
            Inner::Keychain(k) => k.describe().to_owned(),
            Inner::File(f) => format!("file ({})", f.path().display()),
        }
    }

    /// How many writes went straight to an item whose Secret Service path was remembered
    /// (one D-Bus call instead of two); always 0 for other stores.
    pub fn direct_writes(&self) -> u64 {
        match &*self.inner {
            Inner::Keychain(k) => k.direct_writes(),
            Inner::File(_) => 0,
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store").field(&self.describe()).finish()
    }
}

/// Runs blocking file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("the secrets file task failed: {e}")))?
}
