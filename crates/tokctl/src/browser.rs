//! Opening a URL in the user's browser: `$BROWSER` first (xdg-utils rules), then
//! `xdg-open` / `open`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// One way to open a URL: a program and its arguments, with the URL already in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Launcher {
    /// The program to run (looked up on `PATH`).
    pub program: String,
    /// Its arguments; the URL is one of them, never split or shell-expanded.
    pub args: Vec<String>,
}

/// Whether a browser can be expected to appear: not with `--no-browser`, and on Linux
/// only with `$BROWSER` or a graphical session (over SSH nothing would open).
pub fn should_open(no_browser: bool, env: &dyn Fn(&str) -> Option<String>) -> bool {
    if no_browser {
        return false;
    }
    if cfg!(target_os = "macos") {
        return true;
    }
    ["BROWSER", "DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.is_empty()))
}

/// Only web URLs go to a browser: a `file:` URL or one starting with `-` (an option to
/// `xdg-open`) from a confused daemon is never launched.
pub fn is_web_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The launchers to try for `url`, in order: each `:`-separated entry of `$BROWSER`
/// (split into words; `%s` in a word becomes the URL, `%%` a `%`; without `%s` the URL
/// is appended), then the platform opener.
pub fn launchers(browser_var: Option<&str>, url: &str) -> Vec<Launcher> {
    let mut out: Vec<Launcher> = browser_var
        .unwrap_or("")
        .split(':')
        .filter_map(|entry| {
            let mut words = entry.split_whitespace();
            let program = words.next()?.to_owned();
            let mut placed = false;
            let mut args: Vec<String> = words
                .map(|w| {
                    let (arg, had) = substitute(w, url);
                    placed |= had;
                    arg
                })
                .collect();
            if !placed {
                args.push(url.to_owned());
            }
            Some(Launcher { program, args })
        })
        .collect();
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    out.push(Launcher {
        program: opener.to_owned(),
        args: vec![url.to_owned()],
    });
    out
}

/// `printf`-style substitution of `%s` and `%%` in one word; reports whether `%s` occurred.
fn substitute(word: &str, url: &str) -> (String, bool) {
    let mut out = String::with_capacity(word.len());
    let mut placed = false;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => {
                out.push_str(url);
                placed = true;
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    (out, placed)
}

/// Tries each launcher until one starts. Returns whether one did; the caller prints the
/// URL either way, since a started launcher may still fail to show anything.
pub fn open(url: &str) -> bool {
    if !is_web_url(url) {
        return false;
    }
    let browser_var = std::env::var("BROWSER").ok();
    launchers(browser_var.as_deref(), url).into_iter().any(|l| {
        Command::new(&l.program)
            .args(&l.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C on tokctl must not close a browser it started.
            .process_group(0)
            .spawn()
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://idp.test/auth?a=1&b=%20";

    fn l(program: &str, args: &[&str]) -> Launcher {
        Launcher {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn default_opener() -> Launcher {
        let program = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        l(program, &[URL])
    }

    #[test]
    fn browser_var_entries_are_tried_in_order_then_the_opener() {
        let got = launchers(Some("firefox:chromium --new-window"), URL);
        assert_eq!(
            got,
            [
                l("firefox", &[URL]),
                l("chromium", &["--new-window", URL]),
                default_opener()
            ]
        );
    }

    #[test]
    fn percent_s_places_the_url_as_one_argument() {
        let got = launchers(Some("w3m -o x=100%% --url=%s"), URL);
        assert_eq!(got[0], l("w3m", &["-o", "x=100%", &format!("--url={URL}")]));
        // The URL's own `%20` is never re-expanded, and shell syntax stays inert.
        let got = launchers(Some("echo %s"), "https://x/%s$(id)");
        assert_eq!(got[0], l("echo", &["https://x/%s$(id)"]));
    }

    #[test]
    fn empty_entries_are_skipped() {
        assert_eq!(launchers(Some("::  :"), URL), [default_opener()]);
        assert_eq!(launchers(None, URL), [default_opener()]);
        assert_eq!(launchers(Some(""), URL), [default_opener()]);
    }

    #[test]
    fn only_web_urls_are_opened() {
        assert!(is_web_url(URL));
        assert!(is_web_url("HTTP://127.0.0.1:8080/x"));
        assert!(!is_web_url("file:///etc/passwd"));
        assert!(!is_web_url("--help"));
        assert!(!is_web_url("https://a b"));
        assert!(!is_web_url("https://a\x1b[2J"));
        assert!(!is_web_url("http"));
    }

    #[test]
    fn no_browser_without_a_display_on_linux() {
        let none = |_: &str| None;
        assert!(!should_open(true, &|_: &str| Some("firefox".into())));
        if cfg!(target_os = "macos") {
            assert!(should_open(false, &none));
        } else {
            assert!(!should_open(false, &none));
            assert!(!should_open(false, &|_: &str| Some(String::new())));
            assert!(should_open(false, &|k: &str| (k == "BROWSER").then(|| "w3m".into())));
            assert!(should_open(false, &|k: &str| (k == "DISPLAY").then(|| ":0".into())));
            assert!(should_open(false, &|k: &str| {
                (k == "WAYLAND_DISPLAY").then(|| "wayland-0".into())
            }));
        }
    }
}
