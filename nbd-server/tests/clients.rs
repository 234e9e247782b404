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
