//! `sendense-hub serve-image`, `check` and `info` driven through the built binary by real clients.

mod common;

use std::process::Command;

use common::*;

const SIZE: usize = 8 << 20;

/// Reads 300 random unaligned ranges of the export at argv[1] and compares them with the raw file
/// argv[2]; the export must be read-only.
const UNALIGNED_READS: &str = r#"
import random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.is_read_only(), "export is writable"
src = open(sys.argv[2], "rb").read()
assert h.get_size() == len(src)
rng = random.Random(11)
for _ in range(300):
    off = rng.randrange(len(src) - 1)
    n = rng.randrange(1, min(300000, len(src) - off) + 1)
    got = h.pread(n, off)
    if got != src[off:off + n]:
        sys.exit(f"read of {n} bytes at {off} differs")
"#;

#[test]
fn nbdcopy_in_and_out_then_sigterm_leaves_a_clean_identical_image() {
    for io in ["buffered", "direct"] {
        nbdcopy_in_and_out(io);
    }
}

/// With `--storage-io io`, in a directory on the build's filesystem (`/tmp` may be tmpfs).
fn nbdcopy_in_and_out(io: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if io == "direct" {
        let probe = std::fs::File::create(tmp_path(&dir, "probe")).unwrap();
        if let Err((e, _)) = qcow2::DirectStorage::new(qcow2::FileStorage::new(probe)) {
            eprintln!("skipping --storage-io direct: {e}");
            return;
        }
    }
    let src = tmp_path(&dir, "src.raw");
    let image = tmp_path(&dir, "disk.qcow2");
    make_raw(&src, SIZE, 1);

    let (mut server, uri) = serve_image(
        &[
            "--listen",
            "127.0.0.1:0",
            "--create",
            "8M",
            "--storage-io",
            io,
        ],
        &image,
    );
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--requests=16"])
            .arg(&src)
            .arg(&uri),
    );
    // Read it back over NBD while the server still runs.
    let back = tmp_path(&dir, "back.raw");
    run_ok(
        Command::new("nbdcopy")
            .arg("--connections=1")
            .arg(&uri)
            .arg(&back),
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());

    let status = server.terminate_and_wait();
    assert!(status.success(), "serve-image exited with {status}");
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);

    // A restore: served read-only the same way, read back whole and at unaligned offsets and
    // lengths (which a direct-I/O image reads through bounce buffers).
    let (mut server, uri) = serve_image(
        &["--listen", "127.0.0.1:0", "--read-only", "--storage-io", io],
        &image,
    );
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", UNALIGNED_READS])
            .arg(&uri)
            .arg(&src),
    );
    let restored = tmp_path(&dir, "restored.raw");
    run_ok(
        Command::new("nbdcopy")
            .arg("--connections=4")
            .arg(&uri)
            .arg(&restored),
    );
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&src).unwrap());
    assert!(server.terminate_and_wait().success());
    qemu_img_compare(&src, &image);

    // Our own checker and info agree with qemu-img.
    run_ok(Command::new(BIN).arg("check").arg(&image));
    let info = run_ok(Command::new(BIN).args(["info", "--json"]).arg(&image));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], SIZE as u64);
}

#[test]
fn qemu_img_convert_over_unix_socket_and_read_only_export() {
    let dir = tempfile::tempdir().unwrap();
    let src = tmp_path(&dir, "src.raw");
    let image = tmp_path(&dir, "disk.qcow2");
    let socket = tmp_path(&dir, "nbd.sock");
    make_raw(&src, SIZE, 2);

    let (mut server, uri) = serve_image(
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--name",
            "disk0",
            "--create",
            "8M",
            "--cluster-size",
            "4K",
        ],
        &image,
    );
    assert_eq!(
        uri,
        format!("nbd+unix:///disk0?socket={}", socket.display())
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    assert!(server.terminate_and_wait().success());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);

    let (mut server, uri) = serve_image(
        &["--listen", "127.0.0.1:0", "--read-only", "--name", "ro"],
        &image,
    );
    let list = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg(uri.trim_end_matches("ro")),
    );
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("export=\"ro\""),
        "LIST does not show the export"
    );
    let out = tmp_path(&dir, "out.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&out),
    );
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
    // A write to the read-only export fails.
    let fail = Command::new("nbdcopy")
        .arg(&src)
        .arg(&uri)
        .output()
        .unwrap();
    assert!(!fail.status.success());
    assert!(server.terminate_and_wait().success());
    qemu_img_check(&image);
}

