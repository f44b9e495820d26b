//! `tokctl login`: starts a login in the daemon and renders its NDJSON event stream.

use crate::cli::LoginArgs;
use crate::conn::Daemon;
use crate::output::{humanize, write_json};
use crate::{browser, input, Failure};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use indicatif::{ProgressBar, ProgressStyle};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use secrecy::zeroize::Zeroize;
use secrecy::ExposeSecret;
use std::fmt::{self, Display, Write as _};
use std::io::IsTerminal;
use std::time::Duration;
use tokctl_proto::{printable, ApiError, ErrorCode, LoginEvent, LoginRequest};

/// Longest event line accepted from the daemon.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Runs `tokctl login`.
pub async fn run(args: &LoginArgs) -> Result<(), Failure> {
    // The password is read before anything else, so a prompt never mixes with progress.
    let password = if args.password_stdin {
        Some(input::read_secret("Password: ", "password")?)
    } else {
        None
    };
    let mut daemon = Daemon::connect().await?;
    let mut req = LoginRequest {
        profile: args.profile.clone(),
        force: args.force,
        username: args.username.clone(),
        password: password.as_ref().map(|p| p.expose_secret().to_owned()),
    };
    let body = daemon.post_stream("/login", &req).await;
    if let Some(p) = req.password.as_mut() {
        p.zeroize();
    }
    let mut lines = Lines::new(body?);
    let mut view = View::new(args);
    while let Some(line) = lines.next().await? {
        if view.event(&line)? {
            return Ok(());
        }
    }
    Err(ApiError::new(
        ErrorCode::Other,
        "tokctld ended the login without a result; see its log",
    )
    .into())
}

/// Renders events for a person (or, with `--json`, passes them through).
struct View {
    json: bool,
    open_browser: bool,
    /// Progress is drawn only where a person watches.
    interactive: bool,
    spinner: Option<ProgressBar>,
}

impl View {
    fn new(args: &LoginArgs) -> Self {
        View {
            json: args.json,
            open_browser: browser::should_open(args.no_browser, &|k| std::env::var(k).ok()),
            interactive: !args.json && std::io::stderr().is_terminal(),
            spinner: None,
        }
    }

    /// Handles one line; `Ok(true)` when the login is done.
    fn event(&mut self, line: &str) -> Result<bool, Failure> {
        if self.json && serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok() {
            write_json(line)?;
        }
        // A line this version does not know (from a newer daemon) is skipped.
        let Ok(event) = serde_json::from_str::<LoginEvent>(line) else {
            return Ok(false);
        };
        match event {
            LoginEvent::DeviceAuthorization {
                verification_uri,
                verification_uri_complete,
                user_code,
                expires_in,
            } => {
                self.stop();
                let target = verification_uri_complete
                    .as_deref()
                    .unwrap_or(&verification_uri);
                if !self.json {
                    // RFC 8628 §5.4, Storm-2372 style phishing: the code is only for the person
                    // who just started this login, so the prompt says so (A22).
                    let mut text = format!(
                        "To log in, open {} and enter the code: {}\n\
                         Enter it only if you just ran `tokctl login` here; nobody else should ask you for it.\n",
                        printable(&verification_uri, 500),
                        printable(&user_code, 40)
                    );
                    if self.interactive {
                        if let Some(code) = verification_uri_complete.as_deref().and_then(qr) {
                            let _ = writeln!(text, "{code}Or scan this QR code with a phone.");
                        }
                    }
                    eprint!("{text}");
                }
                if self.open_browser {
                    browser::open(target);
                }
                self.spin(
                    "Waiting for approval…",
                    Some(Duration::from_secs(expires_in)),
                );
            }
            LoginEvent::Browser { url } => {
                self.stop();
                let opened = self.open_browser && browser::open(&url);
                if !self.json {
                    let lead = if opened {
                        "Opened the login page in your browser; if it did not appear, visit:"
                    } else {
                        "Open this URL in a browser to log in:"
                    };
                    eprintln!("{lead}\n  {}", printable(&url, 4000));
                }
                self.spin("Waiting for the browser login…", None);
            }
            LoginEvent::Info { message } => {
                if !self.json {
                    self.say(&printable(&message, 1000));
                }
            }
            LoginEvent::Done { profile } => {
                self.stop();
                if !self.json {
                    eprintln!("logged in to {}", printable(&profile, 100));
                }
                return Ok(true);
            }
            LoginEvent::Error { error, message } => {
                self.stop();
                return Err(Failure {
                    error: ApiError::new(error, message),
                    json_shown: self.json,
                });
            }
        }
        Ok(false)
    }

