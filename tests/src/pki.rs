//! Throwaway certificate authorities and server certificates made with `openssl` in a
//! temp dir that is removed with the [`Pki`]: for TLS test IdPs and the HTTPS test servers.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::process::Command;

/// A temp dir holding P-256 CAs and leaf certificates, each valid for two days.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Pki {
    /// An empty PKI directory.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("tokctl-pki")
            .tempdir()
            .map_err(|e| Error::io("creating the PKI's temp dir", e))?;
        Ok(Pki { dir })
    }

    /// A file in the PKI directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(self.dir.path());
        let o = crate::proc::run(c, None, std::time::Duration::from_secs(60))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(Error::Exited {
                what: format!("openssl {}", args.first().unwrap_or(&"")),
                status: o.status.to_string(),
                output: String::from_utf8_lossy(&o.stderr).into_owned(),
            })
        }
    }

    /// A self-signed CA `<name>.pem` / `<name>.key`; returns the certificate's path.
    pub fn ca(&self, name: &str) -> Result<PathBuf> {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=tokctl test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &pem,
        ])?;
        Ok(self.path(&pem))
    }

    /// A server certificate `<name>.pem` / `<name>.key` for the subjectAltName `san`
    /// (e.g. `IP:127.0.0.1,DNS:localhost`), signed by CA `ca`; returns (cert, key).
    pub fn leaf(&self, ca: &str, name: &str, san: &str) -> Result<(PathBuf, PathBuf)> {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ])?;
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .map_err(|e| Error::io("writing the certificate extensions", e))?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ])?;
        Ok((self.path(&pem), self.path(&key)))
    }
}
