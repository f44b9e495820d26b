//! `tokctl exec` (a command with the token in its environment) and `tokctl kube` (a
//! kubectl exec-plugin credential).

use crate::cli::{ExecArgs, KubeArgs};
use crate::conn::Daemon;
use crate::output::write_stdout;
use crate::Failure;
use serde::Deserialize;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};
use tokctl_proto::{printable, ApiError, ErrorCode, TokenQuery, TokenResponse};

/// The ExecCredential API version kubectl gets when it does not say which it wants.
const KUBE_V1: &str = "client.authentication.k8s.io/v1";
/// The older version kubectl 1.11–1.23 speak.
const KUBE_V1BETA1: &str = "client.authentication.k8s.io/v1beta1";

async fn token(query: &TokenQuery) -> Result<TokenResponse, ApiError> {
    let path = format!("/token?{}", query.to_query_string());
    let t: TokenResponse = Daemon::connect().await?.get(&path).await?;
    // Stricter than `get`: no spaces either (RFC 6750 b64token), as the token ends up in
    // an Authorization header of a program we do not control.
    if t.access_token.is_empty() || !t.access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::new(
            ErrorCode::Other,
            "tokctld returned a malformed access token; not using it",
        ));
    }
    Ok(t)
}

/// Whether `name` is a portable environment variable name (POSIX: letters, digits, `_`,
/// not starting with a digit).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `tokctl exec PROFILE [--env NAME] -- CMD…`: replaces this process with CMD, so its
/// exit status, signals and stdio are CMD's own. Returns only on failure.
pub async fn exec(args: &ExecArgs) -> Result<(), Failure> {
    if !valid_env_name(&args.env) {
        return Err(ApiError::new(
            ErrorCode::Usage,
            format!(
                "--env {}: not a valid environment variable name (letters, digits, _)",
                printable(&args.env, 100)
            ),
        )
        .into());
    }
    let t = token(&args.query()).await?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| ApiError::new(ErrorCode::Usage, "no command given after --"))?;
    let err = Command::new(program)
        .args(rest)
        .env(&args.env, &t.access_token)
        .exec();
    // Shell conventions: 127 not found, 126 found but not runnable.
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    eprintln!(
        "tokctl: cannot run {}: {err}",
        printable(&program.to_string_lossy(), 200)
    );
    std::process::exit(code);
}

/// What kubectl puts in `KUBERNETES_EXEC_INFO`; only the version matters here.
#[derive(Deserialize)]
struct ExecInfo {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
}

/// The ExecCredential version to answer with, from `KUBERNETES_EXEC_INFO` (absent: v1).
pub fn kube_api_version(exec_info: Option<&str>) -> Result<&'static str, ApiError> {
    let Some(raw) = exec_info.filter(|s| !s.trim().is_empty()) else {
        return Ok(KUBE_V1);
    };
    let info: ExecInfo = serde_json::from_str(raw).map_err(|e| {
        ApiError::new(
            ErrorCode::Usage,
            format!("KUBERNETES_EXEC_INFO is not valid JSON ({e}); is this kubectl?"),
        )
    })?;
    match info.api_version.as_deref() {
        None | Some(KUBE_V1) => Ok(KUBE_V1),
        Some(KUBE_V1BETA1) => Ok(KUBE_V1BETA1),
        Some(other) => Err(ApiError::new(
            ErrorCode::Usage,
            format!(
                "kubectl asked for ExecCredential {}; tokctl speaks {KUBE_V1} and {KUBE_V1BETA1}",
                printable(other, 100)
            ),
        )),
    }
}

/// The ExecCredential document for `t`.
pub fn exec_credential(api_version: &str, t: &TokenResponse) -> serde_json::Value {
    let mut status = json!({ "token": t.access_token });
    if let Some(exp) = t.expires_at {
        // kubectl re-runs the plugin once this time has passed.
        let at = UNIX_EPOCH + Duration::from_secs(exp);
        status["expirationTimestamp"] = json!(humantime::format_rfc3339_seconds(at).to_string());
    }
    json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": status,
    })
}

/// `tokctl kube PROFILE`.
pub async fn kube(args: &KubeArgs) -> Result<(), Failure> {
    let info = std::env::var("KUBERNETES_EXEC_INFO").ok();
    let version = kube_api_version(info.as_deref())?;
    let t = token(&args.query()).await?;
    let mut text = exec_credential(version, &t).to_string();
    text.push('\n');
    write_stdout(&text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(expires_at: Option<u64>) -> TokenResponse {
        TokenResponse {
            access_token: "abc".into(),
            token_type: "Bearer".into(),
            expires_at,
            scope: None,
            profile: "k".into(),
        }
    }

    #[test]
    fn env_names() {
        for ok in ["TOKEN", "_x", "A1_b"] {
            assert!(valid_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "É"] {
            assert!(!valid_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn kube_version_follows_exec_info() {
        assert_eq!(kube_api_version(None).unwrap(), KUBE_V1);
        assert_eq!(kube_api_version(Some("")).unwrap(), KUBE_V1);
        let beta = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}"#;
        assert_eq!(kube_api_version(Some(beta)).unwrap(), KUBE_V1BETA1);
        let e = kube_api_version(Some(r#"{"apiVersion":"client.authentication.k8s.io/v2"}"#))
            .unwrap_err();
        assert_eq!(e.error, ErrorCode::Usage);
        assert!(kube_api_version(Some("{not json")).is_err());
    }

    #[test]
    fn exec_credential_shape() {
        let v = exec_credential(KUBE_V1, &tok(Some(1_700_000_000)));
        assert_eq!(v["apiVersion"], KUBE_V1);
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], "abc");
        assert_eq!(v["status"]["expirationTimestamp"], "2023-11-14T22:13:20Z");
        let v = exec_credential(KUBE_V1, &tok(None));
        assert!(v["status"].get("expirationTimestamp").is_none());
    }
}
