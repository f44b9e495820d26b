//! The keychain backend: one dedicated thread owns the platform store.
//!
//! Keychain calls block (D-Bus round trips, Security.framework calls) and the Secret
//! Service client has no call timeout, so every call is a job for one thread and the async
//! caller waits for the reply with a deadline. One thread, not a pool: it serializes D-Bus
//! use and keeps writes in the order they were asked for, so an older refresh token can
//! never land after a newer one.
//!
//! When a call overruns its deadline the caller gets [`StoreError::Timeout`] and the thread
//! may stay stuck in it. While it is stuck past the deadline, new calls fail at once with
//! [`StoreError::Unavailable`] instead of queueing behind it, and jobs whose caller has
//! already given up are skipped rather than run late. If the stuck call ever returns (the
//! provider wakes up, or dies and the bus answers for it), the thread serves again. We do
//! not start a second thread beside a stuck one: two threads could reorder writes.
//!
//! When a call fails with a platform failure (the provider restarted and forgot our
//! session, the bus went away), the thread rebuilds the store and retries the call once,
//! so a long-running daemon recovers from a keyring restart without being restarted.
//!
//! On Linux the thread also remembers the Secret Service path of each item it writes, so a
//! rotation's write is one D-Bus call instead of two (see `item_paths`).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use keyring_core::{CredentialStore, Entry, Error as KError};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use zeroize::{Zeroize, Zeroizing};

use crate::item_paths::ItemPaths;
use crate::{SecretKey, SecretKind, StoreError, SERVICE};

/// Builds the platform store; runs on the keychain thread, again after a platform failure.
pub(crate) type MakeStore =
    Box<dyn Fn() -> keyring_core::Result<Arc<CredentialStore>> + Send + 'static>;

/// What the keychain thread holds while serving jobs.
struct Ctx {
    /// `None` after a failed rebuild; the next job tries again.
    store: Option<Arc<CredentialStore>>,
    make: MakeStore,
    /// Whether the store accepts a `label` modifier (Secret Service does, the mock does not).
    label: bool,
    /// Paths of items written before, for direct writes; `None` where the store has none.
    items: Option<ItemPaths>,
    /// An item just written through keyring-core, whose path to find once the writer has
    /// its answer.
    learn: Option<SecretKey>,
}

/// How much a keychain is trusted to have stored what a successful write call was given.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verify {
    /// The write's reply is the acknowledgement: the platform keychains (Secret Service's
    /// `CreateItem`/`SetSecret`, Keychain Services' `SecItemAdd`/`SecItemUpdate`) answer
    /// success only after storing the item, and report every failure as an error. A read-back
    /// there cost two more D-Bus round trips (a search and a `GetSecret`) per rotation.
    TrustReply,
    /// Read the item back and compare: for stores tokctl did not choose (tests, other
    /// `keyring-core` stores), which might report success for a write they lost.
    ReadBack,
}

type Job = Box<dyn FnOnce(&mut Ctx) + Send + 'static>;

/// Shared between the callers and the keychain thread.
#[derive(Default)]
struct WorkerState {
    /// When the job now running started; `None` while idle.
    busy_since: Mutex<Option<Instant>>,
    /// Writes that went straight to a remembered item path.
    direct_writes: AtomicU64,
}

