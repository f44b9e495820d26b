//! The error type of every store operation.

use std::time::Duration;

/// Why a store operation failed. No variant ever carries a secret: messages name the
/// secret (profile and kind) and the place, never its value or the bytes around it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No keychain answered: no D-Bus session, no Secret Service provider, or another
    /// platform failure. The message says what to do.
    #[error("keychain unavailable: {0}")]
    Unavailable(String),
    /// The keychain answered but refused access, typically because it is locked.
    #[error("keychain locked: {0}")]
    Locked(String),
    /// The keychain did not answer within this time.
    #[error(
        "the keychain did not answer within {}s; its provider may be hung (restart it, e.g. gnome-keyring-daemon)",
        .0.as_secs_f32()
    )]
    Timeout(Duration),
    /// The secrets file could not be read or written, or is unsafe to use; names the path.
    #[error("{0}")]
    Io(String),
    /// Stored data is unusable (unparsable file, undecodable item), or a write did not read
    /// back as written.
    #[error("{0}")]
    Corrupt(String),
}