/// First extent (length, flags) of each metadata context at a few offsets, as JSON.
const BLOCK_STATUS: &str = r#"
import json, nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.connect_uri(sys.argv[1])
def probe(offset):
    seen = {}
    def cb(ctx, off, entries, err):
        seen[ctx] = entries[:2]
        return 0
    h.block_status(65536, offset, cb)
    return seen
print(json.dumps({str(o): probe(o) for o in (0, 3 << 20, 6 << 20)}))
h.shutdown()
"#;

#[test]
fn overlay_with_backing_file_reads_through_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = tmp_path(&dir, "base.raw");
    let base = tmp_path(&dir, "base.qcow2");
    let top = tmp_path(&dir, "top.qcow2");
    let mut data = make_raw(&base_raw, SIZE, 3);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&base_raw)
            .arg(&base),
    );

    let (mut server, uri) = serve_image(
        &[
            "--listen",
            "127.0.0.1:0",
            "--create",
            "8M",
            "--backing",
            base.to_str().unwrap(),
        ],
        &top,
    );
    // Change 1 MiB in the middle through the overlay.
    run_ok(
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0xa5 3M 1M",
                "-c",
                "write -z 6M 64K",
            ])
            .arg(&uri),
    );
    // Block status through the adapter: base:allocation flags and chain depth per range.
    let status = run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", BLOCK_STATUS])
            .arg(&uri),
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let at = |offset: u64| &status[offset.to_string()];
    assert_eq!(at(0)["base:allocation"][1], 0, "{status}"); // data, from the backing file
    assert_eq!(at(0)["qemu:allocation-depth"][1], 2, "{status}");
    assert_eq!(at(3 << 20)["base:allocation"][1], 0, "{status}");
    assert_eq!(at(3 << 20)["qemu:allocation-depth"][1], 1, "{status}");
    assert_eq!(
        at(6 << 20)["base:allocation"][1].as_u64().unwrap() & 2,
        2,
        "{status}"
    ); // zero
    assert_eq!(at(6 << 20)["qemu:allocation-depth"][1], 1, "{status}");
    data[3 << 20..4 << 20].fill(0xa5);
    data[6 << 20..(6 << 20) + (64 << 10)].fill(0);
    assert!(server.terminate_and_wait().success());

    let expected = tmp_path(&dir, "expected.raw");
    std::fs::write(&expected, &data).unwrap();
    qemu_img_check(&top);
    qemu_img_compare(&expected, &top);
    let info = run_ok(Command::new(BIN).args(["info"]).arg(&top));
    assert!(String::from_utf8_lossy(&info.stdout).contains("backing file:"));
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "x.qcow2");
    run_expect(
        Command::new(BIN)
            .args(["serve-image", "--create", "1X"])
            .arg(&image),
        &[2],
    );
    run_expect(
        Command::new(BIN)
            .args(["serve-image", "--storage-io", "fast"])
            .arg(&image),
        &[2],
    );
    run_expect(
        Command::new(BIN)
            .args(["serve-image", "--backing", "b.qcow2"])
            .arg(&image),
        &[2],
    );
    // Nothing to open.
    run_expect(
        Command::new(BIN)
            .args(["serve-image", "--listen", "127.0.0.1:0"])
            .arg(&image),
        &[1],
    );
    run_expect(Command::new(BIN).arg("check").arg(&image), &[1]);
}

#[test]
fn check_exit_codes_follow_qemu_img() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "x.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("4M"),
    );
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 9 0 128K"])
            .arg(&image),
    );
    run_ok(Command::new(BIN).arg("check").arg(&image));

    // Point the first L1 entry far past the end of the file: a corruption.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut header = [0u8; 48];
    f.read_exact(&mut header).unwrap();
    let l1_offset = u64::from_be_bytes(header[40..48].try_into().unwrap());
    f.seek(SeekFrom::Start(l1_offset)).unwrap();
    f.write_all(&((1u64 << 63) | (1u64 << 40)).to_be_bytes())
        .unwrap();
    drop(f);
    run_expect(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&image),
        &[2],
    );
    let out = run_expect(Command::new(BIN).arg("check").arg(&image), &[2]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("errors were found"),
        "{out:?}"
    );
}

/// 32 connections, each with 64 WRITEs of 256 KiB submitted at once (512 MiB offered), driven by
/// one select loop so every connection keeps its requests coming. Overwrites one 16 MiB range so
/// the image stays small. Exits non-zero if a write fails.
const MANY_WRITES: &str = r#"
import nbd, select, sys
uri, conns, depth, size = sys.argv[1], 32, 64, 256 * 1024
buf = nbd.Buffer(size)
handles, cookies = [], []
for c in range(conns):
    h = nbd.NBD()
    h.connect_uri(uri)
    handles.append(h)
    cookies.append([h.aio_pwrite(buf, (j * size) % (16 << 20)) for j in range(depth)])
