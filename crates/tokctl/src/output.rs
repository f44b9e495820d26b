//! What the commands print: tokens, the status table, error lines.

use crate::cli::Format;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;
use tokctl_proto::{printable, ApiError, ErrorCode, ProfileState, StatusResponse, TokenResponse};

/// The longest daemon-supplied text shown in one error line.
const MAX_MESSAGE_CHARS: usize = 1000;

/// `tokctl get`'s output for `format`, newline included.
pub fn render_token(t: &TokenResponse, format: Format) -> Result<String, ApiError> {
    // RFC 6749 A.12: a token is 1*VSCHAR. Anything else would corrupt a header or a
    // terminal, so it is refused rather than printed.
    if t.access_token.is_empty() || !t.access_token.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(ApiError::new(
            ErrorCode::Other,
            "tokctld returned a malformed access token; not printing it",
        ));
    }
    let token = &t.access_token;
    Ok(match format {
        Format::Token => format!("{token}\n"),
        Format::Header => format!("Authorization: Bearer {token}\n"),
        Format::Env => format!("TOKCTL_ACCESS_TOKEN={}\n", shell_word(token)),
        Format::Json => {
            // `scope` and `profile` come from the IdP and the config: keep them inert.
            let s = serde_json::to_string(t).map_err(|e| {
                ApiError::new(ErrorCode::Other, format!("cannot encode the token: {e}"))
            })?;
            format!("{}\n", tokctl_proto::json_for_terminal(&s))
        }
    })
}

/// The token as is when the shell would read it back unchanged (every real token), else
/// single-quoted, so `eval "$(tokctl get --format env)"` can never run part of a token.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~+/=:,@%".contains(c);
    if s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes to stdout in one go; a closed pipe becomes an error instead of a panic.
pub fn write_stdout(text: &str) -> Result<(), ApiError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ApiError::new(ErrorCode::Other, format!("cannot write to stdout: {e}")))
}

/// Writes JSON text (one document and a newline) to stdout with C1, DEL and bidi characters
/// inside strings turned into `\uXXXX` escapes: the value is unchanged for a program, and a
/// terminal never receives them raw (A11).
pub fn write_json(json: &str) -> Result<(), ApiError> {
    write_stdout(&format!(
        "{}\n",
        tokctl_proto::json_for_terminal(json.trim_end())
    ))
}

/// The one stderr line of a failed command.
pub fn error_line(e: &ApiError) -> String {
    format!("tokctl: {}", printable(&e.message, MAX_MESSAGE_CHARS))
}

