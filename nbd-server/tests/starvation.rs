//! Clients that connect and then stall, or never speak, must not stop anyone else: a stalled
//! payload or unread replies cost the staller its connection, and silent handshakes cannot fill
//! the server. Silent clients come from 127.0.0.1 like the real ones: in the Sendense deployment
//! every client arrives there through the SNA's SSH tunnel.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbd_server::ServerConfig;
use nbd_server::proto::{CMD_READ, CMD_WRITE, IHAVEOPT, NBDMAGIC, OPT_EXPORT_NAME, REQUEST_MAGIC};
use support::{MemExport, TestServer};

const MIB: u64 = 1 << 20;
/// Longest a peer may run before the test calls it hung (a bound against hangs, not a timing).
const HANG: Duration = Duration::from_secs(120);

/// A raw client past the handshake (old-style EXPORT_NAME, no zeroes), simple replies.
fn raw_client(addr: SocketAddr, export: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(
        u64::from_be_bytes(greeting[..8].try_into().unwrap()),
        NBDMAGIC
    );
    let mut msg = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&(export.len() as u32).to_be_bytes());
    msg.extend_from_slice(export.as_bytes());
    s.write_all(&msg).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    s
}

fn request(cmd: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&cmd.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    r
}

/// Waits for `child` to exit, killing it (and failing) if it runs past [`HANG`].
fn finish(child: Child, what: &str) {
    finish_within(child, HANG, what);
}

/// Waits for `child` to exit, killing it (and failing) if it runs past `limit`.
fn finish_within(mut child: Child, limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}: starved by stalled clients");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs nbdinfo on export `d`; fails if it fails or hangs.
fn nbdinfo(t: &TestServer, what: &str) {
    let client = Command::new("nbdinfo")
        .arg(t.uri("d"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    finish(client, what);
}

/// Reads until the server closes `s`; fails if it is still open after [`HANG`].
fn assert_closed_by_server(s: TcpStream, what: &str) {
    assert_closed_within(s, HANG, what);
}

/// Reads until the server closes `s`; fails if it is still open after `limit`.
fn assert_closed_within(mut s: TcpStream, limit: Duration, what: &str) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: still open ({e})"),
        }
    }
}

#[test]
fn stalled_payloads_and_unread_replies_do_not_starve_an_nbdcopy() {
    let size = 64 * MIB;
    let config = ServerConfig {
        payload_stall_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    // The default server budget (128 MiB) is what the stallers try to pin.
    assert_eq!(config.max_in_flight_bytes_total, 128 << 20);
    let export = Arc::new(MemExport::new(size));
    let t = TestServer::with_export(config, "d", export.clone());

    // Two connections announce a 64 MiB WRITE each and send 1 KiB of it.
    let writers: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = raw_client(t.addr, "d");
            s.write_all(&request(CMD_WRITE, i, 0, 64 << 20)).unwrap();
            s.write_all(&[0xee; 1024]).unwrap();
            s
        })
        .collect();
    // One connection asks for three 64 MiB READs and never reads a reply.
    let mut reader = raw_client(t.addr, "d");
    for i in 0..3 {
        reader
            .write_all(&request(CMD_READ, i, 0, 64 << 20))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    let src = t.dir.path().join("src.img");
    let data = support::pattern(size as usize, 7);
    std::fs::write(&src, &data).unwrap();
    let copy = Command::new("nbdcopy")
        .arg(&src)
        .arg(t.uri("d"))
        .spawn()
        .unwrap();
    finish(copy, "nbdcopy into the export");
    assert!(export.contents() == data, "nbdcopy's data did not arrive");
    let restore = Command::new("nbdcopy")
        .arg(t.uri("d"))
        .arg("null:")
        .spawn()
        .unwrap();
    finish(restore, "nbdcopy out of the export");

    for (i, s) in writers.into_iter().enumerate() {
        assert_closed_by_server(s, &format!("stalled writer {i}"));
    }
    assert_closed_by_server(reader, "client not reading its replies");
    t.shutdown();
}

#[test]
fn a_thousand_silent_connections_do_not_lock_out_a_client() {
    // Default limits and handshake timeout: the silent ones stay for its whole 10 s.
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(MemExport::new(MIB)));
    let mut silent = Vec::new();
    for i in 0..1000u32 {
        // From 20 loopback addresses, 50 each, none of them the real client's 127.0.0.1.
        let from: SocketAddr = format!("127.0.0.{}:0", 2 + i % 20).parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&from.into()).unwrap();
        sock.connect(&t.addr.into()).unwrap();
        silent.push(sock);
    }
    // Let the server accept them all before the real client comes.
    std::thread::sleep(Duration::from_millis(500));
    nbdinfo(&t, "nbdinfo beside 1,000 silent connections");
    drop(silent);
    t.shutdown();
}

