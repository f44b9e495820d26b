//! The keychain backend against a real Secret Service (gnome-keyring) on a private D-Bus
//! session bus that this test starts and stops itself.
//!
//! Needs `dbus-daemon`, `dbus-send`, `gnome-keyring-daemon` and `secret-tool`
//! (Debian: `apt-get install -y gnome-keyring libsecret-tools dbus-x11`). One test function,
//! because the store finds its bus through the process-wide `DBUS_SESSION_BUS_ADDRESS`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use secrecy::{ExposeSecret, SecretString};
use tokctl_store::{Backend, SecretKey, Store, StoreError};

const CANARY: &str = "CANARY-RT-a8c4f0e2-secret-service";
/// Well below the store timeout in this test (3 s): "failed at once" rather than "waited it out",
/// with room for a loaded CI machine.
const FAST: Duration = Duration::from_secs(1);
const INSTALL: &str =
    "install them with `apt-get install -y gnome-keyring libsecret-tools dbus-x11`";

/// A child process that is killed (by its pid) and reaped when the test ends, pass or fail.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> Pid {
        Pid::from_child(&self.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill_process(self.pid(), Signal::Cont);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); {INSTALL}"))
}

/// A session bus with no service activation: nothing provides org.freedesktop.secrets
/// until this test starts it (the system's activation file would start gnome-keyring on
/// demand and hide the "no provider" case).
fn start_bus(dir: &Path) -> (Proc, String) {
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir.join("bus").display()
        ),
    )
    .unwrap();
    let mut child = spawn(
        Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        "dbus-daemon",
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proc = Proc(child);
    let addr = line.trim().to_string();
    assert!(
        addr.starts_with("unix:"),
        "dbus-daemon printed no address: {line:?}"
    );
    (proc, addr)
}

fn secrets_owned(addr: &str) -> bool {
    let out = Command::new("dbus-send")
        .arg(format!("--bus={addr}"))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "string:org.freedesktop.secrets",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run dbus-send ({e}); {INSTALL}"));
    String::from_utf8_lossy(&out.stdout).contains("boolean true")
}

