//! A container registry stand-in for the real docker CLI and skopeo: just enough of the
//! Docker Registry HTTP API v2 over HTTPS on 127.0.0.1 for `docker manifest inspect` and
//! `skopeo inspect` of one test image (`tokctl/test:1`).
//!
//! Authentication is HTTP Basic, checked on every request: the password must be an access
//! token the test IdP reports active (any username). Basic rather than a token realm,
//! because then the credential the helper answered is exactly what reaches the registry
//! and what the test asserts on; with a realm (Harbor, GitLab, ghcr) the client sends the
//! same username and secret as Basic to the realm instead, so the helper side is the same.
//!
//! TLS, because the docker CLI does not fall back to plain http for `manifest inspect`
//! even with `--insecure` (it only skips certificate verification then). skopeo verifies
//! the certificate against [`Registry::cert_dir`]. What the registry saw (scheme,
//! username, token, status) stays in memory, never in a file.

use crate::error::{Error, Result};
use crate::gitserver::{
    read_tls_request, record_seen, serve, stop_serving, token_is_active, write_response,
    AuthScheme, SeenRequest,
};
use crate::idp::Idp;
use crate::kubeapi::TestCa;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The repository the registry serves.
pub const TEST_REPOSITORY: &str = "tokctl/test";
/// Its only tag.
pub const TEST_TAG: &str = "1";
/// Media type of the test image's manifest (Docker image manifest v2, schema 2).
pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The realm of the Basic challenge.
const REALM: &str = "tokctl test registry";

/// The test image: a config blob, one layer blob and the manifest naming both.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

/// `sha256:<hex>` of `bytes`, the registry's content address.
fn digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Image {
    fn new() -> Image {
        // Not a real tarball: nothing here downloads layers, only their digests are read.
        let layer = b"tokctl test layer\n".to_vec();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Labels": {"org.opencontainers.image.title": "tokctl-test"}},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": digest(&config),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": layer.len(),
                "digest": digest(&layer),
            }],
        })
        .to_string()
        .into_bytes();
        Image {
            config,
            layer,
            manifest,
        }
    }
}

/// A running registry on `https://127.0.0.1:<port>`; stopped on drop.
pub struct Registry {
    port: u16,
    ca: TestCa,
    cert_dir: tempfile::TempDir,
    manifest_digest: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("port", &self.port)
            .finish()
    }
}

impl Registry {
    /// Makes a test CA and starts serving on a free port of 127.0.0.1; `idp` decides which
    /// tokens are active.
    pub fn start(idp: Arc<Idp>) -> Result<Registry> {
        let ca = TestCa::new()?;
        let tls = ca.server_config()?;
        // skopeo (containers/image) reads CA roots as `*.crt` from a certs directory.
        let cert_dir = tempfile::Builder::new()
            .prefix("tokctl-registry-certs")
            .tempdir()
            .map_err(|e| Error::io("creating the registry's certs dir", e))?;
        std::fs::copy(ca.ca_file(), cert_dir.path().join("ca.crt"))
            .map_err(|e| Error::io("copying the test CA", e))?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding the test registry", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("the test registry's address", e))?
            .port();
        let image = Arc::new(Image::new());
        let manifest_digest = digest(&image.manifest);
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let seen2 = seen.clone();
        let thread = serve(
            listener,
            stop.clone(),
            Arc::new(move |conn| handle(&idp, &tls, &image, &seen2, conn)),
        );
        Ok(Registry {
            port,
            ca,
            cert_dir,
            manifest_digest,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`: the registry as docker names it (and sends to helpers).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/tokctl/test:1`.
    pub fn image(&self) -> String {
        format!("{}/{TEST_REPOSITORY}:{TEST_TAG}", self.host())
    }

    /// `sha256:…` of the test image's manifest, as served in `Docker-Content-Digest`.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The CA that signed the registry's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca_file()
    }

    /// A directory holding the CA as `ca.crt`, for `skopeo --cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.cert_dir.path().to_path_buf()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The distinct credentials (Basic passwords or Bearer tokens) clients presented.
    pub fn tokens_seen(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.requests().into_iter().filter_map(|r| r.token) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_serving(self.port, &self.stop, self.thread.take());
    }
}

/// A registry error document (`{"errors":[{"code","message"}]}`).
fn errors(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]})
        .to_string()
        .into_bytes()
}

