//! The `tokctl get` fast path. Scripts call `tokctl get` in loops, so its whole-process
//! time is the product's hot path (issue #8: at most 1.2× `cat` of a token file). The
//! simple forms `tokctl get [PROFILE] [--format F]` skip clap and the async runtime: a
//! blocking Unix socket, one hand-written HTTP/1.1 request, one response. Anything else
//! (other flags, no daemon listening) returns `None` and takes the full path, which parses
//! with clap, starts the daemon when needed and reports exactly as before.

use crate::cli::Format;
use crate::output::{self, write_stdout};
use crate::{Failure, JsonErrors};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use tokctl::conn::{self, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT};
use tokctl_proto::{ApiError, TokenQuery, TokenResponse};

/// Runs `tokctl get` when the arguments are a simple form and a daemon listens. Returns
/// the outcome and how errors are also due on stdout (as JSON with `--format json`).
pub fn try_get() -> Option<(Result<(), Failure>, JsonErrors)> {
    let (profile, format) = simple_args(std::env::args_os().skip(1).collect())?;
    let uid = rustix::process::getuid().as_raw();
    // Any connect failure (no daemon, stale socket, bad directory) goes to the full path,
    // which autostarts the daemon or explains the problem.
    let stream = UnixStream::connect(tokctl_proto::socket_path(uid)).ok()?;
    let query = TokenQuery {
        profile,
        min_ttl_secs: tokctl_proto::DEFAULT_MIN_TTL_SECS,
        ..TokenQuery::default()
    };
    let result = fetch(stream, &query.to_query_string())
        .and_then(|t| output::render_token(&t, format))
        .and_then(|text| write_stdout(&text))
        .map_err(Failure::from);
    let json = match format {
        Format::Json => JsonErrors::Api,
        _ => JsonErrors::None,
    };
    Some((result, json))
}

/// `get`, at most one positional profile that cannot be mistaken for a flag, and at most
/// one `--format`; `None` for anything clap should see (help, other flags, `--`, non-UTF-8).
fn simple_args(args: Vec<OsString>) -> Option<(Option<String>, Format)> {
    let mut it = args.into_iter().map(|a| a.into_string().ok());
    if it.next()??.as_str() != "get" {
        return None;
    }
    let (mut profile, mut format) = (None, None);
    while let Some(arg) = it.next() {
        let arg = arg?;
        let value = if arg == "--format" {
            Some(it.next()??)
        } else {
            arg.strip_prefix("--format=").map(str::to_owned)
        };
        match value {
            Some(v) if format.is_none() => {
                format = Some(match v.as_str() {
                    "token" => Format::Token,
                    "json" => Format::Json,
                    "header" => Format::Header,
                    "env" => Format::Env,
                    _ => return None,
                })
            }
            Some(_) => return None,
            None if profile.is_none() && !arg.is_empty() && !arg.starts_with('-') => {
                profile = Some(arg)
            }
            None => return None,
        }
    }
    Some((profile, format.unwrap_or(Format::Token)))
}

/// Sends `GET /v1/token?QUERY` and decodes the answer; a non-2xx answer becomes the
/// daemon's [`ApiError`], as on the full path.
fn fetch(mut stream: UnixStream, query: &str) -> Result<TokenResponse, ApiError> {
    let request = format!(
        "GET {}/token?{query} HTTP/1.1\r\nhost: localhost\r\nuser-agent: tokctl/{}\r\n\
         connection: close\r\n\r\n",
        tokctl_proto::API_PREFIX,
        tokctl_proto::VERSION
    );
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| lost(&e.to_string()))?;
    let (status, body) = read_response(&mut stream)?;
    if (200..300).contains(&status) {
        return conn::decode(&body);
    }
    // Worded like the full path: hyper's `StatusCode` display, code and canonical reason.
    let shown =
        hyper::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string());
    Err(conn::error_answer(shown, &body))
}

