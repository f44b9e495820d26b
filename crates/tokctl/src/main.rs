//! `tokctl`: the thin client of the tokctl token agent. It talks HTTP/1.1 to `tokctld`
//! over a Unix socket (starting the daemon when needed) and prints what it answers.

mod browser;
mod cli;
mod commands;
mod doctor;
mod fastget;
mod generate;
mod input;
mod login;
mod output;
mod run;

use clap::Parser;
use cli::{Cli, Command, SecretCommand};
use std::io::IsTerminal;
use std::process::ExitCode;
// The helpers and the socket client live in the library (lib.rs) so fuzz targets reach them.
use tokctl::{conn, docker, git};
use tokctl_proto::{ApiError, ErrorCode, LoginEvent};

/// A failed command: its error, and whether the error is already on stdout as JSON.
pub struct Failure {
    /// What went wrong; its code gives the exit code.
    pub error: ApiError,
    /// True when the command already printed the error in its JSON output.
    pub json_shown: bool,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            json_shown: false,
        }
    }
}

/// How a command reports errors on stdout besides the stderr line.
#[derive(Clone, Copy)]
enum JsonErrors {
    None,
    /// The `ApiError` object (`get --format json`, `status --json`).
    Api,
    /// A `{"event":"error",…}` line (`login --json`).
    LoginEvent,
}

fn main() -> ExitCode {
    // Installed as (a link named) git-credential-tokctl or docker-credential-tokctl, this
    // binary is git's or docker's credential helper.
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "git-credential-tokctl" || name == "docker-credential-tokctl" {
        let rest: Vec<String> = args.collect();
        return match runtime() {
            Ok(rt) if name.starts_with("git") => rt.block_on(git::run(&rest)),
            Ok(rt) => rt.block_on(docker::run(&rest)),
            Err(e) => {
                eprintln!("{}", output::error_line(&e));
                ExitCode::from(1)
            }
        };
    }
    // The hot path: `tokctl get [PROFILE] [--format F]` with the daemon up, without clap
    // or a runtime (fastget.rs); every other case falls through to the full path.
    if let Some((result, json)) = fastget::try_get() {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => {
                report(&f, json);
                ExitCode::from(f.error.error.exit_code())
            }
        };
    }
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    let status_json = match &cli.command {
        Command::Status(s) => s.json || !std::io::stdout().is_terminal(),
        _ => false,
    };
    let json_errors = match &cli.command {
        Command::Get(g) if g.format == cli::Format::Json => JsonErrors::Api,
        Command::Status(_) if status_json => JsonErrors::Api,
        Command::Login(l) if l.json => JsonErrors::LoginEvent,
        Command::Doctor(d) if d.json => JsonErrors::Api,
        _ => JsonErrors::None,
    };
    let result = runtime()
        .map_err(Failure::from)
        .and_then(|rt| rt.block_on(run(&cli, status_json)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            report(&f, json_errors);
            ExitCode::from(f.error.error.exit_code())
        }
    }
}

/// The single-threaded runtime every command runs on.
fn runtime() -> Result<tokio::runtime::Runtime, ApiError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ApiError::new(ErrorCode::Other, format!("cannot start: {e}")))
}

async fn run(cli: &Cli, status_json: bool) -> Result<(), Failure> {
    match &cli.command {
        Command::Get(args) => commands::get(args).await,
        Command::Login(args) => login::run(args).await,
        Command::Logout(args) => commands::logout(args).await,
        Command::Status(_) => {
            let color = output::use_color(std::io::stdout().is_terminal());
            commands::status(status_json, color).await
        }
        Command::Exec(args) => run::exec(args).await,
        Command::Kube(args) => run::kube(args).await,
        Command::Secret {
            command: SecretCommand::Set { profile },
        } => commands::secret_set(profile).await,
        Command::Doctor(args) => {
            let color = output::use_color(std::io::stdout().is_terminal());
            doctor::run(args, color).await
        }
        Command::Completions { shell } => Ok(generate::completions(*shell)?),
        Command::Man => Ok(generate::man()?),
    }
}

/// One line on stderr, and the JSON form on stdout where the command speaks JSON.
fn report(f: &Failure, json: JsonErrors) {
    eprintln!("{}", output::error_line(&f.error));
    if f.json_shown {
        return;
    }
    let text = match json {
        JsonErrors::None => return,
        JsonErrors::Api => serde_json::to_string(&f.error),
        JsonErrors::LoginEvent => serde_json::to_string(&LoginEvent::Error {
            error: f.error.error,
            message: f.error.message.clone(),
        }),
    };
    if let Ok(text) = text {
        // The message may quote IdP or config text: no raw C1/bidi on a terminal (A11).
        let _ = output::write_json(&text);
    }
}