impl WorkerState {
    fn busy_since(&self) -> Option<Instant> {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_busy(&self, v: Option<Instant>) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// A running keychain thread and how to reach it.
pub(crate) struct Keychain {
    jobs: mpsc::Sender<Job>,
    state: Arc<WorkerState>,
    timeout: Duration,
    description: String,
    verify: Verify,
}

/// What to tell the user when no keychain answers.
pub(crate) const UNAVAILABLE_HINT: &str = if cfg!(target_os = "macos") {
    "unlock your login keychain, or opt in to store = \"file\" in the tokctl config"
} else {
    "start a Secret Service such as gnome-keyring (it needs a D-Bus session bus), \
     or opt in to store = \"file\" in the tokctl config"
};

const LOCKED_HINT: &str = if cfg!(target_os = "macos") {
    "unlock the login keychain and retry"
} else {
    "unlock the keyring (log in to the desktop session, or run `gnome-keyring-daemon --unlock`) and retry"
};

impl Keychain {
    /// Starts the keychain thread, builds the store on it and waits up to `timeout` for that.
    pub(crate) async fn open(
        make: MakeStore,
        description: String,
        label: bool,
        verify: Verify,
        direct_writes: bool,
        timeout: Duration,
    ) -> Result<Keychain, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (open_tx, open_rx) = oneshot::channel();
        let state = Arc::new(WorkerState::default());
        let worker_state = state.clone();
        std::thread::Builder::new()
            .name("tokctl-keychain".into())
            .spawn(move || {
                let items = direct_writes.then(ItemPaths::default);
                worker(make, label, items, open_tx, rx, &worker_state)
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the keychain thread: {e}"))
            })?;
        match tokio::time::timeout(timeout, open_rx).await {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "opening the keychain failed unexpectedly; {UNAVAILABLE_HINT}"
            ))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(()))) => Ok(Keychain {
                jobs,
                state,
                timeout,
                description,
                verify,
            }),
        }
    }

    /// What `Store::describe` reports.
    pub(crate) fn describe(&self) -> &str {
        &self.description
    }

    /// What `Store::direct_writes` reports.
    pub(crate) fn direct_writes(&self) -> u64 {
        self.state.direct_writes.load(Ordering::Relaxed)
    }

    /// Runs `f` through [`Ctx::run`] on the keychain thread; see [`Keychain::call_ctx`].
    async fn call<T: Send + 'static>(
        &self,
        f: impl Fn(&Arc<CredentialStore>, bool) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_ctx(move |ctx| ctx.run(&f)).await
    }

    /// Runs `f` on the keychain thread and waits for its result, at most `self.timeout`.
    async fn call_ctx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(since) = self.state.busy_since() {
            let stuck = since.elapsed();
            if stuck >= self.timeout {
                return Err(StoreError::Unavailable(format!(
                    "the keychain has not answered an earlier call for {}s; restart its provider \
                     (e.g. gnome-keyring-daemon), or opt in to store = \"file\" in the tokctl config",
                    stuck.as_secs()
                )));
            }
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx: &mut Ctx| {
            // The caller timed out while this job waited in the queue: running it now could
            // write a value the caller already treats as failed and has moved past.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(ctx));
        });
        self.jobs.send(job).map_err(|_| {
            StoreError::Unavailable(format!(
                "the keychain thread has stopped; {UNAVAILABLE_HINT}"
            ))
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(StoreError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "a keychain call failed unexpectedly; {UNAVAILABLE_HINT}"
            ))),
            Ok(Ok(r)) => r,
        }
    }

    /// Reads a secret; `None` only when the keychain says there is no such item.
    pub(crate) async fn get(&self, key: &SecretKey) -> Result<Option<SecretString>, StoreError> {
        let key = key.clone();
        self.call(move |store, label| {
            let entry = entry(store, label, &key)?;
            match entry.get_secret() {
                Ok(bytes) => to_secret(Zeroizing::new(bytes), &key).map(Some),
                Err(KError::NoEntry) => Ok(None),
                Err(e) => Err(map_error(e, &key, "reading")),
            }
        })
        .await
    }

    /// Writes a secret: straight to its item when its path is known, else through
    /// keyring-core (with [`Verify::ReadBack`] then read back and compared).
    pub(crate) async fn set(
        &self,
        key: &SecretKey,
        value: &SecretString,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        let value = value.clone();
        let verify = self.verify;
        let state = self.state.clone();
        self.call_ctx(move |ctx| {
            let secret = value.expose_secret().as_bytes();
            if let Some(items) = &mut ctx.items {
                if items.write(&key.username(), secret) {
                    state.direct_writes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
            let written = ctx.run(&|store, label| {
                write_checked(&entry(store, label, &key)?, &key, secret, verify)
            });
            // Refresh tokens only: they are rewritten at every rotation, client secrets
            // hardly ever, and a daemon that never rotates then opens no second session.
            if written.is_ok() && ctx.items.is_some() && key.kind == SecretKind::RefreshToken {
                ctx.learn = Some(key);
            }
            written
        })
        .await
    }

    /// Deletes a secret; `false` when there was none.
    pub(crate) async fn delete(&self, key: &SecretKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.call_ctx(move |ctx| {
            if let Some(items) = &mut ctx.items {
                items.forget(&key.username());
            }
            ctx.run(&|store, label| {
                let entry = entry(store, label, &key)?;
                match entry.delete_credential() {
                    Ok(()) => Ok(true),
                    Err(KError::NoEntry) => Ok(false),
                    Err(e) => Err(map_error(e, &key, "deleting")),
                }
            })
        })
        .await
    }
}

/// Writes `secret` through keyring-core; with [`Verify::ReadBack`] then reads it back and
/// compares.
fn write_checked(
    entry: &Entry,
    key: &SecretKey,
    secret: &[u8],
    verify: Verify,
) -> Result<(), StoreError> {
    entry
        .set_secret(secret)
        .map_err(|e| map_error(e, key, "writing"))?;
    if verify == Verify::TrustReply {
        return Ok(());
    }
    let back = match entry.get_secret() {
        Ok(b) => Zeroizing::new(b),
        Err(KError::NoEntry) => {
            return Err(StoreError::Corrupt(format!(
                "the {key} was written to the keychain but cannot be found when read back"
            )))
        }
        Err(e) => return Err(map_error(e, key, "reading back")),
    };
    if back.as_slice() != secret {
        return Err(StoreError::Corrupt(format!(
            "the {key} read back from the keychain differs from what was written"
        )));
    }
    Ok(())
}

/// One keychain operation: gets the store and whether to set labels.
type Op<'a, T> = &'a dyn Fn(&Arc<CredentialStore>, bool) -> Result<T, StoreError>;

impl Ctx {
    /// Finds the path of the item last written through keyring-core, for direct writes.
    fn learn_pending(&mut self) {
        let (Some(key), Some(store), Some(items)) =
            (self.learn.take(), &self.store, &mut self.items)
        else {
            return;
        };
        if let Ok(entry) = entry(store, self.label, &key) {
            items.learn(&key.username(), &entry);
        }
    }

    /// Runs one operation; after a platform failure, rebuilds the store and retries once.
    fn run<T>(&mut self, op: Op<'_, T>) -> Result<T, StoreError> {
        if let Some(store) = &self.store {
            match op(store, self.label) {
                Err(StoreError::Unavailable(why)) => {
                    // Dropped before rebuilding, so the old connection is closed first.
                    self.store = None;
                    // If reconnecting fails too, the operation's own failure says more.
                    let store = self.rebuild().map_err(|_| StoreError::Unavailable(why))?;
                    return op(&store, self.label);
                }
                other => return other,
            }
        }
        let store = self.rebuild()?;
        op(&store, self.label)
    }

    fn rebuild(&mut self) -> Result<Arc<CredentialStore>, StoreError> {
        match catch_unwind(AssertUnwindSafe(&self.make)) {
            Ok(Ok(store)) => {
                self.store = Some(store.clone());
                Ok(store)
            }
            Ok(Err(e)) => Err(map_open_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "reopening the keychain failed unexpectedly; {UNAVAILABLE_HINT}"
            ))),
        }
    }
}

