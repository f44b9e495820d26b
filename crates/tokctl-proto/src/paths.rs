//! Where the socket, config file and non-secret state live (DESIGN "Paths").

use std::path::PathBuf;

/// File name of the daemon's socket inside its directory.
pub const SOCKET_FILE: &str = "tokctld.sock";

/// File name of the daemon's singleton lock, next to the socket.
pub const LOCK_FILE: &str = "tokctld.lock";

/// Reads an environment variable, treating empty values as unset.
fn non_empty(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<PathBuf> {
    env(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The socket path: `$TOKCTL_SOCKET`, else `$XDG_RUNTIME_DIR/tokctl/tokctld.sock`, else
/// `$TMPDIR/tokctl-$UID/tokctld.sock` (with `/tmp` when `TMPDIR` is unset).
///
/// `env` looks up an environment variable; `uid` is the caller's real uid. Both are
/// parameters so the rule can be tested without touching the process environment.
pub fn socket_path_from(env: &dyn Fn(&str) -> Option<String>, uid: u32) -> PathBuf {
    if let Some(p) = non_empty(env, "TOKCTL_SOCKET") {
        return p;
    }
    if let Some(run) = non_empty(env, "XDG_RUNTIME_DIR") {
        return run.join("tokctl").join(SOCKET_FILE);
    }
    let tmp = non_empty(env, "TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join(format!("tokctl-{uid}")).join(SOCKET_FILE)
}

/// [`socket_path_from`] with the process environment.
pub fn socket_path(uid: u32) -> PathBuf {
    socket_path_from(&|k| std::env::var(k).ok(), uid)
}

/// The config path: `$TOKCTL_CONFIG`, else `$XDG_CONFIG_HOME/tokctl/config.toml`, else
/// `$HOME/.config/tokctl/config.toml`. `None` when not even `HOME` is set.
pub fn config_path_from(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = non_empty(env, "TOKCTL_CONFIG") {
        return Some(p);
    }
    let base = non_empty(env, "XDG_CONFIG_HOME")
        .or_else(|| non_empty(env, "HOME").map(|h| h.join(".config")))?;
    Some(base.join("tokctl").join("config.toml"))
}

/// [`config_path_from`] with the process environment.
pub fn config_path() -> Option<PathBuf> {
    config_path_from(&|k| std::env::var(k).ok())
}

/// The directory for non-secret state (`$XDG_STATE_HOME/tokctl`, else
/// `$HOME/.local/state/tokctl`). `None` when not even `HOME` is set.
pub fn state_dir_from(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = non_empty(env, "XDG_STATE_HOME")
        .or_else(|| non_empty(env, "HOME").map(|h| h.join(".local").join("state")))?;
    Some(base.join("tokctl"))
}

/// [`state_dir_from`] with the process environment.
pub fn state_dir() -> Option<PathBuf> {
    state_dir_from(&|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn socket_prefers_explicit_then_runtime_then_tmp() {
        let e = env(&[("TOKCTL_SOCKET", "/x/s"), ("XDG_RUNTIME_DIR", "/run/u")]);
        assert_eq!(socket_path_from(&e, 7), PathBuf::from("/x/s"));
        let e = env(&[("XDG_RUNTIME_DIR", "/run/u")]);
        assert_eq!(
            socket_path_from(&e, 7),
            PathBuf::from("/run/u/tokctl/tokctld.sock")
        );
        let e = env(&[("XDG_RUNTIME_DIR", ""), ("TMPDIR", "/var/t")]);
        assert_eq!(
            socket_path_from(&e, 7),
            PathBuf::from("/var/t/tokctl-7/tokctld.sock")
        );
        let e = env(&[]);
        assert_eq!(
            socket_path_from(&e, 1000),
            PathBuf::from("/tmp/tokctl-1000/tokctld.sock")
        );
    }

    #[test]
    fn config_and_state_fall_back_to_home() {
        let e = env(&[("HOME", "/h")]);
        assert_eq!(
            config_path_from(&e),
            Some(PathBuf::from("/h/.config/tokctl/config.toml"))
        );
        assert_eq!(
            state_dir_from(&e),
            Some(PathBuf::from("/h/.local/state/tokctl"))
        );
        let e = env(&[("XDG_CONFIG_HOME", "/c"), ("TOKCTL_CONFIG", "")]);
        assert_eq!(
            config_path_from(&e),
            Some(PathBuf::from("/c/tokctl/config.toml"))
        );
        assert_eq!(config_path_from(&env(&[])), None);
    }
}
