//! The daemon's handle on the secret store: opened on first use and reopened after a
//! failure, so a keychain that comes up after the daemon (or unlocks later) is picked up.

use secrecy::SecretString;
use std::path::PathBuf;
use tokctl_proto::{ApiError, ErrorCode};
use tokctl_store::{Backend, SecretKey, SecretKind, Store, StoreError};
use tokio::sync::Mutex;

/// Lazily opened store.
pub struct Secrets {
    backend: Backend,
    store: Mutex<Option<Store>>,
}

/// Where the opt-in file backend keeps its file.
pub fn file_store_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("tokctl").join("secrets.json")
}

/// A store failure as an API error: never "not logged in", always "fix the keychain".
pub fn store_error(e: &StoreError) -> ApiError {
    ApiError::new(ErrorCode::Other, format!("secret store unavailable: {e}"))
}

impl Secrets {
    /// A handle for `backend`; nothing is opened yet.
    pub fn new(backend: Backend) -> Self {
        Secrets {
            backend,
            store: Mutex::new(None),
        }
    }

    async fn store(&self) -> Result<Store, StoreError> {
        let mut g = self.store.lock().await;
        if let Some(s) = &*g {
            return Ok(s.clone());
        }
        let s = Store::open(self.backend.clone()).await?;
        *g = Some(s.clone());
        Ok(s)
    }

    /// A human description of the backend ("keychain (Secret Service)", "file (…)").
    pub async fn describe(&self) -> String {
        match &*self.store.lock().await {
            Some(s) => s.describe(),
            None => match &self.backend {
                Backend::Keychain => "keychain (not opened yet)".to_string(),
                Backend::File(p) => format!("file ({})", p.display()),
            },
        }
    }

    /// Reads a secret; `Ok(None)` only when the store says the item does not exist.
    pub async fn get(
        &self,
        profile: &str,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        let s = self.store().await?;
        s.get(&key(profile, kind)).await
    }

    /// Writes (and verifies) a secret.
    pub async fn set(
        &self,
        profile: &str,
        kind: SecretKind,
        v: &SecretString,
    ) -> Result<(), StoreError> {
        let s = self.store().await?;
        s.set(&key(profile, kind), v).await
    }

    /// Deletes a secret; false when it was not there.
    pub async fn delete(&self, profile: &str, kind: SecretKind) -> Result<bool, StoreError> {
        let s = self.store().await?;
        s.delete(&key(profile, kind)).await
    }
}

fn key(profile: &str, kind: SecretKind) -> SecretKey {
    SecretKey {
        profile: profile.to_string(),
        kind,
    }
}