/// gnome-keyring, unlocked with a throwaway password, in fresh data and runtime dirs;
/// returns once it owns org.freedesktop.secrets (its `--unlock` returns before that).
fn start_keyring(env: &Env) -> Proc {
    let mut child = spawn(
        Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &env.addr)
            .env("XDG_DATA_HOME", &env.data)
            .env("XDG_RUNTIME_DIR", &env.run)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "gnome-keyring-daemon",
    );
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"pw").unwrap();
    } // closed: the daemon reads the password to EOF
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !secrets_owned(&env.addr) {
        assert!(
            Instant::now() < deadline,
            "gnome-keyring did not come up on the bus"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

struct Env {
    addr: String,
    data: PathBuf,
    run: PathBuf,
}

fn secret_tool(env: &Env, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn(
        Command::new("secret-tool")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &env.addr)
            .env("XDG_DATA_HOME", &env.data)
            .env("XDG_RUNTIME_DIR", &env.run)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "secret-tool",
    );
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn lookup(env: &Env, username: &str) -> Option<String> {
    let out = secret_tool(
        env,
        &["lookup", "service", "tokctl", "username", username],
        None,
    );
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// The `secret-tool search --all` listing of our items for `username`.
fn search(env: &Env, username: &str) -> String {
    let out = secret_tool(
        env,
        &["search", "--all", "service", "tokctl", "username", username],
        None,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn set_bus_env(addr: &str, run: &Path) {
    // Edition 2021: safe. This test is alone in its binary and sets it before each open.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", addr);
    std::env::set_var("XDG_RUNTIME_DIR", run);
}

/// Retries `get` until it succeeds (after a stall), or panics after `within`.
async fn get_eventually(store: &Store, key: &SecretKey, within: Duration) -> Option<SecretString> {
    let deadline = Instant::now() + within;
    loop {
        match store.get(key).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("keychain did not recover: {e}"),
        }
    }
}

#[test]
fn secret_service_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = tmp.path().join("data");
    std::fs::create_dir(&run).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. No session bus at all: a clear Unavailable, fast.
    set_bus_env(
        &format!("unix:path={}", tmp.path().join("no-bus").display()),
        &run,
    );
    let t0 = Instant::now();
    match rt.block_on(Store::open(Backend::Keychain)) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(
                msg.contains("gnome-keyring") && msg.contains("store = \"file\""),
                "{msg}"
            )
        }
        other => panic!("no bus: expected Unavailable, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );

    // 2. A bus, but no Secret Service on it: Unavailable, fast, never "no entry".
    let (_bus, addr) = start_bus(tmp.path());
    let env = Env { addr, data, run };
    set_bus_env(&env.addr, &env.run);
    let t0 = Instant::now();
    match rt.block_on(Store::open(Backend::Keychain)) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(
                msg.contains("gnome-keyring") && msg.contains("store = \"file\""),
                "{msg}"
            )
        }
        other => panic!("no provider: expected Unavailable, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );

    // 3. With gnome-keyring: round trip, visible to secret-tool under the documented names.
    let keyring = start_keyring(&env);
    let timeout = Duration::from_secs(3);
    let store = rt
        .block_on(Store::open_with_timeout(Backend::Keychain, timeout))
        .expect("open the Secret Service");
    assert_eq!(store.describe(), "keychain (Secret Service)");
    let rt_key = SecretKey::refresh_token("work");
    let cs_key = SecretKey::client_secret("work");

    rt.block_on(async {
        assert!(store.get(&rt_key).await.unwrap().is_none());
        store
            .set(&rt_key, &SecretString::from(CANARY))
            .await
            .unwrap();
        assert_eq!(
            store.get(&rt_key).await.unwrap().unwrap().expose_secret(),
            CANARY
        );
    });
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some(CANARY));
    let listing = search(&env, "work:refresh_token");
    assert!(
        listing.contains("label = tokctl refresh token for profile work"),
        "{listing}"
    );

    // A rotation replaces the item rather than adding a second one.
    rt.block_on(store.set(&rt_key, &SecretString::from("R2")))
        .unwrap();
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some("R2"));
    let listing = search(&env, "work:refresh_token");
    let items = listing
        .lines()
        .filter(|l| l.starts_with("label = "))
        .count();
    assert_eq!(items, 1, "one item after a rotation: {listing}");

    // The first write created the item through keyring-core; later ones (the rotation
    // above, this one) go straight to its remembered path (one D-Bus call).
    assert_eq!(store.direct_writes(), 1, "the rotation went direct");
    assert_eq!(rotate(&rt, &store, "R2b"), 2);
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some("R2b"));
    assert_eq!(
        rt.block_on(store.get(&rt_key))
            .unwrap()
            .unwrap()
            .expose_secret(),
        "R2b"
    );

    // The item deleted behind our back and another one created after it: the remembered
    // path is not written blindly into someone else's item; the write recreates ours.
    let out = secret_tool(
        &env,
        &[
            "clear",
            "service",
            "tokctl",
            "username",
            "work:refresh_token",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    store_other_app_secret(&env, "bystander", "bystander-secret");
    assert_eq!(
        rotate(&rt, &store, "R2"),
        2,
        "a deleted item's path is not written"
    );
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some("R2"));
    assert_eq!(other_app_secret(&env, "bystander"), "bystander-secret");
    assert_eq!(
        rotate(&rt, &store, "R2"),
        3,
        "the recreated item's path was learned"
    );
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some("R2"));

    // What secret-tool stores, the store reads.
    let out = secret_tool(
        &env,
        &[
            "store",
            "--label=by hand",
            "service",
            "tokctl",
            "username",
            "work:client_secret",
        ],
        Some("from secret-tool"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        rt.block_on(store.get(&cs_key))
            .unwrap()
            .unwrap()
            .expose_secret(),
        "from secret-tool"
    );

    // Client secrets are rarely rewritten: no paths are learned for them.
    let direct = store.direct_writes();
    for v in ["S1", "S2"] {
        rt.block_on(store.set(&cs_key, &SecretString::from(v)))
            .unwrap();
    }
    assert_eq!(store.direct_writes(), direct);
    assert_eq!(lookup(&env, "work:client_secret").as_deref(), Some("S2"));

    rt.block_on(async {
        assert!(store.delete(&cs_key).await.unwrap());
        assert!(!store.delete(&cs_key).await.unwrap());
        assert!(store.get(&cs_key).await.unwrap().is_none());
    });
    assert_eq!(lookup(&env, "work:client_secret"), None);
    assert_eq!(lookup(&env, "work:refresh_token").as_deref(), Some("R2"));

    // 4. A hung provider: the call times out, later calls fail fast, and when the provider
    //    answers again the store works again.
    kill_process(keyring.pid(), Signal::Stop).unwrap();
    let t0 = Instant::now();
    let e = rt.block_on(store.get(&rt_key)).unwrap_err();
    assert!(matches!(e, StoreError::Timeout(d) if d == timeout), "{e:?}");
    assert!(
        t0.elapsed() < timeout + Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    let t1 = Instant::now();
    let e = rt.block_on(store.get(&rt_key)).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(t1.elapsed() < FAST, "took {:?}", t1.elapsed());
    // Opening while the provider hangs: a timeout, and then no more threads piled up behind
    // it: a second open fails at once.
    let e = rt
        .block_on(Store::open_with_timeout(Backend::Keychain, timeout))
        .unwrap_err();
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    let t1 = Instant::now();
    match rt.block_on(Store::open_with_timeout(Backend::Keychain, timeout)) {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("has not returned"), "{msg}"),
        other => panic!("second open during a hang: {other:?}"),
    }
    assert!(t1.elapsed() < FAST, "took {:?}", t1.elapsed());
    kill_process(keyring.pid(), Signal::Cont).unwrap();
    let got = rt.block_on(get_eventually(&store, &rt_key, Duration::from_secs(10)));
    assert_eq!(got.unwrap().expose_secret(), "R2");

    // 5. A locked collection: Locked (the unlock prompt cannot be shown here), never None.
    let out = Command::new("dbus-send")
        .arg(format!("--bus={}", env.addr))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "lock: {out:?}");
    // gnome-keyring then tries to show an unlock prompt, which fails here (no prompter on
    // this bus) after anything from milliseconds to seconds: a store with a longer timeout
    // sees the outcome.
    let patient = rt
        .block_on(Store::open_with_timeout(
            Backend::Keychain,
            Duration::from_secs(20),
        ))
        .unwrap();
    let t0 = Instant::now();
    let e = rt.block_on(patient.get(&rt_key)).unwrap_err();
    eprintln!("locked keychain: {e:?} after {:?}", t0.elapsed());
    assert!(matches!(e, StoreError::Locked(_)), "locked keychain: {e:?}");
    assert!(!format!("{e} {e:?}").contains("R2"));
    drop(patient);

    // 6. The provider goes away under an open store: Unavailable, fast, never None.
    drop(keyring);
    wait_name_released(&env.addr);
    let t0 = Instant::now();
    let e = rt.block_on(store.get(&rt_key)).unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_)),
        "provider gone: {e:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(
        rt.block_on(store.set(&rt_key, &SecretString::from("R3"))),
        Err(StoreError::Unavailable(_))
    ));

    // 7. A new provider starts (a keyring restart): the same store reconnects by itself.
    let env2 = fresh_keyring_dirs(tmp.path(), &env.addr, 2);
    let keyring2 = start_keyring(&env2);
    rt.block_on(async {
        assert!(
            store.get(&rt_key).await.unwrap().is_none(),
            "a fresh keyring is empty"
        );
        store.set(&rt_key, &SecretString::from("R3")).await.unwrap();
    });
    assert_eq!(lookup(&env2, "work:refresh_token").as_deref(), Some("R3"));
    let direct = store.direct_writes();
    assert_eq!(rotate(&rt, &store, "R4"), direct + 1);
    assert_eq!(lookup(&env2, "work:refresh_token").as_deref(), Some("R4"));

    // 8. The keyring restarts while a path is remembered, and the new one hands out the same
    //    item paths to other items: the next write must not land in any of them.
    drop(keyring2);
    wait_name_released(&env.addr);
    let env3 = fresh_keyring_dirs(tmp.path(), &env.addr, 3);
    let _keyring3 = start_keyring(&env3);
    for i in 0..8 {
        store_other_app_secret(&env3, &format!("b{i}"), &format!("bystander-{i}"));
    }
    assert_eq!(
        rotate(&rt, &store, "R5"),
        direct + 1,
        "no direct write across a restart"
    );
    assert_eq!(lookup(&env3, "work:refresh_token").as_deref(), Some("R5"));
    for i in 0..8 {
        assert_eq!(
            other_app_secret(&env3, &format!("b{i}")),
            format!("bystander-{i}")
        );
    }
}