fn entry(store: &Arc<CredentialStore>, label: bool, key: &SecretKey) -> Result<Entry, StoreError> {
    let user = key.username();
    let built = if label {
        let label = key.label();
        let mods = HashMap::from([("label", label.as_str())]);
        store.build(SERVICE, &user, Some(&mods))
    } else {
        store.build(SERVICE, &user, None)
    };
    built.map_err(|e| map_error(e, key, "addressing"))
}

/// The keychain thread: builds the store, reports that, then serves jobs until every
/// `Keychain` handle is dropped. The store is created and dropped here, never on an async
/// executor thread.
fn worker(
    make: MakeStore,
    label: bool,
    items: Option<ItemPaths>,
    open_tx: oneshot::Sender<Result<(), StoreError>>,
    rx: mpsc::Receiver<Job>,
    state: &WorkerState,
) {
    let store = match catch_unwind(AssertUnwindSafe(&make)) {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => {
            let _ = open_tx.send(Err(map_open_error(e)));
            return;
        }
        Err(_) => return, // dropping open_tx tells the opener
    };
    if open_tx.send(Ok(())).is_err() {
        return; // the opener timed out and went away
    }
    let mut ctx = Ctx {
        store: Some(store),
        make,
        label,
        items,
        learn: None,
    };
    while let Ok(job) = rx.recv() {
        state.set_busy(Some(Instant::now()));
        // A panicking store must not take the thread down; the job's reply sender is dropped
        // in the unwind, which its caller sees as a failed call.
        let _ = catch_unwind(AssertUnwindSafe(|| job(&mut ctx)));
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.learn_pending()));
        state.set_busy(None);
    }
}

