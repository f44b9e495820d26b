//! The keychain logic (thread, timeouts, error mapping, read-back) against in-memory
//! keyring-core stores: `keyring_core::mock` with error injection, and small scripted
//! stores for what the mock cannot do (lose or alter writes, hang).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keyring_core::api::{CredentialApi, CredentialStoreApi};
use keyring_core::{mock, Credential, CredentialStore, Entry, Error as KError};
use secrecy::{ExposeSecret, SecretString};
use tokctl_store::{SecretKey, Store, StoreError, SERVICE};

const CANARY: &str = "CANARY-RT-6f1d0c2e";

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn platform_error(msg: &str) -> Box<dyn std::error::Error + Send + Sync> {
    msg.to_string().into()
}

/// A mock keychain: the store tokctl uses, and switches on the "connection" to it.
struct MockKeychain {
    mock: Arc<mock::Store>,
    /// While set, (re)connecting fails like a missing bus.
    down: Arc<AtomicBool>,
    /// How many times the store was built (the first open plus reconnects).
    builds: Arc<AtomicUsize>,
}

/// Opens a `Store` over a fresh mock store, so tests can reach the mock credentials the
/// store uses, inject errors into them and cut the connection.
async fn open_mock(timeout: Duration) -> (Store, MockKeychain) {
    let kc = MockKeychain {
        mock: mock::Store::new().unwrap(),
        down: Arc::new(AtomicBool::new(false)),
        builds: Arc::new(AtomicUsize::new(0)),
    };
    let (m, down, builds) = (kc.mock.clone(), kc.down.clone(), kc.builds.clone());
    let store = Store::open_keychain_with(
        move || {
            builds.fetch_add(1, Ordering::SeqCst);
            if down.load(Ordering::SeqCst) {
                return Err(KError::PlatformFailure(platform_error("no session bus")));
            }
            Ok(m.clone() as Arc<CredentialStore>)
        },
        "keychain (mock)",
        timeout,
    )
    .await
    .unwrap();
    (store, kc)
}

/// Makes the next operation on `key`'s mock credential fail with `err`.
fn inject(m: &mock::Store, key: &SecretKey, err: KError) {
    let entry = m.build(SERVICE, &key.username(), None).unwrap();
    let cred: &mock::Cred = entry.as_any().downcast_ref().unwrap();
    cred.set_error(err);
}

/// The raw value the mock holds for `key`.
fn raw(m: &mock::Store, key: &SecretKey) -> Option<String> {
    let entry = m.build(SERVICE, &key.username(), None).unwrap();
    match entry.get_password() {
        Ok(s) => Some(s),
        Err(KError::NoEntry) => None,
        Err(e) => panic!("mock read failed: {e}"),
    }
}

fn assert_no_canary(e: &StoreError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(CANARY), "secret leaked into error: {text}");
}

#[tokio::test]
async fn round_trip_uses_service_and_username_layout() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let m = &kc.mock;
    assert_eq!(store.describe(), "keychain (mock)");
    let key = SecretKey::refresh_token("work");
    assert!(store.get(&key).await.unwrap().is_none());
    store.set(&key, &secret(CANARY)).await.unwrap();
    assert_eq!(
        raw(m, &key).as_deref(),
        Some(CANARY),
        "stored under tokctl / work:refresh_token"
    );
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.expose_secret(), CANARY);
    // A rotation overwrites.
    store.set(&key, &secret("R2")).await.unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().expose_secret(),
        "R2"
    );
    // The other kind of the same profile is a different item.
    assert!(store
        .get(&SecretKey::client_secret("work"))
        .await
        .unwrap()
        .is_none());
    assert!(store.delete(&key).await.unwrap());
    assert!(!store.delete(&key).await.unwrap());
    assert!(store.get(&key).await.unwrap().is_none());
    assert!(!format!("{store:?}").contains(CANARY));
}

