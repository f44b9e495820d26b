//! Desktop notifications, best effort: a profile whose refresh token the IdP rejected
//! needs the user, who may not be looking at a terminal.
//!
//! Linux: `org.freedesktop.Notifications.Notify` on the session bus, through the zbus the
//! Secret Service store already links. macOS: `osascript -e 'display notification …'`.
//! The text names the profile and the command to run, never a token or an IdP message
//! (an `error_description` is the IdP's text, not ours to show on a lock screen).
//! `TOKCTL_NO_NOTIFY=1` turns notifications off.

use std::time::Duration;

/// How long a notification call may take before it is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The notification's title.
const SUMMARY: &str = "tokctl: login required";

/// The body for `profile`: what happened and the command that fixes it.
fn body(profile: &str) -> String {
    format!(
        "The identity provider no longer accepts the login of profile {}. Run `tokctl login {}`.",
        tokctl_proto::printable(profile, 60),
        tokctl_proto::printable(profile, 60)
    )
}

fn disabled() -> bool {
    std::env::var_os("TOKCTL_NO_NOTIFY").is_some_and(|v| v == "1")
}

/// Tells the desktop that `profile` needs a new login. Returns at once: the call runs on
/// its own thread, so a slow or missing notification service never delays a request.
pub fn login_required(profile: &str) {
    if disabled() {
        return;
    }
    let body = body(profile);
    let name = profile.to_owned();
    let spawned = std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || match send(SUMMARY, &body) {
            Ok(()) => tracing::info!(profile = %name, "desktop notification sent: login required"),
            // Headless machines have no notification service; that is normal, not an error.
            Err(e) => tracing::debug!(profile = %name, "no desktop notification: {e}"),
        });
    if let Err(e) = spawned {
        tracing::debug!("no desktop notification: cannot start a thread: {e}");
    }
}

#[cfg(target_os = "linux")]
fn send(summary: &str, body: &str) -> Result<(), String> {
    use std::collections::HashMap;
    use zbus::zvariant::Value;
    let conn = zbus::blocking::connection::Builder::session()
        .and_then(|b| b.method_timeout(CALL_TIMEOUT).build())
        .map_err(|e| format!("session bus: {e}"))?;
    let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
    // "critical" would stay on screen until dismissed; this needs action, not alarm.
    hints.insert("urgency", Value::U8(1));
    hints.insert("desktop-entry", Value::from("tokctl"));
    let actions: Vec<&str> = Vec::new();
    conn.call_method(
        Some("org.freedesktop.Notifications"),
        "/org/freedesktop/Notifications",
        Some("org.freedesktop.Notifications"),
        "Notify",
        // app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout
        &(
            "tokctl",
            0u32,
            "dialog-password",
            summary,
            body,
            actions,
            hints,
            -1i32,
        ),
    )
    .map(|_| ())
    .map_err(|e| format!("Notify: {e}"))
}

#[cfg(target_os = "macos")]
fn send(summary: &str, body: &str) -> Result<(), String> {
    use std::process::{Command, Stdio};
    // The texts go in as osascript arguments, never spliced into the script itself.
    let script =
        "on run argv\ndisplay notification (item 2 of argv) with title (item 1 of argv)\nend run";
    let mut child = Command::new("/usr/bin/osascript")
        .args(["-e", script, summary, body])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("osascript: {e}"))?;
    let end = std::time::Instant::now() + CALL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("osascript: {s}")),
            Ok(None) if std::time::Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("osascript did not finish".into());
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn send(_summary: &str, _body: &str) -> Result<(), String> {
    Err("no notification service on this platform".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_names_the_fix_and_escapes_the_profile() {
        let b = body("work");
        assert!(b.contains("tokctl login work"), "{b}");
        let b = body("x\x1b[2J");
        assert!(!b.contains('\x1b'), "{b:?}");
    }
}