    /// Prints a line on stderr without tearing the spinner.
    fn say(&self, text: &str) {
        match &self.spinner {
            Some(s) => s.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Starts a spinner, with the time left when the wait has a limit.
    fn spin(&mut self, message: &'static str, limit: Option<Duration>) {
        if !self.interactive {
            return;
        }
        let style = match limit {
            Some(limit) => ProgressStyle::with_template("{spinner} {msg} {left}").map(|s| {
                s.with_key(
                    "left",
                    move |st: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                        let left = limit.saturating_sub(st.elapsed());
                        let _ = write!(w, "({} left)", humanize(left));
                    },
                )
            }),
            None => ProgressStyle::with_template("{spinner} {msg} ({elapsed})"),
        };
        let bar = ProgressBar::new_spinner()
            .with_style(style.unwrap_or_else(|_| ProgressStyle::default_spinner()))
            .with_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        self.spinner = Some(bar);
    }

    fn stop(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

impl Drop for View {
    /// Clears the spinner on every way out, so an error line starts on a clean line.
    fn drop(&mut self) {
        self.stop();
    }
}

/// A QR code of `url` for a terminal, or `None` when it does not fit in one.
fn qr(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    // Light modules drawn dark: most terminals have a dark background, and readers need
    // dark modules on a light field.
    let mut art = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    art.push('\n');
    Some(art)
}

/// Splits a streamed body into lines (NDJSON), skipping blank ones.
struct Lines<B> {
    body: B,
    buf: Vec<u8>,
    ended: bool,
}

impl<B> Lines<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    fn new(body: B) -> Self {
        Lines {
            body,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next non-blank line, `None` at the end of the stream.
    async fn next(&mut self) -> Result<Option<String>, ApiError> {
        loop {
            let line = match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let rest = self.buf.split_off(i + 1);
                    std::mem::replace(&mut self.buf, rest)
                }
                None if self.ended && !self.buf.is_empty() => std::mem::take(&mut self.buf),
                None if self.ended => return Ok(None),
                None => {
                    self.fill().await?;
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some(text.to_owned()));
            }
        }
    }

    /// Reads the next chunk of the body.
    async fn fill(&mut self) -> Result<(), ApiError> {
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(ApiError::new(
                ErrorCode::Other,
                "tokctld sent a login event line that is too long",
            ));
        }
        match self.body.frame().await {
            None => self.ended = true,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(ApiError::new(
                    ErrorCode::DaemonUnreachable,
                    format!(
                        "lost the connection to tokctld during the login: {}",
                        printable(&e.to_string(), 200)
                    ),
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that yields the given chunks as separate frames.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
        }
    }

    async fn collect(chunks: &[&'static str]) -> Result<Vec<String>, ApiError> {
        let mut lines = Lines::new(Chunks(chunks.iter().copied().collect()));
        let mut out = Vec::new();
        while let Some(l) = lines.next().await? {
            out.push(l);
        }
        Ok(out)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lines_are_reassembled_across_chunks() {
        let got = collect(&["{\"a\":", "1}\n\n{\"b\"", ":2}\r\n", "{\"c\":3}"])
            .await
            .unwrap();
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        assert!(collect(&[]).await.unwrap().is_empty());
        assert!(collect(&["\n", "  \n"]).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_endless_line_is_refused() {
        let big: &'static str = Box::leak("x".repeat(MAX_LINE_BYTES).into_boxed_str());
        let e = collect(&[big, big, "\n"]).await.unwrap_err();
        assert_eq!(e.error, ErrorCode::Other);
    }

    #[test]
    fn qr_code_is_terminal_art() {
        let art = qr("https://idp.test/device?user_code=WDJB-MJHT").unwrap();
        let rows: Vec<&str> = art.lines().collect();
        assert!(rows.len() > 10);
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width));
        assert!(art
            .chars()
            .all(|c| matches!(c, ' ' | '\n' | '\u{2580}' | '\u{2584}' | '\u{2588}')));
        assert!(qr(&"x".repeat(5000)).is_none());
    }
}
