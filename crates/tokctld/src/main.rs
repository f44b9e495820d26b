//! `tokctld`: the tokctl daemon. Runs in the foreground; systemd, launchd or the
//! `tokctl` client start it.

mod clock;
mod doctor;
mod engine;
mod login;
mod notify;
// Linux with glibc only: elsewhere the C library's own pow costs nothing extra.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod pow;
mod secrets;
mod server;
mod socket;

use engine::Engine;
use secrets::Secrets;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokctl_store::Backend;
// The config parser lives in the library (lib.rs) so the fuzz targets reach it.
use tokctld::config::{self, Config, StoreKind};

/// The command line: two optional paths.
#[derive(Debug, Default, PartialEq)]
struct Args {
    /// Config file (default: $TOKCTL_CONFIG, else $XDG_CONFIG_HOME/tokctl/config.toml).
    config: Option<PathBuf>,
    /// Socket path (default: $TOKCTL_SOCKET, else $XDG_RUNTIME_DIR/tokctl/tokctld.sock).
    socket: Option<PathBuf>,
}

/// `--help`.
const HELP: &str = "\
tokctld: keeps OAuth refresh tokens in the OS keychain and serves fresh access tokens
to `tokctl` over a Unix socket.

Usage: tokctld [OPTIONS]

Options:
      --config <FILE>  Config file (default: $TOKCTL_CONFIG, else $XDG_CONFIG_HOME/tokctl/config.toml)
      --socket <PATH>  Socket path (default: $TOKCTL_SOCKET, else $XDG_RUNTIME_DIR/tokctl/tokctld.sock)
  -h, --help           Print help
  -V, --version        Print version
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Cli {
    Run(Args),
    Help,
    Version,
}

/// Parses the command line. `lexopt` rather than clap: two options do not need clap's
/// quarter megabyte of code resident in a daemon that stays up all day.
fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args::default();
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => a.config = Some(p.value()?.into()),
            Long("socket") => a.socket = Some(p.value()?.into()),
            Short('h') | Long("help") => return Ok(Cli::Help),
            Short('V') | Long("version") => return Ok(Cli::Version),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Cli::Run(a))
}

fn init_logging() {
    // `Targets` (a level, or `target=level,…`) rather than `EnvFilter`: EnvFilter's span
    // and field matching needs the regex engine, a quarter of a megabyte of code in an
    // always-resident daemon for syntax nobody uses here.
    use tracing_subscriber::filter::Targets;
    let spec = std::env::var("TOKCTL_LOG").ok();
    let parsed = spec.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(t)) => t.clone(),
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    // journald adds its own timestamps, and colour codes only clutter the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        registry
            .with(layer.with_ansi(false).event_format(JournalFormat))
            .init();
    } else {
        registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
    }
    if let Some(Err(e)) = parsed {
        tracing::warn!(
            "TOKCTL_LOG is not a level or a list of target=level ({e}); logging at info"
        );
    }
}

/// One plain line per event for journald: an sd-daemon(3) `<N>` priority prefix (so
/// `journalctl -p warning` works), the level, the message and its fields; no timestamp.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing::Level;
        let level = *event.metadata().level();
        let prio = match level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{prio}>{level} ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Keeps secrets out of core dumps and away from same-uid debuggers (Linux).
