//! tokctl-oauth talks to OAuth 2.0 / OpenID Connect identity providers: discovery, every
//! grant tokctl supports, revocation and ID token validation. It knows nothing about the
//! daemon, the store or the socket API.
//!
//! The grant mechanics are hand-written form POSTs rather than the `oauth2` crate: we need
//! typed RFC error classification on any status (GitHub sends errors with 200), capped bodies,
//! redirects treated as transient, `Retry-After`, and 1*VSCHAR token checks, none of which it exposes.
//!
//! Transport: reqwest with rustls (ring) and the system trust store; redirects are never
//! followed, TLS verification is never disabled, and only https to non-loopback hosts may go
//! through `HTTPS_PROXY`. Secrets travel as [`secrecy::SecretString`] and never appear in
//! errors or `Debug` output.

mod client;
mod discovery;
mod error;
/// Entry points for the fuzz targets (`fuzz/`); not part of the supported API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id_token;
mod pkce;
mod types;
mod urls;

pub use client::{HttpOptions, OAuthClient, TokenTypeHint};
pub use discovery::Metadata;
pub use error::{sanitize_text, ErrorClass, OAuthError, OAuthErrorCode};
pub use id_token::IdClaims;
pub use pkce::{authorization_url, random_state, PkceVerifier};
pub use types::{AuthMethod, ClientAuth, DeviceAuthorization, TokenParams, TokenSet};
pub use urls::check_url;