/// Copies `data` into export `name` with nbdcopy, failing past `limit`; returns how long it took.
fn nbdcopy_in(t: &TestServer, name: &str, data: &[u8], limit: Duration, what: &str) -> Duration {
    let src = t.dir.path().join("src.img");
    std::fs::write(&src, data).unwrap();
    let start = Instant::now();
    let copy = Command::new("nbdcopy")
        .arg(&src)
        .arg(t.uri(name))
        .spawn()
        .unwrap();
    finish_within(copy, limit, what);
    start.elapsed()
}

/// Connections from 127.0.0.1 that never say a word.
fn silent_loopback(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let silent = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Let the server accept them all before the real client comes.
    std::thread::sleep(Duration::from_millis(500));
    silent
}

#[test]
fn silent_loopback_handshakes_do_not_turn_away_a_client_from_the_same_address() {
    // Default limits and handshake timeout: the silent ones would stay for its whole 10 s.
    let export = Arc::new(MemExport::new(4 * MIB));
    let t = TestServer::with_export(ServerConfig::default(), "d", export.clone());
    let silent = silent_loopback(t.addr, 200);
    let data = support::pattern(4 * MIB as usize, 3);
    nbdcopy_in(
        &t,
        "d",
        &data,
        HANG,
        "nbdcopy beside 200 silent loopback sockets",
    );
    assert!(export.contents() == data, "nbdcopy's data did not arrive");
    nbdinfo(&t, "nbdinfo beside 200 silent loopback sockets");
    drop(silent);
    t.shutdown();
}

/// Connections that announce a 64 MiB WRITE each and send 1 KiB of it.
fn stalled_writers(addr: SocketAddr, n: u64) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = raw_client(addr, "d");
            s.write_all(&request(CMD_WRITE, i, 0, 64 << 20)).unwrap();
            s.write_all(&[0xee; 1024]).unwrap();
            s
        })
        .collect()
}

#[test]
fn stalled_64_mib_writes_at_the_defaults_do_not_hold_an_nbdcopy_back() {
    let size = 64 * MIB;
    let config = ServerConfig::default();
    let stall_limit = config.payload_stall_timeout;
    let export = Arc::new(MemExport::new(size));
    let t = TestServer::with_export(config, "d", export.clone());
    let first = support::pattern(size as usize, 5);
    let alone = nbdcopy_in(&t, "d", &first, HANG, "nbdcopy alone");

    // Three 64 MiB WRITEs announced: more than the 128 MiB budget, were it taken up front.
    let stalled_at = Instant::now();
    let writers = stalled_writers(t.addr, 3);
    std::thread::sleep(Duration::from_millis(300));
    let data = support::pattern(size as usize, 6);
    // Twice its time alone, plus slack for a shared machine; taken up front, the budget would
    // hold it for the whole stall timeout.
    let bound = alone * 2 + Duration::from_secs(3);
    let beside = nbdcopy_in(&t, "d", &data, bound, "nbdcopy beside three stalled writes");
    eprintln!("nbdcopy alone {alone:?}, beside three stalled 64 MiB WRITEs {beside:?}");
    assert!(export.contents() == data, "nbdcopy's data did not arrive");

    // Cut off for the pause in their payloads, at the default stall timeout.
    for (i, s) in writers.into_iter().enumerate() {
        let left = (stall_limit * 3).saturating_sub(stalled_at.elapsed());
        assert_closed_within(s, left, &format!("stalled writer {i}"));
    }
    assert!(
        stalled_at.elapsed() >= stall_limit,
        "cut off before the stall timeout"
    );
    t.shutdown();
}

#[test]
fn a_slow_payload_that_keeps_coming_is_not_cut_off() {
    // At the default stall timeout, a payload sent over longer than it, in pieces with pauses
    // shorter than it.
    let config = ServerConfig::default();
    let pause = config.payload_stall_timeout / 4;
    let export = Arc::new(MemExport::new(MIB));
    let t = TestServer::with_export(config, "d", export.clone());
    let mut s = raw_client(t.addr, "d");
    let piece = [0x5au8; 64 << 10];
    s.write_all(&request(CMD_WRITE, 9, 0, 6 * piece.len() as u32))
        .unwrap();
    for _ in 0..6 {
        std::thread::sleep(pause);
        s.write_all(&piece).unwrap();
    }
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        u32::from_be_bytes(reply[4..8].try_into().unwrap()),
        0,
        "error"
    );
    assert_eq!(u64::from_be_bytes(reply[8..].try_into().unwrap()), 9);
    assert!(
        export.contents()[..6 * piece.len()]
            .iter()
            .all(|&b| b == 0x5a)
    );
    t.shutdown();
}