#[tokio::test]
async fn locked_is_locked_never_none() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let m = &kc.mock;
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret(CANARY)).await.unwrap();

    inject(
        m,
        &key,
        KError::NoStorageAccess(platform_error("collection is locked")),
    );
    let e = store.get(&key).await.unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e:?}");
    assert!(
        e.to_string().contains("refresh token for profile work"),
        "{e}"
    );
    assert_no_canary(&e);

    // Also when the item does not exist: locked is not "absent".
    let absent = SecretKey::refresh_token("other");
    inject(
        m,
        &absent,
        KError::NoStorageAccess(platform_error("collection is locked")),
    );
    assert!(matches!(
        store.get(&absent).await,
        Err(StoreError::Locked(_))
    ));

    // A locked write fails and changes nothing.
    inject(
        m,
        &key,
        KError::NoStorageAccess(platform_error("collection is locked")),
    );
    let e = store.set(&key, &secret("R2")).await.unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e:?}");
    assert_eq!(raw(m, &key).as_deref(), Some(CANARY));

    inject(
        m,
        &key,
        KError::NoStorageAccess(platform_error("collection is locked")),
    );
    assert!(matches!(
        store.delete(&key).await,
        Err(StoreError::Locked(_))
    ));
    assert_eq!(
        raw(m, &key).as_deref(),
        Some(CANARY),
        "a failed delete must keep the item"
    );
}

#[tokio::test]
async fn platform_failure_is_unavailable_never_none() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let m = &kc.mock;
    let present = SecretKey::client_secret("ci");
    let absent = SecretKey::client_secret("other");
    store.set(&present, &secret(CANARY)).await.unwrap();
    // The connection breaks and reconnecting fails too: for an absent and a present item,
    // that is Unavailable with the cause, never None; once the bus is back, calls work.
    for key in [&absent, &present] {
        kc.down.store(true, Ordering::SeqCst);
        inject(
            m,
            key,
            KError::PlatformFailure(platform_error("org.freedesktop.DBus.Error.NoReply")),
        );
        let e = store.get(key).await.unwrap_err();
        match &e {
            StoreError::Unavailable(msg) => {
                assert!(msg.contains("NoReply"), "keeps the cause: {msg}");
                assert!(msg.contains("store = \"file\""), "says what to do: {msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_no_canary(&e);
        kc.down.store(false, Ordering::SeqCst);
        assert!(store.get(key).await.is_ok());
    }
    kc.down.store(true, Ordering::SeqCst);
    inject(
        m,
        &absent,
        KError::PlatformFailure(platform_error("NoReply")),
    );
    assert!(store.get(&absent).await.is_err());
    // Still no connection: every call fails, with the reconnect's reason, never None.
    for key in [&absent, &present] {
        match store.get(key).await {
            Err(StoreError::Unavailable(msg)) => assert!(msg.contains("no session bus"), "{msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            store.delete(key).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.set(key, &secret("x")).await,
            Err(StoreError::Unavailable(_))
        ));
    }
    assert_eq!(
        raw(m, &present).as_deref(),
        Some(CANARY),
        "nothing changed while down"
    );
    // The bus is back: the next call reconnects and works.
    kc.down.store(false, Ordering::SeqCst);
    assert_eq!(
        store.get(&present).await.unwrap().unwrap().expose_secret(),
        CANARY
    );
    assert!(store.get(&absent).await.unwrap().is_none());
}

#[tokio::test]
async fn a_platform_failure_reconnects_and_retries_once() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret("R1")).await.unwrap();
    assert_eq!(kc.builds.load(Ordering::SeqCst), 1);
    inject(
        &kc.mock,
        &key,
        KError::PlatformFailure(platform_error("UnknownObject: session")),
    );
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().expose_secret(),
        "R1"
    );
    assert_eq!(kc.builds.load(Ordering::SeqCst), 2, "reconnected once");
    // Other errors are not retried.
    inject(
        &kc.mock,
        &key,
        KError::NoStorageAccess(platform_error("locked")),
    );
    assert!(matches!(store.get(&key).await, Err(StoreError::Locked(_))));
    assert_eq!(kc.builds.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn real_no_entry_is_none() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let m = &kc.mock;
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret("R1")).await.unwrap();
    inject(m, &key, KError::NoEntry);
    assert!(store.get(&key).await.unwrap().is_none());
    inject(m, &key, KError::NoEntry);
    assert!(!store.delete(&key).await.unwrap());
}