/// Turns the bytes of an item into a secret, copying once into an exact-size buffer.
fn to_secret(bytes: Zeroizing<Vec<u8>>, key: &SecretKey) -> Result<SecretString, StoreError> {
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(SecretString::from(s)),
        Err(_) => Err(StoreError::Corrupt(format!(
            "the keychain item for the {key} is not valid UTF-8; store it again"
        ))),
    }
}

/// Maps a failure to build the platform store.
fn map_open_error(e: KError) -> StoreError {
    match e {
        KError::NoStorageAccess(inner) => StoreError::Locked(format!(
            "the keychain refused access ({inner}); {LOCKED_HINT}"
        )),
        KError::PlatformFailure(inner) => StoreError::Unavailable(format!(
            "no keychain answered ({inner}); {UNAVAILABLE_HINT}"
        )),
        other => StoreError::Unavailable(format!(
            "cannot open the keychain ({}); {UNAVAILABLE_HINT}",
            safe_text(other)
        )),
    }
}

/// Maps a keyring error of one operation. `NoEntry` is handled by the callers, since its
/// meaning depends on the operation; here it can only mean an item vanished mid-call.
fn map_error(e: KError, key: &SecretKey, doing: &str) -> StoreError {
    match e {
        KError::NoStorageAccess(inner) => StoreError::Locked(format!(
            "{doing} the {key}: the keychain refused access ({inner}); {LOCKED_HINT}"
        )),
        KError::PlatformFailure(inner) => {
            StoreError::Unavailable(format!("{doing} the {key}: {inner}; {UNAVAILABLE_HINT}"))
        }
        KError::Ambiguous(items) => StoreError::Corrupt(format!(
            "{doing} the {key}: {} keychain items have service {SERVICE} and username {}; \
             delete them (e.g. `secret-tool clear service {SERVICE} username {}`) and store the secret again",
            items.len(),
            key.username(),
            key.username()
        )),
        KError::BadEncoding(_) | KError::BadDataFormat(..) => StoreError::Corrupt(format!(
            "{doing} the {key}: the keychain item is malformed ({}); store it again",
            safe_text(e)
        )),
        KError::NoEntry => StoreError::Corrupt(format!(
            "{doing} the {key}: the keychain item disappeared during the call"
        )),
        other => StoreError::Unavailable(format!("{doing} the {key}: {}; {UNAVAILABLE_HINT}", safe_text(other))),
    }
}