/// `tokctl status` as a table for a terminal. `now` is Unix seconds.
pub fn render_status(s: &StatusResponse, now: u64, color: bool) -> String {
    let mut out = String::new();
    let version_note = if s.version == tokctl_proto::VERSION {
        String::new()
    } else {
        format!(" (this tokctl is {})", tokctl_proto::VERSION)
    };
    let _ = writeln!(
        out,
        "tokctld {}{version_note}, pid {}, up {}, store: {}, config: {}",
        printable(&s.version, 40),
        s.pid,
        humanize(Duration::from_secs(s.uptime_secs)),
        printable(&s.store, 80),
        printable(&s.config, 200),
    );
    if s.profiles.is_empty() {
        out.push_str("no profiles configured\n");
        return out;
    }
    let header = [
        "PROFILE",
        "GRANT",
        "STATE",
        "EXPIRES IN",
        "SCOPES",
        "LAST ERROR",
    ];
    let rows: Vec<(ProfileState, [String; 6])> = s
        .profiles
        .iter()
        .map(|p| {
            let expires = match p.expires_at {
                None => "-".to_owned(),
                Some(at) if at <= now => "expired".to_owned(),
                Some(at) => humanize(Duration::from_secs(at - now)),
            };
            let error = p
                .last_error
                .as_deref()
                .map_or("-".to_owned(), |e| printable(e, 80));
            let scopes = if p.scopes.is_empty() {
                "-".to_owned()
            } else {
                printable(&p.scopes.join(" "), 60)
            };
            let cells = [
                printable(&p.name, 40),
                printable(&p.grant, 40),
                p.state.as_str().to_owned(),
                expires,
                scopes,
                error,
            ];
            (p.state, cells)
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for (_, cells) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: [&str; 6], state: Option<ProfileState>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let last = i == cells.len() - 1;
            // Pad first, then colour, so escape codes do not disturb the alignment.
            let padded = if last {
                (*cell).to_owned()
            } else {
                format!("{cell:<w$}  ")
            };
            match (i, state) {
                (2, Some(st)) if color => l.push_str(&paint(st, &padded)),
                _ => l.push_str(&padded),
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header, None);
    for (state, cells) in &rows {
        line(&mut out, cells.each_ref().map(String::as_str), Some(*state));
    }
    out
}

/// Wraps `text` in the colour of `state`.
fn paint(state: ProfileState, text: &str) -> String {
    let code = match state {
        ProfileState::Valid => "32",
        ProfileState::Refreshing => "36",
        ProfileState::Backoff => "33",
        ProfileState::LoginRequired => "31",
        ProfileState::LoggedOut => "2",
    };
    // Keep trailing padding outside the escape so underlined/dim styles do not spill.
    let trimmed = text.trim_end();
    format!("\x1b[{code}m{trimmed}\x1b[0m{}", &text[trimmed.len()..])
}

/// Colour is for terminals only, and `NO_COLOR` (any non-empty value) turns it off.
pub fn use_color(stdout_is_terminal: bool) -> bool {
    stdout_is_terminal && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty())
}

/// A duration in its two largest units, e.g. `3h 2m`, `41s`.
pub fn humanize(d: Duration) -> String {
    let full = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokctl_proto::ProfileStatus;

    fn token(t: &str) -> TokenResponse {
        TokenResponse {
            access_token: t.into(),
            token_type: "Bearer".into(),
            expires_at: Some(1_700_000_000),
            scope: Some("read write".into()),
            profile: "work".into(),
        }
    }

    #[test]
    fn every_format_prints_one_line() {
        let t = token("eyJ.abc-_.sig");
        assert_eq!(render_token(&t, Format::Token).unwrap(), "eyJ.abc-_.sig\n");
        assert_eq!(
            render_token(&t, Format::Header).unwrap(),
            "Authorization: Bearer eyJ.abc-_.sig\n"
        );
        assert_eq!(
            render_token(&t, Format::Env).unwrap(),
            "TOKCTL_ACCESS_TOKEN=eyJ.abc-_.sig\n"
        );
        let j = render_token(&t, Format::Json).unwrap();
        assert_eq!(j.matches('\n').count(), 1);
        assert_eq!(
            j,
            r#"{"access_token":"eyJ.abc-_.sig","token_type":"Bearer","expires_at":1700000000,"scope":"read write","profile":"work"}"#
                .to_owned()
                + "\n"
        );
    }

    #[test]
    fn env_format_quotes_shell_metacharacters() {
        let t = token("a$(touch x)'b");
        assert_eq!(
            render_token(&t, Format::Env).unwrap(),
            "TOKCTL_ACCESS_TOKEN='a$(touch x)'\\''b'\n"
        );
    }

    #[test]
    fn malformed_tokens_are_not_printed() {
        for bad in ["", "a\nb", "a\x1b[2Jb", "tök"] {
            let e = render_token(&token(bad), Format::Token).unwrap_err();
            assert_eq!(e.error, ErrorCode::Other);
            assert!(!e.message.contains(bad) || bad.is_empty());
        }
    }

    #[test]
    fn error_line_is_one_escaped_line() {
        let e = ApiError::new(ErrorCode::LoginRequired, "run `tokctl login`\n\x1b[2J");
        assert_eq!(error_line(&e), "tokctl: run `tokctl login`\\n\\u{1b}[2J");
    }

    #[test]
    fn humanize_keeps_two_units() {
        assert_eq!(humanize(Duration::from_secs(41)), "41s");
        assert_eq!(humanize(Duration::from_secs(3 * 3600 + 125)), "3h 2m");
        assert_eq!(humanize(Duration::from_millis(1500)), "1s");
    }

    fn status() -> StatusResponse {
        StatusResponse {
            version: tokctl_proto::VERSION.into(),
            pid: 42,
            uptime_secs: 3720,
            store: "keychain (Secret Service)".into(),
            config: "/home/u/.config/tokctl/config.toml".into(),
            profiles: vec![
                ProfileStatus {
                    name: "work".into(),
                    grant: "device_code".into(),
                    issuer: "https://idp".into(),
                    state: ProfileState::Valid,
                    expires_at: Some(1000 + 600),
                    refresh_at: None,
                    scopes: vec!["openid".into(), "api".into()],
                    last_error: None,
                    variants: 0,
                },
                ProfileStatus {
                    name: "ci\x1b]0;x".into(),
                    grant: "client_credentials".into(),
                    issuer: "https://idp".into(),
                    state: ProfileState::LoginRequired,
                    expires_at: Some(900),
                    refresh_at: None,
                    scopes: vec![],
                    last_error: Some("invalid_grant".into()),
                    variants: 0,
                },
            ],
        }
    }

    #[test]
    fn status_table_is_aligned_and_plain_without_color() {
        let out = render_status(&status(), 1000, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "tokctld {}, pid 42, up 1h 2m, store: keychain (Secret Service), config: /home/u/.config/tokctl/config.toml",
                tokctl_proto::VERSION
            )
        );
        assert!(lines[1].starts_with("PROFILE "));
        let col = lines[1].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 5], "valid");
        assert_eq!(&lines[3][col..col + 14], "login_required");
        assert!(lines[2].contains("10m"));
        let scol = lines[1].find("SCOPES").unwrap();
        assert_eq!(&lines[2][scol..scol + 10], "openid api");
        assert_eq!(&lines[3][scol..scol + 1], "-");
        assert!(lines[3].contains("expired") && lines[3].ends_with("invalid_grant"));
        assert!(
            !out.contains('\x1b'),
            "control characters must be escaped: {out:?}"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn status_colours_states_only() {
        let out = render_status(&status(), 1000, true);
        assert!(out.contains("\x1b[32mvalid\x1b[0m"));
        assert!(out.contains("\x1b[31mlogin_required\x1b[0m"));
        assert_eq!(out.matches("\x1b[").count(), 4, "{out:?}");
        let mut s = status();
        s.version = "9.9.9".into();
        s.profiles.clear();
        let out = render_status(&s, 0, true);
        assert!(out.contains("(this tokctl is"));
        assert!(out.ends_with("no profiles configured\n"));
    }
}
