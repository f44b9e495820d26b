//! `tokctl completions SHELL` and `tokctl man`: generated from the clap definition, so
//! they never drift from the real command line.

use crate::cli::Cli;
use crate::output::write_stdout;
use clap::CommandFactory;
use tokctl_proto::{ApiError, ErrorCode};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<(), ApiError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tokctl", &mut buf);
    write_stdout(&String::from_utf8_lossy(&buf))
}

/// Prints tokctl(1) in roff; `man -l -` or `man ./tokctl.1` shows it.
pub fn man() -> Result<(), ApiError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| ApiError::new(ErrorCode::Other, format!("cannot render the man page: {e}")))?;
    write_stdout(&String::from_utf8_lossy(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_and_completions_name_every_command() {
        let mut buf = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut buf)
            .unwrap();
        let man = String::from_utf8(buf).unwrap();
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
        for c in ["get", "login", "status", "doctor", "completions"] {
            assert!(man.contains(c), "man page lacks {c}");
        }
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tokctl", &mut buf);
            let s = String::from_utf8(buf).unwrap();
            assert!(
                s.contains("doctor") && s.contains("min-ttl"),
                "{shell}: {s}"
            );
        }
    }
}
