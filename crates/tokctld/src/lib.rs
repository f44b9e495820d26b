//! The parts of the daemon that other code (the fuzz targets in `fuzz/`, property tests) can
//! link: the config file parser and validator, with route matching. The daemon itself is the
//! binary (`main.rs`); this split exists so the config parser can be fuzzed as a library.

pub mod config;
