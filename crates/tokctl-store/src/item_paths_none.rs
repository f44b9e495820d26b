//! Direct item writes exist only for the Secret Service (`item_paths.rs`); elsewhere the
//! keychain's own write is already one call, so the keychain thread never makes these.

use keyring_core::Entry;

/// Remembers nothing: every write goes through keyring-core.
#[derive(Default)]
pub(crate) struct ItemPaths;

impl ItemPaths {
    /// Never writes.
    pub(crate) fn write(&mut self, _user: &str, _secret: &[u8]) -> bool {
        false
    }

    /// Remembers nothing.
    pub(crate) fn learn(&mut self, _user: &str, _entry: &Entry) {}

    /// Nothing to forget.
    pub(crate) fn forget(&mut self, _user: &str) {}
}
