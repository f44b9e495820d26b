//! The opt-in file backend: layout, permissions, refusals, atomic replacement.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use tokctl_store::{Backend, SecretKey, Store, StoreError};

const CANARY: &str = "CANARY-RT-3b9e41d7";

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[tokio::test]
async fn round_trip_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/tokctl");
    let path = dir.join("secrets.json");
    let store = Store::open(Backend::File(path.clone())).await.unwrap();
    assert_eq!(store.describe(), format!("file ({})", path.display()));
    assert!(!path.exists(), "open does not create the file");

    let rt = SecretKey::refresh_token("work");
    let cs = SecretKey::client_secret("work");
    assert!(store.get(&rt).await.unwrap().is_none());
    assert!(!store.delete(&rt).await.unwrap());

    store.set(&rt, &secret(CANARY)).await.unwrap();
    store
        .set(&cs, &secret("s3cr\"et\\with\nescapes"))
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir), 0o700, "a directory we create is private");

    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["secrets"]["work:refresh_token"], CANARY);
    assert_eq!(
        doc["secrets"]["work:client_secret"],
        "s3cr\"et\\with\nescapes"
    );

    assert_eq!(
        store.get(&rt).await.unwrap().unwrap().expose_secret(),
        CANARY
    );
    assert_eq!(
        store.get(&cs).await.unwrap().unwrap().expose_secret(),
        "s3cr\"et\\with\nescapes"
    );

    // A second handle on the same file sees the same data (every call re-reads the file).
    let other = Store::open(Backend::File(path.clone())).await.unwrap();
    assert_eq!(
        other.get(&rt).await.unwrap().unwrap().expose_secret(),
        CANARY
    );

    assert!(store.delete(&rt).await.unwrap());
    assert!(!store.delete(&rt).await.unwrap());
    assert!(store.get(&rt).await.unwrap().is_none());
    assert!(
        store.get(&cs).await.unwrap().is_some(),
        "deleting one key keeps the others"
    );
    assert!(
        !fs::read_to_string(&path).unwrap().contains(CANARY),
        "deleted means gone from the file"
    );
    assert!(temporaries(&dir).is_empty());
}

#[tokio::test]
async fn replacement_is_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("secrets.json");
    let store = Store::open(Backend::File(path.clone())).await.unwrap();
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret("R1")).await.unwrap();

    // A reader that opened the old file keeps a complete old version: the new one is a new
    // inode renamed over it, never the old file rewritten in place.
    let old_ino = fs::metadata(&path).unwrap().ino();
    let old_reader = fs::File::open(&path).unwrap();
    store.set(&key, &secret("R2")).await.unwrap();
    assert_ne!(fs::metadata(&path).unwrap().ino(), old_ino);
    let old_text = std::io::read_to_string(old_reader).unwrap();
    assert!(
        old_text.contains("\"R1\""),
        "old version intact: {old_text}"
    );
    assert!(fs::read_to_string(&path).unwrap().contains("\"R2\""));
    assert_eq!(mode(&path), 0o600);
    assert!(
        temporaries(tmp.path()).is_empty(),
        "no temporary file left behind"
    );
}

#[tokio::test]
async fn stale_temporaries_are_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("secrets.json");
    let stale = tmp.path().join(".secrets.json.4242.17.tmp");
    let unrelated = tmp.path().join(".other.json.4242.17.tmp");
    fs::write(&stale, CANARY).unwrap();
    fs::write(&unrelated, "x").unwrap();
    Store::open(Backend::File(path)).await.unwrap();
    assert!(!stale.exists());
    assert!(unrelated.exists(), "only our own temporaries are removed");
}

#[tokio::test]
async fn concurrent_writes_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("secrets.json");
    let store = Store::open(Backend::File(path.clone())).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .set(
                        &SecretKey::refresh_token(format!("p{i}")),
                        &secret(&format!("v{i}")),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in 0..20 {
        let got = store
            .get(&SecretKey::refresh_token(format!("p{i}")))
            .await
            .unwrap();
        assert_eq!(got.unwrap().expose_secret(), format!("v{i}"));
    }
}

#[tokio::test]
async fn group_or_other_readable_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("secrets.json");
    let store = Store::open(Backend::File(path.clone())).await.unwrap();
    let key = SecretKey::refresh_token("work");
    store.set(&key, &secret(CANARY)).await.unwrap();

    for bad in [0o644, 0o640, 0o604, 0o620] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let e = store.get(&key).await.unwrap_err();
        match &e {
            StoreError::Io(msg) => {
                assert!(msg.contains("chmod 600"), "{msg}");
                assert!(msg.contains(&path.display().to_string()), "{msg}");
            }
            other => panic!("expected Io for mode {bad:o}, got {other:?}"),
        }
        assert!(!e.to_string().contains(CANARY));
        // Writes refuse too, and leave the file alone.
        assert!(matches!(
            store.set(&key, &secret("R2")).await,
            Err(StoreError::Io(_))
        ));
        assert!(matches!(store.delete(&key).await, Err(StoreError::Io(_))));
        assert!(matches!(
            Store::open(Backend::File(path.clone())).await,
            Err(StoreError::Io(_))
        ));
        assert_eq!(mode(&path), bad, "never chmods behind the user's back");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().expose_secret(),
        CANARY
    );
}

#[tokio::test]
async fn file_of_another_user_is_refused() {
    let me = rustix::process::getuid().as_raw();
    let tmp = tempfile::tempdir().unwrap();
    let path = if me == 0 {
        let p = tmp.path().join("secrets.json");
        fs::write(&p, "{\"version\":1,\"secrets\":{}}").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        p
    } else {
        // Not root: we cannot give a file away, but a root-owned one is at hand.
        "/etc/passwd".into()
    };
    let e = Store::open(Backend::File(path.clone())).await.unwrap_err();
    match e {
        StoreError::Io(msg) => assert!(msg.contains("owned by uid"), "{msg}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[tokio::test]
async fn symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real.json");
    fs::write(&real, "{\"version\":1,\"secrets\":{}}").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
    let link = tmp.path().join("secrets.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    match Store::open(Backend::File(link)).await.unwrap_err() {
        StoreError::Io(msg) => assert!(msg.contains("symbolic link"), "{msg}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[tokio::test]
async fn unparsable_file_is_corrupt_and_the_message_holds_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("secrets.json");
    let write = |text: &str| {
        let _ = fs::remove_file(&path);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    };
    for text in [
        format!(
            "{{\"version\":1,\"secrets\":{{\"work:refresh_token\":\"{CANARY}\"}},\"{CANARY}\":1}}"
        ),
        format!("{{\"version\":1,\"secrets\":{{\"work:refresh_token\":[\"{CANARY}\"]}}}}"),
        format!("{{\"version\":1,\"secrets\":{{\"work:refresh_token\":\"{CANARY}"),
        CANARY.to_string(),
        String::new(),
    ] {
        write(&text);
        let e = Store::open(Backend::File(path.clone())).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{text}: {e:?}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(CANARY), "leaked: {shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
    }
    write("{\"version\":2,\"secrets\":{}}");
    match Store::open(Backend::File(path.clone())).await.unwrap_err() {
        StoreError::Corrupt(msg) => assert!(msg.contains("version 2"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
