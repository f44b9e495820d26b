//! The command line (DESIGN "Command-line contract").

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;
use tokctl_proto::TokenQuery;

/// `tokctl`: print OAuth access tokens kept fresh by the `tokctld` agent.
#[derive(Parser, Debug)]
#[command(name = "tokctl", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a valid access token.
    Get(GetArgs),
    /// Run a profile's login interactively and store the result.
    Login(LoginArgs),
    /// Revoke a profile's refresh token and forget it.
    Logout(LogoutArgs),
    /// Show the daemon and every profile.
    Status(StatusArgs),
    /// Run a command with the access token in its environment.
    Exec(ExecArgs),
    /// Print a kubectl ExecCredential (for `users[].user.exec` in a kubeconfig).
    Kube(KubeArgs),
    /// Manage client secrets of confidential clients.
    Secret {
        /// What to do with the secret.
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Check the config, socket, daemon, keychain, issuers and clock; say what to fix.
    Doctor(DoctorArgs),
    /// Print a shell completion script (e.g. `tokctl completions bash > ~/.local/share/bash-completion/completions/tokctl`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the tokctl(1) man page (roff).
    Man,
}

/// `tokctl doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the checks as JSON (`{"ok":…,"checks":[…]}`) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `tokctl secret …`.
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Read a client secret from stdin (one line) and store it in the keychain.
    Set {
        /// Profile the secret belongs to.
        profile: String,
    },
}

/// How `tokctl get` prints the token.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The token and a newline.
    Token,
    /// The token response as one line of JSON.
    Json,
    /// `Authorization: Bearer <token>`.
    Header,
    /// `TOKCTL_ACCESS_TOKEN=<token>`.
    Env,
}

/// `tokctl get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Profile to use (default: the config's `default_profile`).
    pub profile: Option<String>,
    /// Ask for a down-scoped token with this scope (repeatable).
    #[arg(long = "scope", value_name = "S")]
    pub scopes: Vec<String>,
    /// Ask for a token for this audience.
    #[arg(long, value_name = "A")]
    pub audience: Option<String>,
    /// Ask for a token for this RFC 8707 resource (repeatable).
    #[arg(long = "resource", value_name = "R")]
    pub resources: Vec<String>,
    /// The printed token stays valid at least this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Token)]
    pub format: Format,
}

impl GetArgs {
    /// The socket query for these arguments.
    pub fn query(&self) -> TokenQuery {
        TokenQuery {
            profile: self.profile.clone(),
            scopes: self.scopes.clone(),
            audience: self.audience.clone(),
            resources: self.resources.clone(),
            min_ttl_secs: ceil_secs(self.min_ttl),
        }
    }
}

/// Rounds up, so `--min-ttl 1500ms` still guarantees the full 1.5 s.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `tokctl login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Profile to log in to.
    pub profile: String,
    /// Do not open a browser; only print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// Print each login event as one JSON line on stdout instead of rendering it.
    #[arg(long)]
    pub json: bool,
    /// Log in again even when a valid refresh token is stored.
    #[arg(long)]
    pub force: bool,
    /// Password grant: the user name (needs --password-stdin).
    #[arg(long, value_name = "U", requires = "password_stdin")]
    pub username: Option<String>,
    /// Password grant: read the password from stdin (needs --username).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

/// `tokctl exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Profile to use.
    pub profile: String,
    /// The environment variable that carries the token.
    #[arg(long, value_name = "NAME", default_value = "TOKCTL_ACCESS_TOKEN")]
    pub env: String,
    /// The token stays valid at least this long when the command starts.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

impl ExecArgs {
    /// The socket query for these arguments.
    pub fn query(&self) -> TokenQuery {
        profile_query(&self.profile, self.min_ttl)
    }
}

/// `tokctl kube`.
#[derive(Args, Debug)]
pub struct KubeArgs {
    /// Profile to use.
    pub profile: String,
    /// The token stays valid at least this long (kubectl caches it until it expires).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,
}

impl KubeArgs {
    /// The socket query for these arguments.
    pub fn query(&self) -> TokenQuery {
        profile_query(&self.profile, self.min_ttl)
    }
}

fn profile_query(profile: &str, min_ttl: Duration) -> TokenQuery {
    TokenQuery {
        profile: Some(profile.to_owned()),
        min_ttl_secs: ceil_secs(min_ttl),
        ..TokenQuery::default()
    }
}

