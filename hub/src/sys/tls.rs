//! TLS for the hub: the x509 credentials (qemu's directory layout: `ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`) behind NBD STARTTLS and HTTPS, and `tls init`, which
//! writes a CA and a server certificate for a first start.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use nbd_server::tls::{CA_CERT, SERVER_CERT, SERVER_KEY, Tls, TlsMode, X509Creds, rustls};

use crate::error::{Error, Result};

/// NBD's TLS from `mode` and the credentials directory; `None` when `mode` is off.
pub fn nbd_tls(mode: TlsMode, creds: Option<&Path>, verify_peer: bool) -> Result<Option<Tls>> {
    if mode == TlsMode::Off {
        return Ok(None);
    }
    let creds = creds.ok_or_else(|| Error::Config(format!("tls = {mode} needs tls_creds")))?;
    let config = load(creds)?
        .server_config(verify_peer, &[])
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Tls::new(mode, config))
}

/// HTTPS: the same credentials, HTTP/2 or HTTP/1.1 by ALPN, no client certificates (the API has
/// its token).
pub fn api_tls(creds: &Path) -> Result<Arc<rustls::ServerConfig>> {
    load(creds)?
        .server_config(false, &[b"h2", b"http/1.1"])
        .map_err(|e| Error::Config(e.to_string()))
}

fn load(creds: &Path) -> Result<X509Creds> {
    X509Creds::from_dir(creds).map_err(|e| Error::Config(format!("TLS credentials: {e}")))
}

/// Host names (and addresses) of a `tls init` server certificate when none are given.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Years a `tls init` certificate stays valid.
const YEARS: i64 = 10;

/// Writes `ca-cert.pem`, `ca-key.pem`, `server-cert.pem` and `server-key.pem` into `dir` (made if
/// missing; keys mode 0600). Refuses to overwrite any of them.
pub fn init(dir: &Path, hosts: &[String]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let tls_err = |e: rcgen::Error| Error::Internal(format!("making certificates: {e}"));
    let files = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY];
    if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
        return Err(Error::Conflict(format!(
            "{} already exists; not overwriting",
            dir.join(f).display()
        )));
    }
    if hosts.is_empty() {
        return Err(Error::Invalid("no host names for the certificate".into()));
    }
    let now = time::OffsetDateTime::now_utc();
    let validity = |p: &mut CertificateParams| {
        // A little in the past, so a client whose clock is slightly behind accepts it.
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365 * YEARS);
    };

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "sendense-hub CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;

    let mut server = CertificateParams::new(hosts.to_vec()).map_err(tls_err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // qemu-nbd refuses a server certificate without keyEncipherment, whatever its key type.
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut server);
    let server_key = KeyPair::generate().map_err(tls_err)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(tls_err)?;

    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    write(dir, CA_CERT, &ca_cert.pem(), 0o644)?;
    write(dir, CA_KEY, &ca_key.serialize_pem(), 0o600)?;
    write(dir, SERVER_CERT, &server_cert.pem(), 0o644)?;
    write(dir, SERVER_KEY, &server_key.serialize_pem(), 0o600)?;
    Ok(())
}

/// The CA's key: kept beside the certificates so more can be signed later (qemu and libnbd
/// ignore it); a deployment may move it offline.
pub const CA_KEY: &str = "ca-key.pem";

/// Creates `dir/name` with `mode` from the start, so a key is never readable by others.
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("writing {}", path.display())))
}
