//! Names of the secrets tokctl keeps.

use std::fmt;

/// Which kind of secret a [`SecretKey`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretKind {
    /// An OAuth refresh token, rotated by the identity provider.
    RefreshToken,
    /// A confidential client's secret, set by the user with `tokctl secret set`.
    ClientSecret,
}

impl SecretKind {
    /// The stable identifier used in keychain usernames and file keys: `refresh_token` or
    /// `client_secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::RefreshToken => "refresh_token",
            SecretKind::ClientSecret => "client_secret",
        }
    }

    /// Words for messages and keychain labels: `refresh token` or `client secret`.
    pub fn human(self) -> &'static str {
        match self {
            SecretKind::RefreshToken => "refresh token",
            SecretKind::ClientSecret => "client secret",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret of one profile.
///
/// In the keychain it is the item with service `tokctl` and username `<profile>:<kind>`, so
/// `secret-tool lookup service tokctl username work:client_secret` finds it; in the file
/// store it is the key `<profile>:<kind>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    /// The profile name from the config file.
    pub profile: String,
    /// Which of the profile's secrets.
    pub kind: SecretKind,
}

impl SecretKey {
    /// A key for `kind` of `profile`.
    pub fn new(profile: impl Into<String>, kind: SecretKind) -> Self {
        SecretKey {
            profile: profile.into(),
            kind,
        }
    }

    /// The refresh token of `profile`.
    pub fn refresh_token(profile: impl Into<String>) -> Self {
        Self::new(profile, SecretKind::RefreshToken)
    }

    /// The client secret of `profile`.
    pub fn client_secret(profile: impl Into<String>) -> Self {
        Self::new(profile, SecretKind::ClientSecret)
    }

    /// The keychain username and file key: `<profile>:<kind>`.
    pub fn username(&self) -> String {
        format!("{}:{}", self.profile, self.kind.as_str())
    }

    /// The label a keychain UI shows, e.g. `tokctl refresh token for profile work`.
    pub fn label(&self) -> String {
        format!("tokctl {self}")
    }
}

impl fmt::Display for SecretKey {
    /// `refresh token for profile work`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} for profile {}", self.kind.human(), self.profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_documented_keychain_layout() {
        let k = SecretKey::client_secret("work");
        assert_eq!(k.username(), "work:client_secret");
        assert_eq!(k.label(), "tokctl client secret for profile work");
        let r = SecretKey::refresh_token("dev");
        assert_eq!(r.username(), "dev:refresh_token");
        assert_eq!(r.to_string(), "refresh token for profile dev");
    }
}
