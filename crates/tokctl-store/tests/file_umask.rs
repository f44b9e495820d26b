//! The secrets file is 0600 and its new directory 0700 even under `umask 000`. Alone in its
//! own test binary, because the umask is process-wide.

use std::fs;
use std::os::unix::fs::MetadataExt;

use rustix::fs::Mode;
use secrecy::SecretString;
use tokctl_store::{Backend, SecretKey, Store};

#[tokio::test]
async fn modes_hold_under_umask_000() {
    rustix::process::umask(Mode::empty());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/dir");
    let path = dir.join("secrets.json");
    let store = Store::open(Backend::File(path.clone())).await.unwrap();
    let key = SecretKey::refresh_token("work");
    store.set(&key, &SecretString::from("R1")).await.unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        fs::metadata(dir.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    // And after an atomic replacement.
    store.set(&key, &SecretString::from("R2")).await.unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    // Sanity check that the umask really was 000 for this process.
    let probe = tmp.path().join("probe");
    fs::File::create(&probe).unwrap();
    assert_eq!(fs::metadata(&probe).unwrap().mode() & 0o777, 0o666);
}
