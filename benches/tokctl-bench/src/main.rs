//! `tokctl-bench`: the measuring tools behind `benches/run.sh` (issue #8). Each subcommand
//! prints one JSON object on stdout; the script turns them into the Markdown table and chart.
//!
//! ```text
//! tokctl-bench serve SOCKET BODY_BYTES                     bare hyper server (the ceiling)
//! tokctl-bench load SOCKET PATH CONNECTIONS SECONDS [keepalive|reconnect]
//! tokctl-bench storm SOCKET PROFILE CALLERS                invalidate, then CALLERS at once
//! tokctl-bench refresh SOCKET PROFILE[,PROFILE…] COUNT     invalidate + get, COUNT rounds
//! tokctl-bench runs SPEC_FILE RUNS WARMUP                  alternating whole-process timings
//! ```
//!
//! Nothing here prints a token: bodies are only counted, never shown.

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args.iter().map(String::as_str).collect::<Vec<_>>()) {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("usage: see the top of benches/tokctl-bench/src/main.rs");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tokctl-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand; `Ok(None)` for a usage error.
fn dispatch(argv: &[&str]) -> Result<Option<serde_json::Value>, Error> {
    Ok(Some(match argv {
        ["serve", socket, bytes] => rt()?.block_on(serve(socket, bytes.parse()?))?,
        ["load", socket, path, conns, secs, rest @ ..] => {
            let reconnect = matches!(rest, ["reconnect"]);
            let secs = Duration::from_secs_f64(secs.parse()?);
            rt()?.block_on(load(socket, path, conns.parse()?, secs, reconnect))?
        }
        ["storm", socket, profile, callers] => {
            rt()?.block_on(storm(socket, profile, callers.parse()?))?
        }
        ["refresh", socket, profile, count] => {
            rt()?.block_on(refresh(socket, profile, count.parse()?))?
        }
        ["runs", spec, runs, warmup] => runs_cmd(spec, runs.parse()?, warmup.parse()?)?,
        _ => return Ok(None),
    }))
}

/// Two worker threads, as the daemon has: the bare server may use both cores of a 2-core
/// machine, so the ceiling is the transport's, not that of a smaller runtime.
fn rt() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The transport ceiling: hyper's HTTP/1.1 server on a Unix socket answering every request
/// with a fixed JSON body of `bytes` bytes (the size of the daemon's token answer).
async fn serve(socket: &str, bytes: usize) -> Result<serde_json::Value, Error> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    // `{"access_token":"xxx…"}` padded to the daemon's answer size; never a real token.
    let pad = bytes.saturating_sub(r#"{"access_token":""}"#.len());
    let body = Bytes::from(format!(r#"{{"access_token":"{}"}}"#, "x".repeat(pad)));
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    Response::builder()
                        .header(CONTENT_TYPE, "application/json")
                        .body(Full::new(body))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// An HTTP/1.1 connection to a Unix socket.
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Connects, retrying while the listen queue is full (1000 callers at once overflow it).
async fn connect(socket: &str) -> Result<Sender, Error> {
    let mut delay = Duration::from_millis(1);
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && delay.as_secs() < 2 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request; returns the status after reading (and dropping) the whole body.
async fn request(sender: &mut Sender, method: Method, path: &str) -> Result<StatusCode, Error> {
    sender.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost")
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

/// `conns` connections each sending requests back to back for `secs`; the first fifth of
/// the time is warm-up and not counted. `reconnect`: a new connection per request, as
/// `tokctl get` does.
async fn load(
    socket: &str,
    path: &str,
    conns: usize,
    secs: Duration,
    reconnect: bool,
) -> Result<serde_json::Value, Error> {
    let start = Instant::now();
    let counted_from = start + secs / 5;
    let end = start + secs;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (socket, path) = (socket.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            let mut sender = connect(&socket).await?;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                if reconnect {
                    sender = connect(&socket).await?;
                }
                let ok = matches!(request(&mut sender, Method::GET, &path).await, Ok(s) if s.is_success());
                if t >= counted_from {
                    if ok {
                        lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                }
                if !ok && !reconnect {
                    sender = connect(&socket).await?;
                }
            }
            Ok::<_, Error>((lat_us, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    let window = (end - counted_from).as_secs_f64();
    lat.sort_unstable();
    Ok(json!({
        "connections": conns,
        "mode": if reconnect { "reconnect" } else { "keepalive" },
        "requests": lat.len(),
        "errors": errors,
        "rps": lat.len() as f64 / window,
        "p50_us": pct(&lat, 0.50),
        "p99_us": pct(&lat, 0.99),
    }))
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `POST /v1/invalidate` for `profile` on a fresh connection.
async fn invalidate_once(socket: &str, profile: &str) -> Result<(), Error> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = json!({ "profile": profile }).to_string();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/invalidate")
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let why = String::from_utf8_lossy(&body);
        return Err(format!("invalidate of {profile} answered {status}: {why}").into());
    }
    Ok(())
}

/// Invalidates `profile`, opens `callers` connections, then sends all their `get`s at
/// once. The script counts the token-endpoint requests this caused at the IdP.
async fn storm(socket: &str, profile: &str, callers: usize) -> Result<serde_json::Value, Error> {
    let path = format!("/v1/token?profile={profile}&min_ttl=30");
    let mut senders = Vec::with_capacity(callers);
    for _ in 0..callers {
        senders.push(connect(socket).await?);
    }
    invalidate_once(socket, profile).await?;
    let gate = Arc::new(tokio::sync::Barrier::new(callers));
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let (gate, path) = (gate.clone(), path.clone());
            tokio::spawn(async move {
                gate.wait().await;
                request(&mut s, Method::GET, &path).await
            })
        })
        .collect();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let key = match t.await? {
            Ok(s) => s.as_u16().to_string(),
            Err(e) => format!("error: {e}"),
        };
        *statuses.entry(key).or_default() += 1;
    }
    Ok(json!({
        "callers": callers,
        "elapsed_ms": start.elapsed().as_secs_f64() * 1000.0,
        "statuses": statuses,
    }))
}

/// `count` rounds, each profile once per round: invalidate, then time one `get` (which
/// refreshes at the IdP, and with rotation also saves the new refresh token in the keychain
/// before answering). Medians and quartiles per profile.
async fn refresh(socket: &str, profiles: &str, count: usize) -> Result<serde_json::Value, Error> {
    let profiles: Vec<&str> = profiles.split(',').collect();
    let mut sender = connect(socket).await?;
    let mut ms = vec![Vec::with_capacity(count); profiles.len()];
    // Alternating, like `runs`: a slow spell of the machine hits every profile alike.
    for _ in 0..count {
        for (i, profile) in profiles.iter().enumerate() {
            invalidate_once(socket, profile).await?;
            let path = format!("/v1/token?profile={profile}&min_ttl=30");
            let t = Instant::now();
            let status = request(&mut sender, Method::GET, &path).await?;
            if !status.is_success() {
                return Err(format!("get for {profile} answered {status}").into());
            }
            ms[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut out = serde_json::Map::new();
    for (profile, mut v) in profiles.iter().zip(ms) {
        let med = median(&mut v);
        out.insert(
            (*profile).to_owned(),
            json!({ "count": count, "median_ms": med, "p25_ms": quantile(&v, 0.25), "p75_ms": quantile(&v, 0.75) }),
        );
    }
    Ok(out.into())
}

/// The `q` quantile (nearest rank) of `sorted` (which `median` leaves sorted).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One command of a `runs` spec: a name, a stdin file (or `-` for /dev/null), argv.
struct Spec {
    name: String,
    stdin: Option<String>,
    argv: Vec<String>,
}

/// Whole-process wall time of each command, alternating: every round runs each command
/// once, in a shuffled order (seeded, so runs repeat), so background noise hits all alike
/// (hyperfine runs one command's runs back to back instead). The spec file has one command
/// per line: `NAME<TAB>STDIN_FILE|-<TAB>PROGRAM<TAB>ARG…`. Output goes to /dev/null.
fn runs_cmd(spec: &str, runs: usize, warmup: usize) -> Result<serde_json::Value, Error> {
    let specs: Vec<Spec> = std::fs::read_to_string(spec)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t').map(str::to_owned);
            let name = f.next().unwrap_or_default();
            let stdin = f.next().filter(|s| s != "-");
            Spec {
                name,
                stdin,
                argv: f.collect(),
            }
        })
        .collect();
    if specs.iter().any(|s| s.argv.is_empty()) {
        return Err("a spec line has no command".into());
    }
    // A failing command would time its error path: check each once, showing its stderr.
    for s in &specs {
        let out = command(s, Stdio::piped())?.output()?;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed ({}): {}",
                s.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); specs.len()];
    // A new order every round: in a fixed cycle each command would always follow the same
    // neighbour, and one that leaves the caches cold (gh) would always slow the same next one.
    let mut order: Vec<usize> = (0..specs.len()).collect();
    let mut rng = fastrand::Rng::with_seed(0x7c71);
    for round in 0..warmup + runs {
        rng.shuffle(&mut order);
        for &i in &order {
            let mut cmd = command(&specs[i], Stdio::null())?;
            let t = Instant::now();
            let status = cmd.status()?;
            let dt = t.elapsed().as_secs_f64() * 1000.0;
            if !status.success() {
                return Err(format!("`{}` failed ({status})", specs[i].name).into());
            }
            if round >= warmup {
                times[i].push(dt);
            }
        }
    }
    let mut out = serde_json::Map::new();
    for (s, mut t) in specs.iter().zip(times) {
        let med = median(&mut t);
        out.insert(
            s.name.clone(),
            json!({ "median_ms": med, "p25_ms": quantile(&t, 0.25), "p75_ms": quantile(&t, 0.75), "min_ms": t[0], "runs": t.len() }),
        );
    }
    Ok(out.into())
}

fn command(s: &Spec, stderr: Stdio) -> Result<Command, Error> {
    let mut cmd = Command::new(&s.argv[0]);
    cmd.args(&s.argv[1..]).stdout(Stdio::null()).stderr(stderr);
    match &s.stdin {
        Some(f) => cmd.stdin(std::fs::File::open(f)?),
        None => cmd.stdin(Stdio::null()),
    };
    Ok(cmd)
}