#[tokio::test]
async fn undecodable_and_ambiguous_items_are_corrupt_without_their_bytes() {
    let (store, kc) = open_mock(Duration::from_secs(5)).await;
    let m = &kc.mock;
    let key = SecretKey::refresh_token("work");
    let mut bad = CANARY.as_bytes().to_vec();
    bad.push(0xff);
    inject(m, &key, KError::BadEncoding(bad));
    let e = store.get(&key).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_no_canary(&e);

    inject(
        m,
        &key,
        KError::BadDataFormat(CANARY.as_bytes().to_vec(), platform_error("bad")),
    );
    let e = store.get(&key).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_no_canary(&e);

    let e1 = Entry::new_in_store(&(m.clone() as Arc<CredentialStore>), SERVICE, "x").unwrap();
    let e2 = Entry::new_in_store(&(m.clone() as Arc<CredentialStore>), SERVICE, "y").unwrap();
    inject(m, &key, KError::Ambiguous(vec![e1, e2]));
    match store.get(&key).await.unwrap_err() {
        StoreError::Corrupt(msg) => assert!(msg.contains("2 keychain items"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn open_failures() {
    let e = Store::open_keychain_with(
        || {
            Err(KError::PlatformFailure(platform_error(
                "no D-Bus session bus",
            )))
        },
        "keychain (mock)",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    match e {
        StoreError::Unavailable(msg) => {
            assert!(msg.contains("no D-Bus session bus"), "{msg}");
            assert!(msg.contains("store = \"file\""), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    let e = Store::open_keychain_with(
        || Err(KError::NoStorageAccess(platform_error("locked"))),
        "keychain (mock)",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e:?}");

    let t0 = Instant::now();
    let e = Store::open_keychain_with(
        || {
            std::thread::sleep(Duration::from_secs(3));
            mock::Store::new().map(|s| s as Arc<CredentialStore>)
        },
        "keychain (mock)",
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, StoreError::Timeout(d) if d == Duration::from_millis(200)),
        "{e:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "open must not wait for a hung provider"
    );

    // A generous timeout: with RUST_BACKTRACE set, the panic hook alone can take seconds.
    let e = Store::open_keychain_with(
        || panic!("store constructor panicked"),
        "keychain (mock)",
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}

/// What the scripted store does with writes.
#[derive(Clone, Copy)]
enum Writes {
    /// Reports success and stores nothing.
    Lose,
    /// Stores something other than what was given.
    Alter,
    /// Stores faithfully.
    Keep,
}

/// A store whose behaviour the test scripts; its reads can be held at a gate.
struct Scripted {
    writes: Writes,
    data: Mutex<HashMap<String, Vec<u8>>>,
    /// While `true`, reads block (a hung provider).
    gate: Mutex<bool>,
    gate_cv: Condvar,
}

impl Scripted {
    fn new(writes: Writes) -> Arc<Self> {
        Arc::new(Scripted {
            writes,
            data: Mutex::new(HashMap::new()),
            gate: Mutex::new(false),
            gate_cv: Condvar::new(),
        })
    }

    fn hold(&self, held: bool) {
        *self.gate.lock().unwrap() = held;
        self.gate_cv.notify_all();
    }

    fn raw(&self, user: &str) -> Option<Vec<u8>> {
        self.data.lock().unwrap().get(user).cloned()
    }
}

struct ScriptedCred {
    store: Arc<Scripted>,
    user: String,
}

impl CredentialApi for ScriptedCred {
    fn set_secret(&self, secret: &[u8]) -> keyring_core::Result<()> {
        let mut v = secret.to_vec();
        match self.store.writes {
            Writes::Lose => return Ok(()),
            Writes::Alter => v.truncate(v.len() / 2),
            Writes::Keep => {}
        }
        self.store.data.lock().unwrap().insert(self.user.clone(), v);
        Ok(())
    }

    fn get_secret(&self) -> keyring_core::Result<Vec<u8>> {
        let mut held = self.store.gate.lock().unwrap();
        while *held {
            held = self.store.gate_cv.wait(held).unwrap();
        }
        drop(held);
        self.store.raw(&self.user).ok_or(KError::NoEntry)
    }

    fn delete_credential(&self) -> keyring_core::Result<()> {
        match self.store.data.lock().unwrap().remove(&self.user) {
            Some(_) => Ok(()),
            None => Err(KError::NoEntry),
        }
    }

    fn get_credential(&self) -> keyring_core::Result<Option<Arc<Credential>>> {
        Ok(None)
    }

    fn get_specifiers(&self) -> Option<(String, String)> {
        Some((SERVICE.to_string(), self.user.clone()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn debug_fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScriptedCred({})", self.user)
    }
}

struct ScriptedStore(Arc<Scripted>);

impl CredentialStoreApi for ScriptedStore {
    fn vendor(&self) -> String {
        "scripted".into()
    }

    fn id(&self) -> String {
        "scripted".into()
    }

    fn build(
        &self,
        _service: &str,
        user: &str,
        _mods: Option<&HashMap<&str, &str>>,
    ) -> keyring_core::Result<Entry> {
        Ok(Entry::new_with_credential(Arc::new(ScriptedCred {
            store: self.0.clone(),
            user: user.to_string(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn debug_fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptedStore")
    }
}

async fn open_scripted(s: &Arc<Scripted>, timeout: Duration) -> Store {
    let s = s.clone();
    Store::open_keychain_with(
        move || Ok(Arc::new(ScriptedStore(s.clone())) as Arc<CredentialStore>),
        "keychain (scripted)",
        timeout,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_lost_write_is_an_error() {
    let s = Scripted::new(Writes::Lose);
    let store = open_scripted(&s, Duration::from_secs(5)).await;
    let key = SecretKey::refresh_token("work");
    let e = store.set(&key, &secret(CANARY)).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_no_canary(&e);
}

#[tokio::test]
async fn an_altered_write_is_an_error() {
    let s = Scripted::new(Writes::Alter);
    let store = open_scripted(&s, Duration::from_secs(5)).await;
    let key = SecretKey::refresh_token("work");
    let e = store.set(&key, &secret(CANARY)).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_no_canary(&e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_keychain_times_out_fails_fast_then_recovers() {
    let timeout = Duration::from_secs(2);
    let s = Scripted::new(Writes::Keep);
    let store = open_scripted(&s, timeout).await;
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret("R1")).await.unwrap();

    s.hold(true);
    let t0 = Instant::now();
    let e = store.get(&key).await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout(d) if d == timeout), "{e:?}");
    assert!(t0.elapsed() < timeout * 3, "took {:?}", t0.elapsed());

    // The thread is now stuck past the deadline: further calls fail at once, not after
    // another full timeout, and say so.
    let t1 = Instant::now();
    let e = store.set(&key, &secret("LATE")).await.unwrap_err();
    assert!(
        t1.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t1.elapsed()
    );
    match e {
        StoreError::Unavailable(msg) => assert!(msg.contains("has not answered"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // The provider wakes up: the thread serves again, and the refused write never happened.
    s.hold(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        match store.get(&key).await {
            Ok(v) => break v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    };
    assert_eq!(got.unwrap().expose_secret(), "R1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_in_the_queue_is_not_applied_later() {
    let timeout = Duration::from_secs(2);
    let s = Scripted::new(Writes::Keep);
    let store = open_scripted(&s, timeout).await;
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret("R1")).await.unwrap();

    s.hold(true);
    // The read gets stuck on the keychain thread; the write queues behind it (it is issued
    // before the read has been stuck for a full timeout, so it is not refused up front).
    let reader = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.get(&key).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = store.set(&key, &secret("STALE")).await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    assert!(matches!(reader.await.unwrap(), Err(StoreError::Timeout(_))));

    s.hold(false);
    // Let the thread drain its queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(&key).await.is_err() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.raw(&key.username()).as_deref(), Some(b"R1".as_slice()));
}
