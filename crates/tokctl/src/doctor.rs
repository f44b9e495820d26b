//! `tokctl doctor`: what is wrong with this setup, and how to fix it.
//!
//! The client checks what it can see without the daemon (the config file's presence, the
//! socket's directory and permissions, whether anything answers) and never starts
//! `tokctld`: a doctor that autostarts would hide "the service is not running". The
//! checks that need the keychain, the config parser or the network run in the daemon
//! (`GET /v1/doctor`), so this binary still links none of that code.

use crate::cli::DoctorArgs;
use crate::output::write_stdout;
use crate::Failure;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;
use tokctl_proto::{
    printable, ApiError, CheckStatus, DoctorCheck, DoctorResponse, ErrorCode, API_PREFIX,
};

/// The daemon bounds each of its checks at 10 s and runs the issuers in parallel.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(40);

const START_FIX: &str = "start it: `systemctl --user start tokctld.socket` (systemd), \
     `launchctl kickstart gui/$(id -u)/dev.tokctl.tokctld` (macOS), or run `tokctld`; \
     see docs/service.md";

fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> DoctorCheck {
    DoctorCheck {
        name: name.to_owned(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> DoctorCheck {
    DoctorCheck {
        fix: Some(fix.into()),
        ..check(name, CheckStatus::Fail, detail)
    }
}

fn shown(p: &Path) -> String {
    printable(&p.to_string_lossy(), 200)
}

/// `tokctl doctor`.
pub async fn run(args: &DoctorArgs, color: bool) -> Result<(), Failure> {
    let uid = rustix::process::getuid().as_raw();
    let socket = tokctl_proto::socket_path(uid);
    let mut checks = Vec::new();
    let socket_ok = socket_checks(&socket, uid, &mut checks);
    let daemon = if socket_ok {
        Some(ask_daemon(&socket).await)
    } else {
        None
    };
    match daemon {
        Some(Ok(d)) => {
            let mut c = check(
                "daemon",
                CheckStatus::Ok,
                format!("tokctld {}, pid {}", printable(&d.version, 40), d.pid),
            );
            if d.version != tokctl_proto::VERSION {
                c.status = CheckStatus::Warn;
                c.detail
                    .push_str(&format!("; this tokctl is {}", tokctl_proto::VERSION));
                c.fix = Some(
                    "restart the daemon after an upgrade: `systemctl --user restart tokctld`"
                        .into(),
                );
            }
            checks.push(c);
            checks.extend(d.checks.into_iter().map(|c| DoctorCheck {
                name: printable(&c.name, 80),
                detail: printable(&c.detail, 500),
                fix: c.fix.map(|f| printable(&f, 500)),
                ..c
            }));
        }
        Some(Err(c)) => {
            checks.push(c);
            checks.push(config_file_check());
        }
        None => checks.push(config_file_check()),
    }
    let failed: Vec<&DoctorCheck> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .collect();
    if args.json {
        let out = serde_json::json!({"ok": failed.is_empty(), "checks": checks});
        crate::output::write_json(&out.to_string())?;
    } else {
        write_stdout(&render(&checks, color))?;
    }
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let code = if failed.iter().any(|c| c.name == "daemon") {
        ErrorCode::DaemonUnreachable
    } else if first.name == "config" {
        ErrorCode::Config
    } else {
        ErrorCode::Other
    };
    Err(Failure {
        error: ApiError::new(
            code,
            format!(
                "doctor found {} problem(s): {}",
                failed.len(),
                failed
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        json_shown: true,
    })
}

/// Without a daemon: at least say whether the config file exists.
fn config_file_check() -> DoctorCheck {
    let Some(p) = tokctl_proto::config_path() else {
        return fail(
            "config",
            "neither TOKCTL_CONFIG nor HOME is set",
            "set HOME, or TOKCTL_CONFIG to the config file",
        );
    };
    match fs::metadata(&p) {
        Ok(m) if m.is_file() => check(
            "config",
            CheckStatus::Ok,
            format!("{} exists (tokctld checks its contents)", shown(&p)),
        ),
        Ok(_) => fail(
            "config",
            format!("{} is not a file", shown(&p)),
            "move it away and write the config file there",
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DoctorCheck {
            fix: Some("write it: see docs/configuration.md".into()),
            ..check(
                "config",
                CheckStatus::Warn,
                format!("no config file at {}", shown(&p)),
            )
        },
        Err(e) => fail(
            "config",
            format!("cannot read {}: {e}", shown(&p)),
            "make it readable by you",
        ),
    }
}

/// The socket's directory and the socket itself, as DESIGN requires them (0700 dir, 0600
/// socket, both ours, no symlinks). True when the socket is worth connecting to.
fn socket_checks(socket: &Path, uid: u32, out: &mut Vec<DoctorCheck>) -> bool {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        out.push(fail(
            "socket",
            format!("socket path {} has no directory", shown(socket)),
            "set TOKCTL_SOCKET to an absolute path",
        ));
        return false;
    };
    let d = shown(dir);
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.push(fail(
                "daemon",
                format!("not running: {d} does not exist"),
                START_FIX,
            ));
            return false;
        }
        Err(e) => {
            out.push(fail(
                "socket directory",
                format!("cannot inspect {d}: {e}"),
                "check the permissions of its parent",
            ));
            return false;
        }
        Ok(m) if m.file_type().is_symlink() => {
            out.push(fail(
                "socket directory",
                format!("{d} is a symlink"),
                format!("remove it (`rm {d}`) and restart tokctld, which creates the directory"),
            ));
            return false;
        }
        Ok(m) if !m.is_dir() => {
            out.push(fail(
                "socket directory",
                format!("{d} is not a directory"),
                "move it away and restart tokctld",
            ));
            return false;
        }
        Ok(m) if m.uid() != uid => {
            out.push(fail(
                "socket directory",
                format!("{d} belongs to uid {}, not to you (uid {uid})", m.uid()),
                "remove it, or set TOKCTL_SOCKET to a path in a directory of yours",
            ));
            return false;
        }
        Ok(m) if m.mode() & 0o077 != 0 => {
            out.push(fail(
                "socket directory",
                format!(
                    "{d} is open to other users (mode {:04o})",
                    m.mode() & 0o7777
                ),
                format!("`chmod 700 {d}`"),
            ));
            return false;
        }
        Ok(_) => out.push(check(
            "socket directory",
            CheckStatus::Ok,
            format!("{d} (0700, yours)"),
        )),
    }
    let s = shown(socket);
    match fs::symlink_metadata(socket) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.push(fail(
                "daemon",
                format!("not running: no socket at {s}"),
                START_FIX,
            ));
            false
        }
        Err(e) => {
            out.push(fail(
                "socket",
                format!("cannot inspect {s}: {e}"),
                "check its directory",
            ));
            false
        }
        Ok(m) if !m.file_type().is_socket() => {
            out.push(fail(
                "socket",
                format!("{s} is not a socket"),
                format!("move it away (`mv {s} {s}.old`) and start tokctld"),
            ));
            false
        }
        Ok(m) if m.uid() != uid => {
            out.push(fail(
                "socket",
                format!("{s} belongs to uid {}, not to you", m.uid()),
                "remove it and start tokctld",
            ));
            false
        }
        Ok(m) if m.mode() & 0o077 != 0 => {
            // Still private thanks to the 0700 directory, but not as DESIGN requires.
            out.push(DoctorCheck {
                fix: Some(format!(
                    "`chmod 600 {s}`; with systemd set SocketMode=0600 in tokctld.socket"
                )),
                ..check(
                    "socket",
                    CheckStatus::Warn,
                    format!("{s} has mode {:04o}, not 0600", m.mode() & 0o7777),
                )
            });
            true
        }
        Ok(_) => {
            out.push(check("socket", CheckStatus::Ok, format!("{s} (0600)")));
            true
        }
    }
}

/// `GET /v1/doctor`, without autostart. The error is the `daemon` check to show.
async fn ask_daemon(socket: &Path) -> Result<DoctorResponse, DoctorCheck> {
    let s = shown(socket);
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(fail(
                "daemon",
                format!("not running: {s} is left over from a daemon that stopped"),
                START_FIX,
            ))
        }
        Err(e) => {
            return Err(fail(
                "daemon",
                format!("cannot connect to {s}: {e}"),
                START_FIX,
            ))
        }
    };
    let lost = |e: &dyn std::fmt::Display| {
        fail(
            "daemon",
            format!(
                "tokctld on {s} did not answer: {}",
                printable(&e.to_string(), 200)
            ),
            "look at its log (`journalctl --user -u tokctld`) and restart it",
        )
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| lost(&e))?;
        tokio::spawn(conn);
        let req = Request::get(format!("{API_PREFIX}/doctor"))
            .header(HOST, HeaderValue::from_static("localhost"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| lost(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| lost(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| lost(&e))?
            .to_bytes();
        if !status.is_success() {
            return Err(DoctorCheck {
                fix: Some("upgrade tokctld to the version of this tokctl and restart it".into()),
                ..check(
                    "daemon",
                    CheckStatus::Warn,
                    format!("tokctld answered HTTP {status} to /v1/doctor (an older version?)"),
                )
            });
        }
        serde_json::from_slice::<DoctorResponse>(&body).map_err(|e| lost(&e))
    };
    match tokio::time::timeout(DOCTOR_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(lost(&format!(
            "no answer within {}s",
            DOCTOR_TIMEOUT.as_secs()
        ))),
    }
}

/// One line per check, and an indented `fix:` line under each problem.
pub fn render(checks: &[DoctorCheck], color: bool) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let (label, code) = match c.status {
            CheckStatus::Ok => ("ok  ", "32"),
            CheckStatus::Warn => ("warn", "33"),
            CheckStatus::Fail => ("FAIL", "31"),
        };
        let label = if color {
            format!("\x1b[{code}m{label}\x1b[0m")
        } else {
            label.to_owned()
        };
        out.push_str(&format!("{label}  {:<width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn problems_come_with_their_fix() {
        let checks = vec![
            check("socket", CheckStatus::Ok, "/run/x (0600)"),
            fail("keychain", "no Secret Service", "start gnome-keyring"),
        ];
        let out = render(&checks, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("ok    socket "), "{out}");
        assert!(lines[1].starts_with("FAIL  keychain "), "{out}");
        assert!(
            lines[2]
                .trim_start()
                .starts_with("fix: start gnome-keyring"),
            "{out}"
        );
        assert!(!out.contains('\x1b'));
        assert!(render(&checks, true).contains("\x1b[31mFAIL\x1b[0m"));
    }

    #[test]
    fn socket_checks_catch_open_modes_and_missing_daemons() {
        let uid = rustix::process::getuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        let mut out = Vec::new();
        assert!(!socket_checks(&dir.join("s.sock"), uid, &mut out));
        assert_eq!(out[0].name, "daemon");
        assert!(out[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("systemctl --user start"));

        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut out = Vec::new();
        assert!(!socket_checks(&dir.join("s.sock"), uid, &mut out));
        assert_eq!(out[0].status, CheckStatus::Fail);
        assert!(
            out[0].fix.as_deref().unwrap().contains("chmod 700"),
            "{out:?}"
        );

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o644)).unwrap();
        let mut out = Vec::new();
        assert!(socket_checks(&sock, uid, &mut out));
        assert_eq!(out[1].status, CheckStatus::Warn, "{out:?}");
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
        let mut out = Vec::new();
        assert!(socket_checks(&sock, uid, &mut out));
        assert!(out.iter().all(|c| c.status == CheckStatus::Ok), "{out:?}");
    }
}
