//! NBD over TLS (STARTTLS) against real clients: nbdcopy, nbdinfo, python3-libnbd and qemu-img,
//! with certificates made here by rcgen.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use nbd_server::ServerConfig;
use nbd_server::tls::{Tls, TlsMode, X509Creds};
use support::certs::{Ca, Validity};
use support::*;

const MIB: u64 = 1 << 20;

fn tls_config(mode: TlsMode, creds: &Path, verify_peer: bool) -> ServerConfig {
    let creds = X509Creds::from_dir(creds).unwrap();
    ServerConfig {
        tls: Tls::new(mode, creds.server_config(verify_peer, &[]).unwrap()),
        ..ServerConfig::default()
    }
}

fn nbds(t: &TestServer, name: &str, certs: &Path) -> String {
    format!(
        "nbds://{}/{}?tls-certificates={}",
        t.addr,
        name,
        certs.display()
    )
}

/// Copies `data` in through nbdcopy and back out, over `uri`; both must match byte for byte.
fn round_trip(uri: &str, dir: &Path, seed: u64) {
    let data = pattern(4 * MIB as usize, seed);
    let src = dir.join(format!("in-{seed}.raw"));
    let back = dir.join(format!("out-{seed}.raw"));
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(uri));
    run(Command::new("nbdcopy").arg(uri).arg(&back));
    assert!(std::fs::read(&back).unwrap() == data, "{uri}: bytes differ");
}

#[test]
fn libnbd_and_qemu_img_copy_through_nbds_byte_exact() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server_dir = ca.server_dir(&work.path().join("server"), Validity::Valid);
    let client_dir = ca.client_dir(&work.path().join("client"), &ca.pem, None);
    let export = Arc::new(MemExport::new(4 * MIB));
    let config = tls_config(TlsMode::On, &server_dir, false);
    let t = TestServer::with_export(config, "d", Arc::clone(&export));
    let uri = nbds(&t, "d", &client_dir);

    round_trip(&uri, work.path(), 1);
    let out = stdout(Command::new("nbdinfo").args(["--json", &uri]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["TLS"], true, "{out}");

    // python3-libnbd: set_tls + set_tls_certificates.
    let port = t.addr.port().to_string();
    let dir = client_dir.to_str().unwrap();
    python("tls.py", &["libnbd", "127.0.0.1", &port, "d", dir]);

    // qemu-img with qemu's own x509 client credentials, out to a raw file and compared.
    let out = work.path().join("qemu.raw");
    let object = format!("tls-creds-x509,id=tls0,dir={dir},endpoint=client");
    let image = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=d,tls-creds=tls0"
    );
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-O",
            "raw",
            "--object",
            &object,
            "--image-opts",
            &image,
        ])
        .arg(&out));
    assert!(std::fs::read(&out).unwrap() == export.contents());

    // With TLS only offered, a client in clear still gets the export.
    let size = stdout(Command::new("nbdinfo").args(["--size", &t.uri("d")]));
    assert_eq!(size.trim(), (4 * MIB).to_string());
    t.shutdown();
}
