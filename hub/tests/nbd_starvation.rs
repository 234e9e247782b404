//! `sendense-hub serve` with its default configuration, against the clients that used to starve
//! everyone else: 200 silent loopback sockets (in the deployment all NBD traffic, the SNA's too,
//! arrives from 127.0.0.1 through the SSH tunnel) and three WRITEs that announce 64 MiB and stall.
//! nbdcopy and python3-libnbd must still write a backup's disk byte-exact, nbdcopy within twice
//! its time alone.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::*;
use nbd_server::proto::handshake::{Greeting, OptionHeader};
use nbd_server::proto::request::{HeaderStyle, Request};
use nbd_server::proto::{
    CLIENT_FLAG_FIXED_NEWSTYLE, CLIENT_FLAG_NO_ZEROES, CMD_WRITE, OPT_EXPORT_NAME,
};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;
/// Longest a client may run before the test calls it hung (a bound against hangs, not a timing).
const HANG: Duration = Duration::from_secs(120);

fn uri(backup: &Value) -> String {
    backup["disk_results"][0]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits for `child`, failing if it fails or runs past `limit`.
fn finish_within(mut child: Child, limit: Duration, what: &str) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not finish within {limit:?}");
}

fn nbdcopy(src: &Path, uri: &str, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let child = Command::new("nbdcopy").arg(src).arg(uri).spawn().unwrap();
    finish_within(child, limit, what);
    start.elapsed()
}

/// A raw client past the handshake of `uri`'s export (EXPORT_NAME, simple replies) that
/// announces a 64 MiB WRITE and sends 1 KiB of it; the bytes come from `nbd_server::proto`.
fn stalled_writer(uri: &str) -> TcpStream {
    let rest = uri.strip_prefix("nbd://").unwrap();
    let (addr, name) = rest.split_once('/').unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; Greeting::LEN];
    s.read_exact(&mut greeting).unwrap();
    assert!(matches!(Greeting::decode(&greeting), Ok(Some(_))));
    let mut out = BytesMut::new();
    out.put_u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    let option = OptionHeader {
        option: OPT_EXPORT_NAME,
        length: name.len() as u32,
    };
    option.encode(&mut out);
    out.put_slice(name.as_bytes());
    s.write_all(&out).unwrap();
    // Size and transmission flags, no zeroes.
    s.read_exact(&mut [0u8; 10]).unwrap();
    let write = Request {
        flags: 0,
        command: CMD_WRITE,
        cookie: 1,
        offset: 0,
        length: 64 << 20,
    };
    out.clear();
    write.encode(HeaderStyle::Simple, &mut out).unwrap();
    out.put_slice(&[0xee; 1024]);
    s.write_all(&out).unwrap();
    s
}

/// Writes 1 MiB of 0x77 at 1 MiB and reads it back.
const LIBNBD_WRITE: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
data = b"\x77" * 1048576
h.pwrite(data, 1048576)
assert h.pread(len(data), 1048576) == data
h.shutdown()
"#;

#[test]
fn silent_sockets_and_stalled_writes_do_not_starve_a_backup_at_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, nbd) = start_hub(&data);
    let token = read_token(&data);
    let src = dir.path().join("disk.raw");
    let mut expected = make_raw(&src, 64 * MIB, 22);

    let alone_backup = create_full(&api, &token, "alone", 64 * MIB as u64);
    let alone = nbdcopy(&src, &uri(&alone_backup), HANG, "nbdcopy alone");

    let backup = create_full(&api, &token, "beside", 64 * MIB as u64);
    let uri = uri(&backup);
    let stalled: Vec<TcpStream> = (0..3).map(|_| stalled_writer(&uri)).collect();
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&nbd).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Twice its time alone, plus slack for a shared machine.
    let bound = alone * 2 + Duration::from_secs(3);
    let beside = nbdcopy(
        &src,
        &uri,
        bound,
        "nbdcopy beside silent and stalled clients",
    );
    eprintln!("nbdcopy alone {alone:?}, beside 200 silent sockets and 3 stalled WRITEs {beside:?}");
    let libnbd = Command::new("/usr/bin/python3")
        .args(["-c", LIBNBD_WRITE, &uri])
        .spawn()
        .unwrap();
    finish_within(
        libnbd,
        HANG,
        "python3-libnbd beside silent and stalled clients",
    );
    expected[MIB..2 * MIB].fill(0x77);
    drop((silent, stalled));

    let id = backup["backup_id"].as_str().unwrap();
    let body = json!({"disk_id": 0, "change_id": "x-1"});
    let path = format!("/api/v1/backups/{id}/complete");
    ok(http("POST", &api, &path, None, Some(&body)));
    let status = wait_status(&api, &token, id, "completed");
    let image = std::path::PathBuf::from(status["disk_results"][0]["qcow2_path"].as_str().unwrap());
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_img_check(&image);
    qemu_img_compare(&raw, &image);
    assert!(hub.terminate_and_wait().success());
}
