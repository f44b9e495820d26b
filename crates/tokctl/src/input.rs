//! Reading a secret (client secret, password) from stdin, without echo on a terminal.

use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use tokctl_proto::{ApiError, ErrorCode};

/// Longest secret accepted; the daemon refuses larger requests anyway.
const MAX_SECRET_BYTES: u64 = 16 * 1024;

/// Reads one line from stdin as a secret. On a terminal, `prompt` goes to stderr and the
/// typed characters are not echoed. An empty line is refused with `what` in the message.
pub fn read_secret(prompt: &str, what: &str) -> Result<SecretString, ApiError> {
    let stdin = io::stdin();
    let line = if stdin.is_terminal() {
        eprint!("{prompt}");
        let _echo =
            EchoOff::new().map_err(|e| io_error(&format!("cannot turn off terminal echo: {e}")))?;
        read_line(&mut stdin.lock())
    } else {
        read_line(&mut stdin.lock())
    }?;
    let text = std::str::from_utf8(&line)
        .map_err(|_| ApiError::new(ErrorCode::Usage, format!("the {what} is not UTF-8")))?;
    if text.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Usage,
            format!("no {what} on stdin; nothing sent"),
        ));
    }
    Ok(SecretString::from(text.to_owned()))
}

/// Reads one line and strips one trailing `\n` or `\r\n`. The buffer is wiped on drop.
fn read_line(r: &mut impl BufRead) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let mut buf = Zeroizing::new(Vec::new());
    // Two more bytes than allowed: room for a CRLF after a secret of the full length.
    r.take(MAX_SECRET_BYTES + 2)
        .read_until(b'\n', &mut buf)
        .map_err(|e| io_error(&format!("cannot read stdin: {e}")))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() as u64 > MAX_SECRET_BYTES {
        return Err(ApiError::new(
            ErrorCode::Usage,
            format!("the line on stdin is longer than {MAX_SECRET_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

fn io_error(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Other, message)
}

/// Terminal echo switched off on stdin until dropped. The newline is still echoed so
/// the next output starts on its own line.
struct EchoOff {
    saved: Termios,
}

impl EchoOff {
    fn new() -> io::Result<Self> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Now, &self.saved);
        let _ = io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(input: &[u8]) -> Vec<u8> {
        read_line(&mut &input[..]).unwrap().to_vec()
    }

    #[test]
    fn strips_exactly_one_line_ending() {
        assert_eq!(line(b"s3cret\n"), b"s3cret");
        assert_eq!(line(b"s3cret\r\n"), b"s3cret");
        assert_eq!(line(b"s3cret"), b"s3cret");
        assert_eq!(line(b"s3cret\r"), b"s3cret\r");
        assert_eq!(line(b" pad \n\n"), b" pad ");
        assert_eq!(line(b"first\nsecond\n"), b"first");
        assert_eq!(line(b"\n"), b"");
        assert_eq!(line(b""), b"");
    }

    #[test]
    fn refuses_overlong_lines() {
        let big = vec![b'x'; MAX_SECRET_BYTES as usize + 1];
        let e = read_line(&mut &big[..]).unwrap_err();
        assert_eq!(e.error, ErrorCode::Usage);
        let mut exact = vec![b'x'; MAX_SECRET_BYTES as usize];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(line(&exact).len(), MAX_SECRET_BYTES as usize);
    }
}