while any(h.aio_in_flight() > 0 for h in handles):
    rd, wr = [], []
    for h in handles:
        d = h.aio_get_direction()
        if d & nbd.AIO_DIRECTION_READ:
            rd.append(h.aio_get_fd())
        if d & nbd.AIO_DIRECTION_WRITE:
            wr.append(h.aio_get_fd())
    r, w, _ = select.select(rd, wr, [])
    for h in handles:
        fd = h.aio_get_fd()
        if fd in r:
            h.aio_notify_read()
        if fd in w:
            h.aio_notify_write()
for h, cs in zip(handles, cookies):
    for c in cs:
        assert h.aio_command_completed(c)
    h.shutdown()
"#;

/// Peak resident memory of a running process, from `/proc/PID/status`.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn thirty_two_connections_with_deep_queues_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "disk.qcow2");
    let (mut server, uri) = serve_image(&["--listen", "127.0.0.1:0", "--create", "16M"], &image);
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", MANY_WRITES])
            .arg(&uri),
    );
    // 512 MiB of payloads were offered at once. What the server may hold: the default
    // server-wide budget (128 MiB in flight) plus at most 64 MiB of idle pooled buffers, plus
    // the process itself (~10 MiB). Without the server-wide budget each connection could hold
    // 128 MiB and this run peaks near the 512 MiB offered.
    let hwm_mib = vm_hwm_kib(server.pid()) / 1024;
    assert!(hwm_mib <= 256, "server peak RSS {hwm_mib} MiB");
    assert!(server.terminate_and_wait().success());
    qemu_img_check(&image);
}

#[test]
fn tls_init_then_nbds_copy_and_a_client_without_certificate_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let creds = tmp_path(&dir, "creds");
    let out = run_ok(Command::new(BIN).arg("tls").arg("init").arg(&creds));
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"));
    // qemu's layout, keys private.
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in [
        ("ca-cert.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("server-cert.pem", 0o644),
        ("server-key.pem", 0o600),
    ] {
        let meta = std::fs::metadata(creds.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    // A second init would overwrite the CA: refused.
    run_expect(Command::new(BIN).arg("tls").arg("init").arg(&creds), &[1]);

    let src = tmp_path(&dir, "src.raw");
    let image = tmp_path(&dir, "disk.qcow2");
    make_raw(&src, SIZE, 4);
    let (mut server, uri) = serve_image(
        &[
            "--listen",
            "127.0.0.1:0",
            "--create",
            "8M",
            "--tls-creds",
            creds.to_str().unwrap(),
        ],
        &image,
    );
    assert!(uri.starts_with("nbds://127.0.0.1:"), "{uri}");
    let nbds = format!("{uri}?tls-certificates={}", creds.display());
    run_ok(Command::new("nbdcopy").arg(&src).arg(&nbds));
    // --tls-creds alone means require: nothing in clear.
    let clear = uri.replacen("nbds://", "nbd://", 1);
    run_expect(Command::new("nbdinfo").args(["--size", &clear]), &[1]);
    assert!(server.terminate_and_wait().success());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);

    // Mutual TLS: a client holding only the CA is refused, and the log says why.
    let log = tmp_path(&dir, "server.log");
    let mut child = ChildGuard(Some(
        Command::new(BIN)
            .args(["serve-image", "--listen", "127.0.0.1:0", "--read-only"])
            .args(["--tls-verify-peer", "--tls-creds"])
            .arg(&creds)
            .arg(&image)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.child().stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let ca_only = tmp_path(&dir, "ca-only");
    std::fs::create_dir(&ca_only).unwrap();
    std::fs::copy(creds.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
    let uri = format!("{}?tls-certificates={}", line.trim(), ca_only.display());
    run_expect(Command::new("nbdinfo").arg(&uri), &[1]);
    assert!(child.terminate_and_wait().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("peer sent no certificates"), "{log}");

    // qemu-nbd takes the same directory (it wants keyEncipherment in the server certificate).
    let socket = tmp_path(&dir, "qemu.sock");
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
        creds.display()
    );
    let _qemu = ChildGuard(Some(
        Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "-k"])
            .arg(&socket)
            .args(["--object", &object, "--tls-creds", "tls0"])
            .arg(&image)
            .spawn()
            .unwrap(),
    ));
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        socket.display(),
        creds.display()
    );
    let size = run_ok(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        SIZE.to_string()
    );
}
