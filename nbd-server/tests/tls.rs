//! NBD over TLS (STARTTLS) against real clients: nbdcopy, nbdinfo, python3-libnbd and qemu-img,
//! with certificates made here by rcgen.

mod support;

use std::path::{Path, PathBuf};
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

/// A temp dir with a CA, the server's credentials and a client directory trusting that CA.
fn creds() -> (tempfile::TempDir, Ca, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server_dir = ca.server_dir(&work.path().join("server"), Validity::Valid);
    let client_dir = ca.client_dir(&work.path().join("client"), &ca.pem, None);
    (work, ca, server_dir, client_dir)
}

#[test]
fn libnbd_and_qemu_img_copy_through_nbds_byte_exact() {
    let (work, _ca, server_dir, client_dir) = creds();
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

#[test]
fn require_refuses_every_option_in_clear_until_starttls() {
    let (work, _ca, server_dir, client_dir) = creds();
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_secs(1),
        ..tls_config(TlsMode::Require, &server_dir, false)
    };
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(4 * MIB)));
    // GO, INFO, LIST, STRUCTURED_REPLY, SET_META_CONTEXT: NBD_REP_ERR_TLS_REQD; EXPORT_NAME: close.
    python("tls.py", &["required", &t.uri("d")]);
    // A client that goes silent after STARTTLS is dropped by the handshake deadline.
    python("tls.py", &["stall_in_tls", &t.uri("d")]);
    // libnbd in clear is refused; through STARTTLS it gets the export.
    let out = Command::new("nbdinfo")
        .args(["--size", &t.uri("d")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a clear client reached the export");
    round_trip(&nbds(&t, "d", &client_dir), work.path(), 2);
    t.shutdown();
}

/// Runs a client expected to be refused; returns what it said.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} was not refused: {said}");
    said
}

#[test]
fn wrong_ca_expired_and_missing_certificates_are_refused_and_others_still_served() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let other = Ca::new("someone else's CA");
    let server_dir = ca.server_dir(&work.path().join("server"), Validity::Valid);
    let good = ca.client_dir(&work.path().join("good"), &ca.pem, Some(Validity::Valid));
    let config = tls_config(TlsMode::Require, &server_dir, true);
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(4 * MIB)));

    // The client does not trust the server's CA.
    let wrong_ca = ca.client_dir(
        &work.path().join("wrong-ca"),
        &other.pem,
        Some(Validity::Valid),
    );
    let said = refused(Command::new("nbdinfo").arg(nbds(&t, "d", &wrong_ca)));
    assert!(said.contains("certificate"), "{said}");
    // A client certificate from another CA, an expired one, none at all: the server refuses.
    let foreign = other.client_dir(&work.path().join("foreign"), &ca.pem, Some(Validity::Valid));
    let expired = ca.client_dir(
        &work.path().join("expired"),
        &ca.pem,
        Some(Validity::Expired),
    );
    let none = ca.client_dir(&work.path().join("none"), &ca.pem, None);
    for dir in [&foreign, &expired, &none] {
        let said = refused(Command::new("nbdinfo").arg(nbds(&t, "d", dir)));
        assert!(said.contains("TLS") || said.contains("handshake"), "{said}");
    }
    // The server kept serving: a client with a good certificate copies byte-exact.
    round_trip(&nbds(&t, "d", &good), work.path(), 3);
    t.shutdown();

    // A server whose certificate has expired is refused by the client.
    let stale_dir = ca.server_dir(&work.path().join("stale"), Validity::Expired);
    let config = tls_config(TlsMode::Require, &stale_dir, false);
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(MIB)));
    let said = refused(Command::new("nbdinfo").arg(nbds(&t, "d", &good)));
    assert!(
        said.contains("expired") || said.contains("certificate"),
        "{said}"
    );
    t.shutdown();
}

/// A connection from 127.0.0.1 that sends STARTTLS, has it accepted, sends the first bytes of a
/// ClientHello and goes silent: a half-open TLS handshake. `None` if the server closed it first.
fn half_open_tls(addr: std::net::SocketAddr) -> Option<std::net::TcpStream> {
    use nbd_server::proto::{IHAVEOPT, OPT_STARTTLS, REP_ACK};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).ok()?;
    let mut msg = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&msg).ok()?;
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).ok()?;
    assert_eq!(
        u32::from_be_bytes(reply[12..16].try_into().unwrap()),
        REP_ACK
    );
    // A TLS record header announcing a 512-byte handshake message, and nothing of it.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).ok()?;
    Some(s)
}

#[test]
fn half_open_tls_handshakes_from_loopback_do_not_lock_out_a_tls_client() {
    let (work, _ca, server_dir, client_dir) = creds();
    // Default limits and handshake timeout.
    let config = tls_config(TlsMode::Require, &server_dir, false);
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(4 * MIB)));
    let half_open: Vec<_> = (0..200).map(|_| half_open_tls(t.addr)).collect();
    let held = half_open.iter().flatten().count();
    round_trip(&nbds(&t, "d", &client_dir), work.path(), 4);
    // Every one of them was let in; the oldest made room for the newer ones.
    assert_eq!(held, 200, "half-open handshakes refused");
    drop(half_open);
    t.shutdown();
}