/// Reads one HTTP/1.1 response: the status code and the (de-chunked) body. Stops as soon
/// as `content-length` bytes arrived; otherwise reads until the daemon closes (the request
/// said `connection: close`).
fn read_response(stream: &mut UnixStream) -> Result<(u16, Vec<u8>), ApiError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut head: Option<Head> = None;
    loop {
        if let Some(Head {
            len: Some(len),
            start,
            ..
        }) = head
        {
            if buf.len() >= start + len {
                break;
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(lost(&e.to_string())),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(lost("the answer is too large"));
        }
        if head.is_none() {
            head = parse_head(&buf)?;
        }
    }
    let head = head.ok_or_else(|| lost("incomplete answer"))?;
    let body = &buf[head.start..];
    let body = match head.len {
        Some(len) if body.len() >= len => body[..len].to_vec(),
        Some(_) => return Err(lost("the answer was cut short")),
        None if head.chunked => dechunk(body).ok_or_else(|| lost("malformed chunked answer"))?,
        None => body.to_vec(),
    };
    Ok((head.status, body))
}

/// The parts of a response head the client needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// `content-length`, unless the body is chunked.
    len: Option<usize>,
    chunked: bool,
    /// Where the body starts in the buffer.
    start: usize,
}

/// Parses the status line and headers once they are complete; `Ok(None)` while the head
/// is still arriving.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| lost("malformed answer"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| lost("malformed status line"))?;
    let (mut len, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = Some(
                value
                    .parse()
                    .map_err(|_| lost("malformed content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        }
    }
    Ok(Some(Head {
        status,
        len: if chunked { None } else { len },
        chunked,
        start: end + 4,
    }))
}

/// Decodes a chunked body (no trailers expected from the daemon).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The connection broke mid-request (same wording as the full path).
fn lost(detail: &str) -> ApiError {
    conn::lost_msg(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokctl_proto::ErrorCode;

    fn args(a: &[&str]) -> Option<(Option<String>, Format)> {
        simple_args(a.iter().map(OsString::from).collect())
    }

    #[test]
    fn only_simple_get_forms_take_the_fast_path() {
        assert_eq!(args(&["get"]), Some((None, Format::Token)));
        assert_eq!(
            args(&["get", "ci"]),
            Some((Some("ci".into()), Format::Token))
        );
        assert_eq!(
            args(&["get", "--format", "json", "ci"]),
            Some((Some("ci".into()), Format::Json))
        );
        assert_eq!(
            args(&["get", "ci", "--format=header"]),
            Some((Some("ci".into()), Format::Header))
        );
        for other in [
            &["status"][..],
            &["get", "a", "b"],
            &["get", "--scope", "x"],
            &["get", "--min-ttl", "5m"],
            &["get", "--format", "yaml"],
            &["get", "--format"],
            &["get", "--format", "env", "--format", "env"],
            &["get", "-h"],
            &["get", "--", "ci"],
            &["get", ""],
        ] {
            assert_eq!(args(other), None, "{other:?}");
        }
    }

    #[test]
    fn responses_are_parsed_with_length_or_chunks() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_head(&head[..20]).unwrap(), None);
        assert_eq!(
            parse_head(head).unwrap(),
            Some(Head {
                status: 200,
                len: Some(2),
                chunked: false,
                start: head.len() - 2
            })
        );
        let chunked = b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_head(chunked).unwrap(),
            Some(Head {
                status: 401,
                len: None,
                chunked: true,
                start: chunked.len()
            })
        );
        assert_eq!(
            dechunk(b"3\r\n{\"a\r\n2;x=1\r\n\":\r\n0\r\n\r\n").as_deref(),
            Some(&b"{\"a\":"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
        assert!(parse_head(b"SMTP 220\r\n\r\n").is_err());
    }

    #[test]
    fn answers_from_a_fake_daemon() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let ok = r#"{"access_token":"abc","token_type":"Bearer","expires_at":1,"profile":"p"}"#;
        let denied = r#"{"error":"login_required","message":"m"}"#;
        let answers = [
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{ok}",
                ok.len()
            ),
            format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{denied}",
                denied.len()
            ),
            "HTTP/1.1 500 Oops\r\n\r\n<html>".to_owned(),
        ];
        let server = std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).unwrap();
                assert!(req[..n].starts_with(b"GET /v1/token?profile=p&min_ttl=30 HTTP/1.1\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let q = "profile=p&min_ttl=30";
        let t = fetch(UnixStream::connect(&path).unwrap(), q).unwrap();
        assert_eq!(t.access_token, "abc");
        let e = fetch(UnixStream::connect(&path).unwrap(), q).unwrap_err();
        assert_eq!(e.error, ErrorCode::LoginRequired);
        let e = fetch(UnixStream::connect(&path).unwrap(), q).unwrap_err();
        assert_eq!(e.error, ErrorCode::Other);
        assert!(!e.message.contains("html"));
        server.join().unwrap();
    }
}
