//! `pow(3)` for the whole process, so the dynamic linker never maps `libm.so.6`.
//!
//! The only libm function the daemon calls is `pow`, from tokio's multi-threaded scheduler
//! (it weighs task poll times once per batch), which runs the daemon's own runtime and
//! zbus's private one for the keychain. Loading libm for that one function cost 0.5–0.6 MiB
//! of resident memory in an idle daemon (issue #8; libm's pages are mapped in 64 KiB
//! fault-around blocks), a sixth of the whole budget. A `pow` defined in the executable
//! satisfies the reference, so the linker (`--as-needed`) drops libm. The body is the
//! `libm` crate's, Rust's port of musl's.

/// `double pow(double x, double y)`: `x` raised to the power `y`.
#[allow(unsafe_code)] // `no_mangle` exports a C symbol: the point of this module.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agrees_with_the_c_library_on_ordinary_and_special_values() {
        let cases = [
            (2.0, 10.0, 1024.0),
            (0.5, 3.0, 0.125),
            (9.0, 0.5, 3.0),
            (10.0, -2.0, 0.01),
            (0.0, 0.0, 1.0),
            (-8.0, 3.0, -512.0),
        ];
        for (x, y, want) in cases {
            let got = super::pow(x, y);
            assert!(
                (got - want).abs() <= want.abs() * 1e-15,
                "pow({x}, {y}) = {got}"
            );
        }
        assert!(super::pow(-8.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, -1.0), f64::INFINITY);
        // tokio's use: (1 - alpha)^n for a weighted average.
        let w = super::pow(0.9, 5.0);
        assert!((w - 0.59049).abs() < 1e-12, "{w}");
    }
}
