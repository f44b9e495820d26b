//! The contract between `tokctl` and `tokctld`: socket API types, error codes with their
//! exit codes, and where the socket, config and state live.
//!
//! This crate depends on serde only (plus a tiny form-encoding crate for the query string),
//! so the thin client stays small and fast to start.

mod api;
mod paths;

pub use api::*;
pub use paths::*;

/// The API version prefix every endpoint lives under.
pub const API_PREFIX: &str = "/v1";

/// Largest request body the daemon accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Version of this build, shared by client and daemon so either can report a mismatch.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