/// Status, content type, body and `Docker-Content-Digest` for an authorised request.
fn route(image: &Image, method: &str, path: &str) -> (u16, &'static str, Vec<u8>, Option<String>) {
    const JSON: &str = "application/json";
    if method != "GET" && method != "HEAD" {
        return (
            405,
            JSON,
            errors("UNSUPPORTED", "this test registry is read-only"),
            None,
        );
    }
    if path == "/v2/" || path == "/v2" {
        return (200, JSON, b"{}".to_vec(), None);
    }
    let repo = format!("/v2/{TEST_REPOSITORY}/");
    let Some(rest) = path.strip_prefix(&repo) else {
        return (
            404,
            JSON,
            errors("NAME_UNKNOWN", "repository name not known to registry"),
            None,
        );
    };
    let manifest_digest = digest(&image.manifest);
    if rest == "tags/list" {
        let body = serde_json::json!({"name": TEST_REPOSITORY, "tags": [TEST_TAG]});
        return (200, JSON, body.to_string().into_bytes(), None);
    }
    if let Some(reference) = rest.strip_prefix("manifests/") {
        if reference == TEST_TAG || reference == manifest_digest {
            return (
                200,
                MANIFEST_TYPE,
                image.manifest.clone(),
                Some(manifest_digest),
            );
        }
        return (
            404,
            JSON,
            errors("MANIFEST_UNKNOWN", "manifest unknown"),
            None,
        );
    }
    if let Some(d) = rest.strip_prefix("blobs/") {
        for blob in [&image.config, &image.layer] {
            if d == digest(blob) {
                return (
                    200,
                    "application/octet-stream",
                    blob.clone(),
                    Some(d.to_owned()),
                );
            }
        }
        return (404, JSON, errors("BLOB_UNKNOWN", "blob unknown"), None);
    }
    (404, JSON, errors("NAME_UNKNOWN", "not found"), None)
}

fn handle(
    idp: &Idp,
    tls: &Arc<rustls::ServerConfig>,
    image: &Image,
    seen: &Mutex<Vec<SeenRequest>>,
    conn: TcpStream,
) {
    // One request per connection (`Connection: close`).
    let Some((mut r, head, at)) = read_tls_request(tls, conn) else {
        return;
    };
    let (scheme, username, token) = head.credential();
    let active =
        scheme == AuthScheme::Basic && token.as_deref().is_some_and(|t| token_is_active(idp, t));
    let (status, content_type, body, content_digest) = if active {
        route(image, &head.method, head.path())
    } else {
        (
            401,
            "application/json",
            errors("UNAUTHORIZED", "authentication required"),
            None,
        )
    };
    record_seen(seen, at, &head, (scheme, username, token), status);
    let mut headers = vec![
        ("Content-Type".to_owned(), content_type.to_owned()),
        (
            "Docker-Distribution-API-Version".to_owned(),
            "registry/2.0".to_owned(),
        ),
    ];
    if let Some(d) = content_digest {
        headers.push(("Docker-Content-Digest".to_owned(), d));
    }
    if status == 401 {
        headers.push((
            "WWW-Authenticate".to_owned(),
            format!("Basic realm=\"{REALM}\""),
        ));
    }
    let stream = r.get_mut();
    if head.method == "HEAD" {
        // The length of what a GET would send, and no body.
        let mut text = format!(
            "HTTP/1.1 {status} {}\r\n",
            if status == 200 { "OK" } else { "Status" }
        );
        for (k, v) in &headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let _ = stream.write_all(text.as_bytes());
    } else {
        let _ = write_response(stream, status, &headers, &body);
    }
    stream.conn.send_close_notify();
    let _ = stream.flush();
}
