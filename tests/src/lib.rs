//! End-to-end test harness for tokctl.
//!
//! - [`Idp`]: the local OpenID Connect provider (`tests/idp/idp.mjs`, oidc-provider), one
//!   per test on a free port, with request counters, event log, failure injection and a
//!   simulated user for device and browser logins.
//! - [`Keychain`]: a private D-Bus session bus with an unlocked gnome-keyring.
//! - [`TestEnv`]: an isolated HOME/XDG environment with its own keychain, for running the
//!   workspace binaries and cleaning up any daemon they start.
//!
//! Every fixture kills its processes by pid on drop, so tests run in parallel under
//! `cargo nextest run`. Prerequisites: `npm ci --prefix tests/idp`, the Debian packages in
//! `.ci/run`, and `cargo build --workspace --bins` before tests that run binaries.

mod env;
mod error;
mod gitserver;
mod http;
mod idp;
mod keychain;
mod kubeapi;
mod login;
mod pki;
mod proc;
mod registry;

pub use env::{bin_dir, text, TestEnv, RUN_TIMEOUT};
pub use error::{Error, Result};
pub use gitserver::{AuthScheme, Challenge, GitServer, SeenRequest};
pub use idp::{
    defaults, idp_dir, Captured, ClientAuth, Consent, DeviceAuthorization, Endpoint, EndpointStats,
    Failure, Idp, IdpConfig, IdpResource, IdpTls, IdpUser, Redirect, TestClient, TokenReply,
    DEVICE_GRANT,
};
pub use keychain::Keychain;
pub use kubeapi::{KubeApi, TestCa};
pub use login::LoginSession;
pub use pki::Pki;
pub use proc::{drain_to, is_alive, run, signal, wait_gone, SharedText, Sig};
pub use registry::{Registry, MANIFEST_TYPE, TEST_REPOSITORY, TEST_TAG};
