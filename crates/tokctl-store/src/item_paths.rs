//! Secret Service writes straight to an item whose object path is known.
//!
//! keyring-core writes a secret with a `SearchItems` for the item and then its `SetSecret`:
//! two round trips to the provider, each ~0.45 ms with gnome-keyring even for a `Ping`.
//! A rotation writes the same item again and again, so after a refresh token is written
//! through keyring-core the keychain thread looks up the item's path (once the caller has its answer) and later
//! writes send the `SetSecret` alone, on a Secret Service session of its own
//! (keyring-core's is private). keyring-core still does everything else: reads, deletes,
//! creating items, and every write whose direct path fails.
//!
//! A remembered path is only ever written while the session that learned it lives:
//! sessions belong to one provider process and one client, so after a provider restart
//! the write fails instead of landing in whatever item now has that path. Within one
//! gnome-keyring process item paths are numbered upwards and never reused, so a path
//! whose item was deleted fails too. Any failure forgets every path and the session;
//! the caller then writes through keyring-core, which searches again.

use std::collections::HashMap;

use keyring_core::Entry;
use secret_service::blocking::SecretService;
use secret_service::EncryptionType;
use zbus::zvariant::OwnedObjectPath;
use zbus_secret_service_keyring_store::cred::Wrapper;

/// keyring-core stores secrets with this content type; direct writes use the same.
const CONTENT_TYPE: &str = "application/octet-stream";

/// The keychain thread's remembered item paths and the session that writes to them.
#[derive(Default)]
pub(crate) struct ItemPaths {
    /// Opened when the first path is learned; dropped (with `paths`) after any failure.
    session: Option<SecretService<'static>>,
    /// Item path by keychain username (`profile:kind`).
    paths: HashMap<String, OwnedObjectPath>,
    /// Direct writes that failed since the last one that worked. A provider that refuses
    /// every one would otherwise cost a failed call, a search and a new session per write.
    failures: u32,
}

/// After this many direct writes in a row fail, the thread stops learning paths.
const GIVE_UP_AFTER: u32 = 3;

impl ItemPaths {
    /// Writes `secret` to the item remembered for `user`; false when none is remembered
    /// or the write failed (then nothing is remembered any more).
    pub(crate) fn write(&mut self, user: &str, secret: &[u8]) -> bool {
        let Some(path) = self.paths.get(user).cloned() else {
            return false;
        };
        self.write_to(path, secret)
    }

    /// Finds the item `entry` names (one `SearchItems`) and remembers its path, opening
    /// the session for direct writes if there is none (a Diffie-Hellman exchange, ~6 ms of
    /// CPU, which is why this runs after the write's caller has its answer).
    pub(crate) fn learn(&mut self, user: &str, entry: &Entry) {
        if self.failures >= GIVE_UP_AFTER {
            return;
        }
        let Ok(cred) = entry.get_credential() else {
            return;
        };
        let Some(path) = cred
            .as_any()
            .downcast_ref::<Wrapper>()
            .and_then(|w| OwnedObjectPath::try_from(w.get_path()).ok())
        else {
            return;
        };
        if self.session.is_none() {
            match SecretService::connect(EncryptionType::Dh) {
                Ok(s) => self.session = Some(s),
                Err(_) => return,
            }
        }
        self.paths.insert(user.to_owned(), path);
    }

    /// Forgets the path of `user`'s item (it is being deleted).
    pub(crate) fn forget(&mut self, user: &str) {
        self.paths.remove(user);
    }

    fn write_to(&mut self, path: OwnedObjectPath, secret: &[u8]) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let written = session
            .get_item_by_path(path)
            .and_then(|item| item.set_secret(secret, CONTENT_TYPE));
        if written.is_ok() {
            self.failures = 0;
            return true;
        }
        // The provider restarted, the item went away or got locked: start over, and let
        // keyring-core find out which and say so.
        self.session = None;
        self.paths.clear();
        self.failures += 1;
        false
    }
}