/// A description of a keyring error that can never contain secret bytes: the variants that
/// carry item data (and `Ambiguous`, whose entries we do not format) are named, not shown;
/// item data is zeroized.
fn safe_text(e: KError) -> String {
    match e {
        KError::BadEncoding(mut bytes) => {
            bytes.zeroize();
            "not valid UTF-8".into()
        }
        KError::BadDataFormat(mut bytes, _) => {
            bytes.zeroize();
            "unexpected data format".into()
        }
        KError::Ambiguous(items) => format!("{} matching items", items.len()),
        e @ (KError::PlatformFailure(_)
        | KError::NoStorageAccess(_)
        | KError::NoEntry
        | KError::BadStoreFormat(_)
        | KError::TooLong(..)
        | KError::Invalid(..)
        | KError::NoDefaultStore
        | KError::NotSupportedByStore(_)) => e.to_string(),
        _ => "unexpected keychain error".into(),
    }
}

/// Opens of the platform keychain that timed out and whose store build has still not
/// returned. While there is one, the provider is hung and further opens fail at once, so a
/// daemon that keeps retrying `open` does not pile up threads stuck in it.
static STUCK_OPENS: AtomicUsize = AtomicUsize::new(0);

/// How one open's first store build and its opener's timeout meet; both sides update it
/// under its lock, so a build that returns just as its opener gives up is counted right.
#[derive(Default)]
struct OpenState {
    built: bool,
    abandoned: bool,
}

/// Marks an open's first build as returned (also when it panics).
struct FirstBuild(Option<Arc<Mutex<OpenState>>>);

impl Drop for FirstBuild {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.built = true;
            if s.abandoned {
                STUCK_OPENS.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Opens the platform keychain.
pub(crate) async fn open_platform(timeout: Duration) -> Result<Keychain, StoreError> {
    if STUCK_OPENS.load(Ordering::SeqCst) > 0 {
        return Err(StoreError::Unavailable(
            "an earlier attempt to open the keychain has not returned; restart its provider \
             (e.g. gnome-keyring-daemon), or opt in to store = \"file\" in the tokctl config"
                .into(),
        ));
    }
    let (make, description, label) = platform()?;
    let state = Arc::new(Mutex::new(OpenState::default()));
    let first = Mutex::new(Some(state.clone()));
    let tracked: MakeStore = Box::new(move || {
        let _first = FirstBuild(first.lock().unwrap_or_else(|p| p.into_inner()).take());
        make()
    });
    let opened = Keychain::open(
        tracked,
        description.to_owned(),
        label,
        Verify::TrustReply,
        cfg!(target_os = "linux"),
        timeout,
    )
    .await;
    if let Err(StoreError::Timeout(_)) = opened {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.built {
            s.abandoned = true;
            STUCK_OPENS.fetch_add(1, Ordering::SeqCst);
        }
    }
    opened
}

/// The platform keychain: how to build it, how to describe it, whether it takes labels.
#[cfg(target_os = "linux")]
fn platform() -> Result<(MakeStore, &'static str, bool), StoreError> {
    let make: MakeStore = Box::new(|| {
        zbus_secret_service_keyring_store::Store::new().map(|s| s as Arc<CredentialStore>)
    });
    Ok((make, "keychain (Secret Service)", true))
}

/// The platform keychain: how to build it, how to describe it, whether it takes labels.
#[cfg(target_os = "macos")]
fn platform() -> Result<(MakeStore, &'static str, bool), StoreError> {
    let make: MakeStore = Box::new(|| {
        apple_native_keyring_store::keychain::Store::new().map(|s| s as Arc<CredentialStore>)
    });
    Ok((make, "keychain (macOS Keychain)", false))
}

/// The platform keychain: none is supported here.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn platform() -> Result<(MakeStore, &'static str, bool), StoreError> {
    Err(StoreError::Unavailable(
        "tokctl has no keychain support on this platform; opt in to store = \"file\" in the tokctl config"
            .into(),
    ))
}