fn harden() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{setrlimit, DumpableBehavior, Resource, Rlimit};
        let _ = setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
        let _ = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable);
        // Each client connection is a descriptor until it is served or times out; the usual
        // soft limit of 1024 is easy for a burst of clients to reach, the hard limit is not.
        let Rlimit { current, maximum } = rustix::process::getrlimit(Resource::Nofile);
        // `None` is unlimited.
        let want = maximum.map_or(65536, |hard| hard.min(65536));
        if current.is_some_and(|c| c < want) {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum,
                },
            );
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Cli::Run(a)) => a,
        Ok(Cli::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Version) => {
            println!("tokctld {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tokctld: {e}; see tokctld --help");
            return ExitCode::from(2);
        }
    };
    // First, while no other thread exists: it edits the environment (LISTEN_*).
    let inherited = socket::inherited();
    // zbus (the keychain and notifications) runs its blocking calls on a private tokio
    // runtime with one worker per CPU core unless told otherwise: 64 idle threads on a
    // 64-core machine for a few D-Bus calls an hour. One is plenty. Set here, before any
    // thread exists; an explicit setting from the user is kept.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        std::env::set_var("TOKIO_WORKER_THREADS", "1");
    }
    one_malloc_arena();
    init_logging();
    harden();
    let uid = rustix::process::getuid().as_raw();
    let Some(config_path) = args.config.or_else(tokctl_proto::config_path) else {
        eprintln!("tokctld: neither TOKCTL_CONFIG nor HOME is set; cannot find the config file");
        return ExitCode::from(2);
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokctld: {e}");
            return ExitCode::from(2);
        }
    };
    let socket_path = args
        .socket
        .unwrap_or_else(|| tokctl_proto::socket_path(uid));
    let bound = match inherited {
        Ok(Some((listener, origin))) => socket::adopt(listener, origin, &socket_path, uid),
        Ok(None) => socket::bind(&socket_path, uid),
        Err(e) => Err(e),
    };
    let bound = match bound {
        Ok(b) => b,
        Err(e @ socket::SocketError::AlreadyRunning(..)) => {
            // Not an error: the client that started us will find the running daemon.
            eprintln!("tokctld: {e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tokctld: {e}");
            return ExitCode::from(1);
        }
    };
    // Two workers that steal work from each other, as a bare hyper server would have: any
    // worker serves any connection, so one preempted by a busy client on the same core does
    // not stall the connections it took. With connections pinned to one of two
    // current-thread runtimes, 16 keep-alive clients got 0.78-0.81x a bare hyper server's
    // requests per second, with this 0.88-0.89x (docs/benchmarks.md). A lone `tokctl get`
    // stays on one worker: a single woken task wakes no other. More than two buys nothing
    // for one user's clients and costs idle threads.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("tokctld-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokctld: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(serve(config, &config_path, &bound, uid));
    // An inherited socket stays: systemd or launchd keeps listening for the next start.
    bound.remove();
    // Do not wait for blocked workers (a keychain call stuck in D-Bus) to finish.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!("stopped");
    code
}

enum Signal {
    Stop,
    Reload,
}

