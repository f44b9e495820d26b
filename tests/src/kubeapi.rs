//! A Kubernetes API stand-in over HTTPS, for real kubectl: kubectl hands exec-plugin
//! tokens only to TLS servers, so it serves with a certificate from a per-test CA made with
//! `openssl`. It answers `/api`, `/apis` and `/version` when the bearer token is active at
//! the test IdP and 401 otherwise, and keeps what it saw in memory (never in a file).

use crate::error::{Error, Result};
use crate::gitserver::{
    read_tls_request, record_seen, serve, stop_serving, token_is_active, write_response,
    AuthScheme, SeenRequest,
};
use crate::idp::Idp;
use crate::pki::Pki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A throwaway certificate authority and a server certificate it signed for
/// `127.0.0.1` and `localhost` (a [`Pki`] with one CA and one leaf).
#[derive(Debug)]
pub struct TestCa {
    pki: Pki,
}

impl TestCa {
    /// Makes a P-256 CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost), valid
    /// for two days.
    pub fn new() -> Result<TestCa> {
        let pki = Pki::new()?;
        pki.ca("ca")?;
        pki.leaf("ca", "server", "IP:127.0.0.1,DNS:localhost")?;
        Ok(TestCa { pki })
    }

    /// The CA certificate (PEM), for the client's trust store.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.path("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.pki.path("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.pki.path("server.key")
    }

    /// A rustls server configuration with the server certificate (HTTP/1.1 only), for
    /// the harness's HTTPS servers.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let tls_err = |e: String| Error::Setup(format!("TLS setup of the test server: {e}"));
        let certs = CertificateDer::pem_file_iter(self.cert_file())
            .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
            .map_err(|e| tls_err(e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_file(self.key_file()).map_err(|e| tls_err(e.to_string()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// A running Kubernetes API stand-in on `https://127.0.0.1:<port>`; stopped on drop.
pub struct KubeApi {
    port: u16,
    ca: TestCa,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").field("port", &self.port).finish()
    }
}

impl KubeApi {
    /// Makes a test CA and starts serving on a free port of 127.0.0.1.
    pub fn start(idp: Arc<Idp>) -> Result<KubeApi> {
        let ca = TestCa::new()?;
        let tls = ca.server_config()?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding the Kubernetes API stand-in", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("the Kubernetes API's address", e))?
            .port();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let seen2 = seen.clone();
        let thread = serve(
            listener,
            stop.clone(),
            Arc::new(move |conn| handle_kube(&idp, &tls, &seen2, port, conn)),
        );
        Ok(KubeApi {
            port,
            ca,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca_file()
    }

    /// A kubeconfig for this server whose user runs `command args…` as a
    /// `client.authentication.k8s.io/v1` exec plugin that never prompts.
    pub fn kubeconfig(&self, command: &Path, args: &[&str]) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let args: Vec<String> = args.iter().map(|a| q(a)).collect();
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: tokctl\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {cmd}\n      args: [{args}]\n      interactiveMode: Never\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: tokctl\n\
             current-context: test\n",
            server = q(&self.server()),
            ca = q(&self.ca_file().to_string_lossy()),
            cmd = q(&command.to_string_lossy()),
            args = args.join(", "),
        )
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        stop_serving(self.port, &self.stop, self.thread.take());
    }
}

fn handle_kube(
    idp: &Idp,
    tls: &Arc<rustls::ServerConfig>,
    seen: &Mutex<Vec<SeenRequest>>,
    port: u16,
    conn: TcpStream,
) {
    let Some((mut r, head, at)) = read_tls_request(tls, conn) else {
        return;
    };
    let (scheme, username, token) = head.credential();
    let active =
        scheme == AuthScheme::Bearer && token.as_deref().is_some_and(|t| token_is_active(idp, t));
    let (status, body) = if !active {
        (401, status_json(401, "Unauthorized", "Unauthorized"))
    } else {
        match head.path() {
            "/api" => (
                200,
                serde_json::json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}
                    ],
                }),
            ),
            "/apis" => (
                200,
                serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            ),
            "/version" => (
                200,
                serde_json::json!({
                    "major": "1", "minor": "32", "gitVersion": "v1.32.0-tokctl-test",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64",
                }),
            ),
            _ => (
                404,
                status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ),
        }
    };
    record_seen(seen, at, &head, (scheme, username, token), status);
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    if status == 401 {
        headers.push((
            "WWW-Authenticate".to_owned(),
            "Bearer realm=\"kubernetes\"".to_owned(),
        ));
    }
    let stream = r.get_mut();
    let _ = write_response(stream, status, &headers, body.to_string().as_bytes());
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// A `meta/v1` Status document, as the API server sends with errors.
fn status_json(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}
