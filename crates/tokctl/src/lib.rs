//! The parts of the `tokctl` client that other code (the fuzz targets in `fuzz/`, tests) can
//! link: the git and docker credential helper protocols and the socket connection they use.
//! The binary (`main.rs`) holds the command line; this split exists so the helpers' input
//! parsers can be fuzzed and property-tested as library functions.

pub mod autostart;
pub mod conn;
pub mod docker;
pub mod git;