/// Makes every thread allocate from glibc's main arena (each still has its own small
/// cache). By default each runtime worker gets an arena of its own, and memory freed in
/// one is never reused by another: with 100 profiles that was 110 KiB more resident
/// memory, against a budget of 8 MB, and no throughput was gained by it (benchmarks.md).
/// Call before any other thread exists.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread is running.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Forwards SIGTERM/SIGINT/SIGHUP from signal-hook's thread into the runtime.
fn signals() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<Signal>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut sigs = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in sigs.forever() {
                let msg = if s == SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Stop
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Names of profiles added, changed and removed between two configs, for the reload log.
fn profile_changes(old: &Config, new: &Config) -> String {
    let mut parts = Vec::new();
    let pick = |f: &dyn Fn(&str) -> bool, names: &mut dyn Iterator<Item = &String>| {
        names
            .filter(|n| f(n))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added = pick(&|n| !old.profiles.contains_key(n), &mut new.profiles.keys());
    let changed = pick(
        &|n| {
            old.profiles
                .get(n)
                .is_some_and(|p| Some(p) != new.profiles.get(n))
        },
        &mut new.profiles.keys(),
    );
    let removed = pick(&|n| !new.profiles.contains_key(n), &mut old.profiles.keys());
    for (what, names) in [("added", added), ("changed", changed), ("removed", removed)] {
        if !names.is_empty() {
            parts.push(format!("{what}: {names}"));
        }
    }
    if parts.is_empty() {
        "no profile changed".into()
    } else {
        parts.join("; ")
    }
}

fn reloader(
    engine: Arc<Engine>,
    path: PathBuf,
) -> impl Fn() -> Result<usize, String> + Send + Sync {
    move || match Config::load(&path) {
        Ok(c) => {
            let n = c.profiles.len();
            let old = engine.config();
            if c.store != old.store {
                tracing::warn!("`store` changed; restart tokctld for it to take effect");
            }
            let changes = profile_changes(&old, &c);
            engine.replace_config(c);
            tracing::info!(profiles = n, "config reloaded: {changes}");
            Ok(n)
        }
        Err(e) => {
            tracing::error!("config not reloaded, keeping the previous one: {e}");
            Err(e.to_string())
        }
    }
}

/// Builds the engine and serves the socket on the runtime's workers until told to stop.
async fn serve(
    config: Config,
    config_path: &Path,
    bound: &socket::BoundSocket,
    uid: u32,
) -> ExitCode {
    let backend = match config.store {
        StoreKind::Keychain => Backend::Keychain,
        StoreKind::File => Backend::File(secrets::file_store_path()),
    };
    let engine = Engine::new(config, Secrets::new(backend));
    doctor::mark_start();
    let reload = reloader(engine.clone(), config_path.to_path_buf());
    let mut sig = match signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tokctld: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let std_listener = match bound.listener.try_clone().and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokctld: socket: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::UnixListener::from_std(std_listener) {
        Ok(l) => socket::PeerCheckedListener::new(l, uid),
        Err(e) => {
            eprintln!("tokctld: socket: {e}");
            return ExitCode::from(1);
        }
    };
    let state = Arc::new(server::AppState {
        config_path: config_path.to_path_buf(),
        engine: engine.clone(),
        reload: Box::new(reloader(engine.clone(), config_path.to_path_buf())),
    });
    tokio::spawn(engine.clone().run_scheduler());
    tracing::info!(socket = %bound.path.display(), origin = bound.origin.as_str(), version = tokctl_proto::VERSION, "listening");
    let reload_path = config_path.to_path_buf();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grace_rx = stop_rx.clone();
    tokio::spawn(async move {
        while let Some(s) = sig.recv().await {
            match s {
                Signal::Reload => {
                    tracing::info!("SIGHUP: reloading {}", reload_path.display());
                    let _ = reload();
                }
                Signal::Stop => {
                    tracing::info!("shutting down: finishing requests in flight");
                    let _ = stop_tx.send(true);
                    break;
                }
            }
        }
    });
    let app = server::router(state.clone());
    let mut stop_rx = stop_rx;
    // Spawned, not awaited here: connections accepted on a worker are spawned onto that
    // worker's own queue, with no cross-thread wake-up.
    let mut server = tokio::spawn(server::serve(listener, app, state, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    // In-flight requests get a few seconds; a login still waiting for a user does not
    // hold the shutdown hostage.
    tokio::select! {
        r = &mut server => if let Err(e) = r {
            tracing::error!("the server task failed: {e}");
        },
        _ = async {
            let _ = grace_rx.wait_for(|s| *s).await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => server.abort(),
    };
    // A rotated refresh token the keychain refused earlier gets a last chance to be saved.
    if tokio::time::timeout(std::time::Duration::from_secs(5), engine.persist())
        .await
        .is_err()
    {
        tracing::error!("the secret store did not answer within 5s; an unsaved rotated refresh token is lost, log in again");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        parse_args(args.iter().map(std::ffi::OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn command_line() {
        assert_eq!(parse(&[]), Ok(Cli::Run(Args::default())));
        assert_eq!(
            parse(&["--config", "c.toml", "--socket=/run/s"]),
            Ok(Cli::Run(Args {
                config: Some("c.toml".into()),
                socket: Some("/run/s".into()),
            }))
        );
        assert_eq!(parse(&["-V"]), Ok(Cli::Version));
        assert_eq!(parse(&["--help"]), Ok(Cli::Help));
        let e = parse(&["--sockets", "x"]).unwrap_err();
        assert!(e.contains("--sockets"), "{e}");
        let e = parse(&["--config"]).unwrap_err();
        assert!(e.contains("--config"), "{e}");
        assert!(parse(&["extra"]).is_err());
    }

    #[test]
    fn log_filter_takes_a_level_or_per_target_levels() {
        use tracing_subscriber::filter::Targets;
        for ok in ["debug", "info,tokctld=debug", "warn,hyper=trace"] {
            assert!(ok.parse::<Targets>().is_ok(), "{ok}");
        }
        let t: Targets = "info,tokctld=debug".parse().unwrap();
        assert_eq!(
            t.default_level(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        assert!(t.would_enable("tokctld", &tracing::Level::DEBUG));
        assert!(!t.would_enable("hyper", &tracing::Level::DEBUG));
        assert!("tokctld=loud".parse::<Targets>().is_err());
    }
}
