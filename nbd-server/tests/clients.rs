//! The server against real clients: nbdinfo, nbdcopy, qemu-img, qemu-io and python3-libnbd.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nbd_server::ServerConfig;
use support::*;

const MIB: u64 = 1 << 20;

fn listing() -> ServerConfig {
    ServerConfig {
        list_exports: true,
        ..ServerConfig::default()
    }
}

#[test]
fn nbdinfo_lists_exports_and_shows_what_we_advertise() {
    let t = TestServer::start(listing());
    t.server
        .add_export("vm-disk0", Arc::new(MemExport::new(4 * MIB)))
        .unwrap();
    t.server
        .add_export("vm-disk1", Arc::new(MemExport::new(MIB).read_only()))
        .unwrap();
    let out = stdout(Command::new("nbdinfo").args(["--list", "--json", &t.uri("")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let exports = v["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{out}");
    let d0 = &exports[0];
    assert_eq!(d0["export-name"], "vm-disk0");
    assert_eq!(d0["export-size"], 4 * MIB);
    assert_eq!(d0["is_read_only"], false);
    assert_eq!(d0["can_multi_conn"], true);
    assert_eq!(d0["can_flush"], true);
    assert_eq!(d0["can_fua"], true);
    assert_eq!(d0["can_trim"], true);
    assert_eq!(d0["can_zero"], true);
    assert_eq!(d0["can_fast_zero"], true);
    assert_eq!(d0["can_df"], true);
    assert_eq!(d0["can_cache"], true);
    assert_eq!(d0["block_size_minimum"], 1);
    assert_eq!(d0["block_size_preferred"], 4096);
    assert_eq!(d0["block_size_maximum"], 64 * MIB);
    assert_eq!(exports[1]["is_read_only"], true);
    assert_eq!(exports[1]["can_trim"], false);

    // One export, by unix socket, with the contexts it offers.
    let out = stdout(Command::new("nbdinfo").args(["--json", &t.unix_uri("vm-disk0")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["exports"][0];
    assert_eq!(v["protocol"], "newstyle-fixed", "{out}");
    assert_eq!(v["TLS"], false);
    assert_eq!(e["export-size"], 4 * MIB);
    let contexts: Vec<&str> = e["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(contexts, ["base:allocation", "qemu:allocation-depth"]);
    t.shutdown();
}

#[test]
fn listing_is_refused_when_the_policy_hides_exports() {
    let t = TestServer::with_export(
        ServerConfig::default(),
        "secret",
        Arc::new(MemExport::new(MIB)),
    );
    let out = Command::new("nbdinfo")
        .args(["--list", &t.uri("")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"));
    // The export itself is still reachable by name.
    let out = stdout(Command::new("nbdinfo").args(["--size", &t.uri("secret")]));
    assert_eq!(out.trim(), MIB.to_string());
    t.shutdown();
}

#[test]
fn nbdinfo_map_shows_holes_data_and_allocation_depth() {
    let export = MemExport::new(MIB)
        .fill(0, 64 * 1024, 0xaa)
        .backing(256 * 1024, 128 * 1024, 0xbb);
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(export));
    let out = stdout(Command::new("nbdinfo").args(["--map", &t.uri("d")]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // offset length type description
    assert_eq!(rows[0][..3], ["0", "65536", "0"], "{out}");
    assert_eq!(rows[1][..3], ["65536", "196608", "3"], "{out}");
    assert_eq!(rows[2][..3], ["262144", "131072", "0"], "{out}");
    assert_eq!(rows[3][..3], ["393216", "655360", "3"], "{out}");
    assert_eq!(rows.len(), 4);

    let out = stdout(Command::new("nbdinfo").args(["--map=qemu:allocation-depth", &t.uri("d")]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["0", "65536", "1"], "{out}");
    assert_eq!(rows[1][..3], ["65536", "196608", "0"], "{out}");
    assert_eq!(rows[2][..3], ["262144", "131072", "2"], "{out}");
    assert_eq!(rows[3][..3], ["393216", "655360", "0"], "{out}");
    t.shutdown();
}

fn nbdcopy_round_trip(connections: u32, unix: bool) {
    let size = 8 * MIB;
    let export = Arc::new(MemExport::new(size));
    let t = TestServer::with_export(ServerConfig::default(), "disk0", export.clone());
    let uri = if unix {
        t.unix_uri("disk0")
    } else {
        t.uri("disk0")
    };
    let src = t.dir.path().join("src.raw");
    let dst = t.dir.path().join("dst.raw");
    let data = pattern(size as usize, u64::from(connections));
    std::fs::write(&src, &data).unwrap();
    let conns = format!("--connections={connections}");
    // nbdcopy uses no more connections than threads, which default to the number of cores.
    let threads = format!("--threads={connections}");
    run(Command::new("nbdcopy")
        .args([&conns, &threads, "--requests=64"])
        .arg(&src)
        .arg(&uri));
    // nbdcopy sends no FLUSH; the server flushes when the last connection ends.
    t.wait_idle("disk0");
    assert!(export.flushes.load(Ordering::Relaxed) >= 1);
    assert!(
        export.contents() == data,
        "export differs from what nbdcopy wrote"
    );
    let stats = t.server.export_stats("disk0").unwrap();
    assert!(stats.bytes_written > 0);
    assert_eq!(stats.total_connections, u64::from(connections));
    assert!(stats.last_activity.is_some());

    run(Command::new("nbdcopy")
        .args([&conns, &threads])
        .arg(&uri)
        .arg(&dst));
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "nbdcopy read back differs"
    );
    t.shutdown();
}

#[test]
fn nbdcopy_in_and_out_with_one_connection() {
    nbdcopy_round_trip(1, false);
}

#[test]
fn nbdcopy_in_and_out_with_four_connections() {
    nbdcopy_round_trip(4, true);
}

#[test]
fn qemu_img_convert_to_and_from_nbd() {
    let size = 4 * MIB;
    let export = Arc::new(MemExport::new(size));
    let t = TestServer::with_export(ServerConfig::default(), "img", export.clone());
    let src = t.dir.path().join("src.raw");
    let dst = t.dir.path().join("dst.raw");
    let data = pattern(size as usize, 7);
    std::fs::write(&src, &data).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(t.uri("img")));
    t.wait_idle("img");
    assert!(export.contents() == data);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(t.uri("img"))
        .arg(&dst));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(&dst));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(t.uri("img")));
    t.shutdown();
}

#[test]
fn qemu_io_reads_and_writes() {
    let export = Arc::new(MemExport::new(MIB));
    let t = TestServer::with_export(ServerConfig::default(), "q", export.clone());
    let out = stdout(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 4096 65536",
        "-c",
        "read -P 0xab 4096 65536",
        "-c",
        "read -P 0 0 4096",
        "-c",
        "write -z 8192 4096",
        "-c",
        "read -P 0 8192 4096",
        "-c",
        "flush",
        &t.uri("q"),
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    t.wait_idle("q");
    let c = export.contents();
    assert!(c[4096..8192].iter().all(|&b| b == 0xab));
    assert!(c[8192..12288].iter().all(|&b| b == 0));
    assert!(c[12288..69632].iter().all(|&b| b == 0xab));
    t.shutdown();
}

/// The layout `edge.py block_status` and `structured` expect.
fn layered_export() -> MemExport {
    MemExport::new(MIB)
        .fill(0, 64 * 1024, 0xaa)
        .backing(256 * 1024, 128 * 1024, 0xbb)
}

#[test]
fn out_of_range_requests_get_errors_and_the_connection_goes_on() {
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["out_of_range", &t.uri("d"), &MIB.to_string()]);
    t.shutdown();
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let export = Arc::new(MemExport::new(MIB).read_only());
    let t = TestServer::with_export(ServerConfig::default(), "ro", export.clone());
    python("edge.py", &["read_only", &t.uri("ro")]);
    t.wait_idle("ro");
    t.shutdown();
    // Nothing to make durable on a read-only export... except the client's own FLUSH.
    assert_eq!(export.flushes.load(Ordering::Relaxed), 1);
}

#[test]
fn unknown_export_is_refused_at_go() {
    let t = TestServer::with_export(
        ServerConfig::default(),
        "good",
        Arc::new(MemExport::new(MIB)),
    );
    python("edge.py", &["unknown_export", &t.uri(""), "good"]);
    t.shutdown();
}

#[test]
fn oversize_requests_do_not_harm_the_server() {
    let config = ServerConfig {
        max_payload: MIB as u32,
        ..ServerConfig::default()
    };
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(4 * MIB)));
    python("edge.py", &["oversize", &t.uri("d"), &MIB.to_string()]);
    t.shutdown();
}

#[test]
fn garbage_is_dropped_while_other_clients_keep_working() {
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["garbage", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_limit() {
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["silent", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn one_flush_makes_writes_on_four_connections_visible_on_all() {
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["multi_conn", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn block_status_reports_holes_data_and_depth() {
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(layered_export()));
    python("edge.py", &["block_status", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn structured_reads_send_data_and_hole_chunks() {
    let t = TestServer::with_export(ServerConfig::default(), "d", Arc::new(layered_export()));
    python("edge.py", &["structured", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn extended_headers_starttls_and_out_of_order_replies() {
    let t = TestServer::with_export(ServerConfig::default(), "x", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["extended", &t.uri("x")]);
    t.shutdown();
}

#[test]
fn per_export_connection_limit() {
    let config = ServerConfig {
        max_connections_per_export: 2,
        ..ServerConfig::default()
    };
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["per_export_limit", &t.uri("d")]);
    t.shutdown();
}

#[test]
fn the_last_connection_vanishing_without_disc_still_flushes() {
    let export = Arc::new(MemExport::new(MIB));
    let t = TestServer::with_export(ServerConfig::default(), "d", export.clone());
    python("edge.py", &["write_and_vanish", &t.uri("d")]);
    t.wait_idle("d");
    assert_eq!(export.flushes.load(Ordering::Relaxed), 1);
    assert!(export.contents()[..65536].iter().all(|&b| b == b'v'));
    t.shutdown();
}

#[test]
fn remove_export_lets_connections_finish_then_flushes() {
    let export = Arc::new(MemExport::new(MIB));
    let t = TestServer::with_export(ServerConfig::default(), "d", export.clone());
    let holder = Holder::start(&t.uri("d"));
    let server = t.server.clone();
    let removal = t.rt.spawn(async move {
        server
            .remove_export("d", std::time::Duration::from_secs(60))
            .await
    });
    // During the grace period the open connection is still served...
    assert_eq!(holder.release(), "read ok");
    // ...and once it has gone, the removal completes long before the grace period would end.
    t.rt.block_on(removal).unwrap().unwrap();
    assert_eq!(export.flushes.load(Ordering::Relaxed), 2);
    assert!(t.server.export_stats("d").is_none());
    assert!(t.server.export_names().is_empty());
    let out = Command::new("nbdinfo").arg(t.uri("d")).output().unwrap();
    assert!(!out.status.success(), "removed export still reachable");
    t.shutdown();
}

#[test]
fn remove_export_closes_connections_after_the_grace_period() {
    let export = Arc::new(MemExport::new(MIB));
    let t = TestServer::with_export(ServerConfig::default(), "d", export.clone());
    let holder = Holder::start(&t.uri("d"));
    let server = t.server.clone();
    t.rt.block_on(server.remove_export("d", std::time::Duration::from_millis(100)))
        .unwrap();
    assert!(export.flushes.load(Ordering::Relaxed) >= 1);
    assert_eq!(holder.release(), "read failed");
    assert!(matches!(
        t.rt.block_on(t.server.remove_export("d", std::time::Duration::ZERO)),
        Err(nbd_server::ServerError::NoSuchExport(_))
    ));
    t.shutdown();
}

#[test]
fn shutdown_closes_connections_and_flushes_every_writable_export() {
    let a = Arc::new(MemExport::new(MIB));
    let b = Arc::new(MemExport::new(MIB).read_only());
    let t = TestServer::with_export(ServerConfig::default(), "a", a.clone());
    t.server.add_export("b", b.clone()).unwrap();
    assert!(matches!(
        t.server.add_export("b", b.clone()),
        Err(nbd_server::ServerError::ExportExists(_))
    ));
    let holder = Holder::start(&t.uri("a"));
    let uri = t.uri("a");
    t.shutdown();
    assert_eq!(holder.release(), "read failed");
    // The idle connection's end and the shutdown itself both flushed.
    assert!(a.flushes.load(Ordering::Relaxed) >= 1);
    assert_eq!(b.flushes.load(Ordering::Relaxed), 0);
    let out = Command::new("nbdinfo").arg(uri).output().unwrap();
    assert!(
        !out.status.success(),
        "server still accepting after shutdown"
    );
}

#[test]
fn connections_over_the_server_limit_are_dropped() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let t = TestServer::with_export(config, "d", Arc::new(MemExport::new(MIB)));
    let holder = Holder::start(&t.uri("d"));
    let out = Command::new("nbdinfo").arg(t.uri("d")).output().unwrap();
    assert!(!out.status.success(), "second connection was served");
    assert_eq!(holder.release(), "read ok");
    t.shutdown();
}

#[test]
fn requests_still_running_after_the_grace_period_fail_with_eshutdown() {
    let export = Arc::new(MemExport::new(MIB));
    export.stall_writes.store(true, Ordering::Relaxed);
    let t = TestServer::with_export(ServerConfig::default(), "d", export.clone());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/edge.py");
    let child = Command::new("/usr/bin/python3")
        .arg(path)
        .args(["write_expect_shutdown", &t.uri("d")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (boundedly) until the write has reached the export and is stuck there.
    for _ in 0..2000 {
        if export.writes.load(Ordering::Relaxed) > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(export.writes.load(Ordering::Relaxed), 1);
    t.rt.block_on(
        t.server
            .remove_export("d", std::time::Duration::from_millis(50)),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    t.shutdown();
}

#[test]
fn an_sna_like_session_is_durable_without_flush_or_disc() {
    let size = 96 * MIB;
    let export = Arc::new(MemExport::new(size));
    let t = TestServer::with_export(ServerConfig::default(), "vm-disk0", export.clone());
    python("edge.py", &["sna_like", &t.uri("vm-disk0")]);
    t.wait_idle("vm-disk0");
    assert_eq!(export.flushes.load(Ordering::Relaxed), 1);
    let c = export.contents();
    let m32 = (32 * MIB) as usize;
    assert!(c[..m32 / 2].iter().all(|&b| b == 0x5a));
    assert!(c[m32 / 2..m32 * 3 / 2].iter().all(|&b| b == 0));
    assert!(c[m32 * 3 / 2..m32 * 2].iter().all(|&b| b == 0x33));
    assert!(c[m32 * 2..m32 * 3 - 4096].iter().all(|&b| b == 0));
    assert!(c[m32 * 3 - 4096..].iter().all(|&b| b == 0x77));
    let stats = t.server.export_stats("vm-disk0").unwrap();
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.total_connections, 3);
    assert_eq!(stats.bytes_written, 2 * 32 * MIB + 4096);
    t.shutdown();
}

#[test]
fn option_haggling_follows_the_spec() {
    let t = TestServer::with_export(ServerConfig::default(), "hs", Arc::new(MemExport::new(MIB)));
    python("edge.py", &["handshake_rules", &t.uri("hs")]);
    t.shutdown();
}
