//! `GET /v1/doctor`: the checks of `tokctl doctor` that need the daemon's parts (the
//! config parser, the keychain, the HTTP client). Each problem comes with its fix.

use crate::clock::boot_now;
use crate::config::Config;
use crate::engine::Engine;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokctl_proto::{CheckStatus, DoctorCheck, DoctorResponse, ProfileState};
use tokctl_store::SecretKind;

/// How long one check (a keychain read, one issuer's discovery) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A wall clock before this (2025-01-01) is certainly wrong: tokctl did not exist.
const EARLIEST_PLAUSIBLE_UNIX: u64 = 1_735_689_600;

/// Wall and boot clock drift past this since start-up means the wall clock was set.
const MAX_DRIFT: Duration = Duration::from_secs(120);

/// The profile name the keychain probe looks up; nothing is ever stored under it.
const PROBE_PROFILE: &str = "tokctl-doctor-probe";

static START: OnceLock<(SystemTime, Duration)> = OnceLock::new();

/// Records the start time on both clocks, for the clock check. Call once at start-up.
pub fn mark_start() {
    let _ = START.set((SystemTime::now(), boot_now()));
}

fn check(name: impl Into<String>, status: CheckStatus, detail: impl Into<String>) -> DoctorCheck {
    DoctorCheck {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

fn with_fix(mut c: DoctorCheck, fix: impl Into<String>) -> DoctorCheck {
    c.fix = Some(fix.into());
    c
}

const RELOAD_FIX: &str =
    "reload: `systemctl --user reload tokctld`, or `kill -HUP <pid of tokctld>`";

/// Runs every daemon-side check.
pub async fn run(engine: &Arc<Engine>, config_path: &Path) -> DoctorResponse {
    let mut checks = vec![config_check(engine, config_path)];
    checks.push(keychain_check(engine).await);
    checks.extend(profile_checks(engine).await);
    checks.push(clock_check());
    DoctorResponse {
        version: tokctl_proto::VERSION.to_owned(),
        pid: std::process::id(),
        checks,
    }
}

/// The file on disk parses, and is what the daemon runs with.
fn config_check(engine: &Engine, path: &Path) -> DoctorCheck {
    let shown = path.display();
    match Config::load(path) {
        Err(e) => with_fix(
            check("config", CheckStatus::Fail, e.to_string()),
            format!(
                "fix the line named above in {shown}, then {RELOAD_FIX}; until then tokctld \
                 keeps its last good config"
            ),
        ),
        Ok(c) if c != *engine.config() => with_fix(
            check(
                "config",
                CheckStatus::Warn,
                format!("{shown} changed since tokctld loaded it"),
            ),
            RELOAD_FIX,
        ),
        Ok(c) if c.profiles.is_empty() => with_fix(
            check(
                "config",
                CheckStatus::Warn,
                format!("no profiles in {shown}"),
            ),
            "add a [profile.NAME] section with issuer, client_id and grant (docs/configuration.md)",
        ),
        Ok(c) => check(
            "config",
            CheckStatus::Ok,
            format!("{shown}: {} profile(s)", c.profiles.len()),
        ),
    }
}

/// One read from the store answers (an absent item is an answer).
async fn keychain_check(engine: &Engine) -> DoctorCheck {
    let probe = engine.secrets.get(PROBE_PROFILE, SecretKind::RefreshToken);
    let res = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let backend = engine.secrets.describe().await;
    let fix = "start and unlock a Secret Service (gnome-keyring, KeePassXC) in this session \
               and make sure DBUS_SESSION_BUS_ADDRESS reaches it; or opt in to `store = \"file\"` \
               in the config";
    match res {
        Ok(Ok(_)) => check("keychain", CheckStatus::Ok, format!("{backend} answers")),
        Ok(Err(e)) => with_fix(
            check("keychain", CheckStatus::Fail, format!("{backend}: {e}")),
            fix,
        ),
        Err(_) => with_fix(
            check(
                "keychain",
                CheckStatus::Fail,
                format!(
                    "{backend} did not answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ),
            ),
            fix,
        ),
    }
}

/// Each profile's state, and its issuer's discovery document fetched afresh.
async fn profile_checks(engine: &Arc<Engine>) -> Vec<DoctorCheck> {
    let status = engine.status().await;
    let mut out = Vec::new();
    for p in &status.profiles {
        let name = tokctl_proto::printable(&p.name, 60);
        match p.state {
            ProfileState::LoginRequired => out.push(with_fix(
                check(
                    format!("profile {name}"),
                    CheckStatus::Fail,
                    p.last_error
                        .clone()
                        .unwrap_or_else(|| "login required".into()),
                ),
                format!("run `tokctl login {name}`"),
            )),
            ProfileState::LoggedOut => out.push(with_fix(
                check(
                    format!("profile {name}"),
                    CheckStatus::Warn,
                    format!("logged out ({})", p.grant),
                ),
                if p.grant == "client_credentials" {
                    format!("store the client secret: `tokctl secret set {name}`")
                } else {
                    format!("run `tokctl login {name}`")
                },
            )),
            s => out.push(check(
                format!("profile {name}"),
                CheckStatus::Ok,
                s.as_str(),
            )),
        }
    }
    let probes = status
        .profiles
        .iter()
        .map(|p| issuer_check(engine, &p.name));
    out.extend(futures_util::future::join_all(probes).await);
    out
}

async fn issuer_check(engine: &Arc<Engine>, profile: &str) -> DoctorCheck {
    let name = format!("issuer {}", tokctl_proto::printable(profile, 60));
    let prof = match engine.profile(Some(profile)) {
        Ok(p) => p,
        Err(e) => return check(name, CheckStatus::Warn, e.message),
    };
    let issuer = tokctl_proto::printable(&prof.cfg.issuer, 200);
    if prof.cfg.endpoints.token.is_some() {
        return check(
            name,
            CheckStatus::Ok,
            format!("{issuer}: explicit endpoints, no discovery"),
        );
    }
    let http = match prof.http() {
        Ok(h) => h,
        Err(e) => {
            return with_fix(
                check(name, CheckStatus::Fail, e.message),
                "check the profile's ca_file",
            )
        }
    };
    let fix = format!(
        "check the issuer URL in the config and that this machine reaches it \
         (`curl {}/.well-known/openid-configuration`)",
        issuer.trim_end_matches('/')
    );
    match tokio::time::timeout(CHECK_TIMEOUT, http.discover(&prof.cfg.issuer)).await {
        Ok(Ok(m)) => check(
            name,
            CheckStatus::Ok,
            format!(
                "{issuer}: discovery ok, token endpoint {}",
                m.token_endpoint
            ),
        ),
        Ok(Err(e)) => with_fix(check(name, CheckStatus::Fail, format!("{e}")), fix),
        Err(_) => with_fix(
            check(
                name,
                CheckStatus::Fail,
                format!("{issuer}: no answer within {}s", CHECK_TIMEOUT.as_secs()),
            ),
            fix,
        ),
    }
}

/// The wall clock is plausible and has not jumped against the boot clock since start-up.
fn clock_check() -> DoctorCheck {
    let now = SystemTime::now();
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let fix = "set the system clock right (enable NTP: `timedatectl set-ntp true`); token \
               expiry is judged by it";
    if unix < EARLIEST_PLAUSIBLE_UNIX {
        return with_fix(
            check(
                "clock",
                CheckStatus::Fail,
                format!("the system clock says {unix} (Unix seconds), before 2025"),
            ),
            fix,
        );
    }
    if let Some((wall0, boot0)) = START.get() {
        let wall = now.duration_since(*wall0).unwrap_or_default();
        let boot = boot_now().saturating_sub(*boot0);
        let drift = wall.abs_diff(boot);
        if drift > MAX_DRIFT {
            return with_fix(
                check(
                    "clock",
                    CheckStatus::Warn,
                    format!(
                        "the wall clock moved {}s against the boot clock since tokctld started",
                        drift.as_secs()
                    ),
                ),
                fix,
            );
        }
    }
    check(
        "clock",
        CheckStatus::Ok,
        "the wall clock is plausible and steady",
    )
}