/// Data and runtime directories for the `n`th keyring on the bus at `addr`.
fn fresh_keyring_dirs(tmp: &Path, addr: &str, n: u32) -> Env {
    let (data, run) = (tmp.join(format!("data{n}")), tmp.join(format!("run{n}")));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    Env {
        addr: addr.to_owned(),
        data,
        run,
    }
}

/// Writes the refresh token of profile `work`; how many writes have gone direct since.
fn rotate(rt: &tokio::runtime::Runtime, store: &Store, value: &str) -> u64 {
    rt.block_on(store.set(
        &SecretKey::refresh_token("work"),
        &SecretString::from(value),
    ))
    .unwrap();
    store.direct_writes()
}

/// Stores a secret as another application would, under service `other`.
fn store_other_app_secret(env: &Env, username: &str, secret: &str) {
    let out = secret_tool(
        env,
        &[
            "store",
            "--label=another app",
            "service",
            "other",
            "username",
            username,
        ],
        Some(secret),
    );
    assert!(out.status.success(), "{out:?}");
}

/// What [`store_other_app_secret`] stored for `username`.
fn other_app_secret(env: &Env, username: &str) -> String {
    let out = secret_tool(
        env,
        &["lookup", "service", "other", "username", username],
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until a killed provider's bus name is released, so the next check sees its absence.
fn wait_name_released(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while secrets_owned(addr) {
        assert!(
            Instant::now() < deadline,
            "the killed gnome-keyring still owns its name"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
