//! Certificates for the TLS tests, made with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates, written in the directory layout qemu and libnbd read.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A validity window: `Valid` for a day around now, `Expired` ended yesterday.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A leaf certificate and its key, PEM.
    pub fn issue(&self, names: &[&str], server: bool, validity: Validity) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            if server { "nbd server" } else { "nbd client" },
        );
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let (from, to) = match validity {
            Validity::Valid => (now - day, now + day),
            Validity::Expired => (now - 3 * day, now - day),
        };
        params.not_before = from.into();
        params.not_after = to.into();
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `ca-cert.pem`, `server-cert.pem`, `server-key.pem` in `dir`.
    pub fn server_dir(&self, dir: &Path, validity: Validity) -> PathBuf {
        let (cert, key) = self.issue(&["localhost", "127.0.0.1"], true, validity);
        write_dir(dir, &self.pem, "server", Some((cert, key)))
    }

    /// `ca-cert.pem` and, when `cert` is set, a client certificate of this CA (`client-cert.pem`,
    /// `client-key.pem`): what libnbd's `tls-certificates` and qemu's client creds read.
    pub fn client_dir(&self, dir: &Path, trusted_ca: &str, cert: Option<Validity>) -> PathBuf {
        let pair = cert.map(|v| self.issue(&["client"], false, v));
        write_dir(dir, trusted_ca, "client", pair)
    }
}

fn write_dir(dir: &Path, ca: &str, role: &str, pair: Option<(String, String)>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca).unwrap();
    if let Some((cert, key)) = pair {
        std::fs::write(dir.join(format!("{role}-cert.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{role}-key.pem")), key).unwrap();
    }
    dir.to_owned()
}