/// `tokctl logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Profile to log out of.
    pub profile: String,
    /// Only forget the refresh token locally; do not revoke it at the IdP.
    #[arg(long)]
    pub no_revoke: bool,
}

/// `tokctl status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (the default when stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tokctl").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn get_defaults_and_repeats() {
        let Command::Get(g) = parse(&["get"]).unwrap().command else {
            panic!("not get")
        };
        assert_eq!(g.format, Format::Token);
        let q = g.query();
        assert_eq!(q.profile, None);
        assert_eq!(q.min_ttl_secs, tokctl_proto::DEFAULT_MIN_TTL_SECS);

        let cli = parse(&[
            "get",
            "work",
            "--scope",
            "a",
            "--scope",
            "b",
            "--resource",
            "r1",
            "--resource",
            "r2",
            "--audience",
            "aud",
            "--min-ttl",
            "5m",
            "--format",
            "header",
        ])
        .unwrap();
        let Command::Get(g) = cli.command else {
            panic!("not get")
        };
        assert_eq!(g.format, Format::Header);
        let q = g.query();
        assert_eq!(q.profile.as_deref(), Some("work"));
        assert_eq!(q.scopes, ["a", "b"]);
        assert_eq!(q.resources, ["r1", "r2"]);
        assert_eq!(q.audience.as_deref(), Some("aud"));
        assert_eq!(q.min_ttl_secs, 300);
    }

    #[test]
    fn min_ttl_rounds_up_and_rejects_garbage() {
        let Command::Get(g) = parse(&["get", "--min-ttl", "1500ms"]).unwrap().command else {
            panic!("not get")
        };
        assert_eq!(g.query().min_ttl_secs, 2);
        let e = parse(&["get", "--min-ttl", "soon"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["get", "--format", "yaml"]).is_err());
    }

    #[test]
    fn username_and_password_stdin_need_each_other() {
        let e = parse(&["login", "p", "--username", "u"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["login", "p", "--password-stdin"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let Command::Login(l) = parse(&["login", "p", "--username", "u", "--password-stdin"])
            .unwrap()
            .command
        else {
            panic!("not login")
        };
        assert_eq!(l.username.as_deref(), Some("u"));
        assert!(l.password_stdin && !l.json && !l.no_browser && !l.force);
    }

    #[test]
    fn secret_is_never_an_argument() {
        // `secret set` takes the profile only: a second positional (a pasted secret) is an error.
        assert!(parse(&["secret", "set", "p"]).is_ok());
        let e = parse(&["secret", "set", "p", "hunter2"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert!(parse(&["secret", "set"]).is_err());
    }

    #[test]
    fn logout_and_status_flags() {
        let Command::Logout(l) = parse(&["logout", "p", "--no-revoke"]).unwrap().command else {
            panic!("not logout")
        };
        assert!(l.no_revoke);
        let Command::Status(s) = parse(&["status"]).unwrap().command else {
            panic!("not status")
        };
        assert!(!s.json);
    }

    #[test]
    fn doctor_completions_and_man_parse() {
        let Command::Doctor(d) = parse(&["doctor", "--json"]).unwrap().command else {
            panic!("not doctor")
        };
        assert!(d.json);
        for sh in ["bash", "zsh", "fish"] {
            assert!(matches!(
                parse(&["completions", sh]).unwrap().command,
                Command::Completions { .. }
            ));
        }
        assert!(parse(&["completions", "cmd.exe"]).is_err());
        assert!(matches!(parse(&["man"]).unwrap().command, Command::Man));
    }

    #[test]
    fn exec_needs_a_command_after_dashes() {
        assert!(parse(&["exec", "p"]).is_err());
        assert!(parse(&["exec", "p", "cmd"]).is_err());
        let Command::Exec(e) = parse(&["exec", "p", "--env", "T", "--", "curl", "-v"])
            .unwrap()
            .command
        else {
            panic!("not exec")
        };
        assert_eq!(e.env, "T");
        assert_eq!(e.command, ["curl", "-v"]);
        assert_eq!(e.query().profile.as_deref(), Some("p"));
        let Command::Kube(k) = parse(&["kube", "p"]).unwrap().command else {
            panic!("not kube")
        };
        assert_eq!(k.query().min_ttl_secs, 30);
    }
}
