//! Certificates for TLS tests, generated per test run (rcgen): a CA, a server certificate for
//! `localhost` signed by it, a client certificate signed by it, and a second CA that signed
//! nothing here (for "unknown issuer" cases). Written to a fresh directory, removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files for a TLS `redis-server` and its clients.
#[derive(Debug)]
pub struct TlsMaterial {
    dir: PathBuf,
    /// The CA that signed the server and client certificates (PEM).
    pub ca_pem: String,
    /// A CA that signed nothing here (PEM).
    pub other_ca_pem: String,
    /// The client certificate (PEM) and its key (PEM).
    pub client_cert_pem: String,
    /// The client certificate's key (PEM).
    pub client_key_pem: String,
}

impl TlsMaterial {
    /// Generates the material; the server certificate names `localhost` only.
    pub fn generate() -> std::io::Result<Self> {
        Self::generate_for(&["localhost"])
    }

    /// Generates the material with a server certificate naming `names` (host names, or IP
    /// addresses such as `127.0.0.1`, which become IP subject names).
    pub fn generate_for(names: &[&str]) -> std::io::Result<Self> {
        let err = |e: rcgen::Error| std::io::Error::other(e.to_string());
        let dir = crate::scratch_dir("herdwise-tls")?;
        let ca = |name: &str| -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            Ok((cert, key))
        };
        let (ca_cert, ca_key) = ca("Herdwise test CA").map_err(err)?;
        let (other_ca, _) = ca("Some other CA").map_err(err)?;
        let leaf = |names: Vec<String>, cn: &str| -> Result<(String, String), rcgen::Error> {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            names.iter().map(|n| n.to_string()).collect(),
            names.first().copied().unwrap_or("localhost"),
        )
        .map_err(err)?;
        let (client_cert, client_key) = leaf(vec![], "herdwise-test-client").map_err(err)?;
        let material = TlsMaterial {
            dir,
            ca_pem: ca_cert.pem(),
            other_ca_pem: other_ca.pem(),
            client_cert_pem: client_cert,
            client_key_pem: client_key,
        };
        std::fs::write(material.path("ca.crt"), &material.ca_pem)?;
        std::fs::write(material.path("server.crt"), server_cert)?;
        std::fs::write(material.path("server.key"), server_key)?;
        Ok(material)
    }

    /// The directory holding `ca.crt`, `server.crt` and `server.key`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate's file (`ca.crt`), as `redis-cli --cacert` wants it.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// Config-file lines for a TLS-only `redis-server` on `port` (a sentinel's, say), talking
    /// TLS to the nodes it connects to as well (`tls-replication yes`); no client certificates.
    pub fn config_lines(&self, port: u16) -> String {
        let file = |name: &str| self.path(name).to_string_lossy().into_owned();
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
            file("server.crt"),
            file("server.key"),
            file("ca.crt")
        )
    }

    /// `redis-server` arguments for a TLS port (given as `{free}`: read it back with
    /// `arg_after("--tls-port")`) beside the plain one, with client certificates required or not.
    pub fn server_args(&self, require_client_certificates: bool) -> Vec<String> {
        let file = |name: &str| self.path(name).to_string_lossy().into_owned();
        vec![
            "--tls-port".into(),
            "{free}".into(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            if require_client_certificates {
                "yes"
            } else {
                "no"
            }
            .into(),
        ]
    }
}

impl Drop for TlsMaterial {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
