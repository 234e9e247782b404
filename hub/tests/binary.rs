//! `sendense-hub serve` as a real process, driven over real sockets like the README's quick
//! start: HTTP for the API, nbdcopy for the disk, SIGTERM at the end, and a restart on the same
//! data dir.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// Writes 1 MiB, says so, then holds the connection open (no FLUSH) until stdin closes.
const HOLD_OPEN: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x77" * 1048576, 1048576)
print("written", flush=True)
sys.stdin.readline()
"#;

#[test]
fn serve_process_quick_start_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, nbd) = start_hub(&data);
    assert_eq!(
        ok(http("GET", &api, "/health", None, None))["status"],
        "healthy"
    );

    let token = read_token(&data);
    let src = dir.path().join("disk.raw");
    make_raw(&src, 3 << 20, 40);
    let backup = create_full(&api, &token, "quick", 3 << 20);
    let id = backup["backup_id"].as_str().unwrap().to_owned();
    let uri = backup["disk_results"][0]["nbd_uri"].as_str().unwrap();
    assert!(uri.starts_with(&format!("nbd://{nbd}/")), "{uri}");
    run_ok(Command::new("nbdcopy").arg(&src).arg(uri));
    // The SNA completes without a token (it comes from loopback through its tunnel).
    let body = json!({"disk_id": 0, "change_id": "x-1"});
    ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{id}/complete"),
        None,
        Some(&body),
    ));
    let get = format!("/api/v1/backups/{id}");
    let status = wait_status(&api, &token, &id, "completed");
    assert!(
        status["started_at"].is_string(),
        "the first connection was recorded: {status}"
    );
    // nbdcopy skips the all-zero MiB of the source.
    assert_eq!(
        status["disk_results"][0]["bytes_written"],
        2 << 20,
        "{status}"
    );
    // Without a token the operator routes refuse.
    let (code, err) = http("GET", &api, &get, None, None);
    assert_eq!((code, &err["code"]), (401, &json!("unauthorized")));

    // A second backup is mid-write, its connection open and never flushed, when SIGTERM comes.
    let open = create_full(&api, &token, "busy", 2 << 20);
    let open_id = open["backup_id"].as_str().unwrap().to_owned();
    let mut writer = Command::new("/usr/bin/python3")
        .args(["-c", HOLD_OPEN])
        .arg(open["disk_results"][0]["nbd_uri"].as_str().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "written");

    let exit = hub.terminate_and_wait();
    assert!(exit.success(), "hub exited with {exit}");
    let _ = writer.stdin.take().unwrap().write_all(b"\n");
    let _ = writer.wait();
    // Marked failed before the process exited, not at the next start.
    let recorded: (String, String) = rusqlite::Connection::open(data.join("catalog.sqlite"))
        .unwrap()
        .query_row(
            "SELECT status, error FROM backups WHERE id = ?1",
            [&open_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(recorded, ("failed".into(), "hub stopped".into()));

    let image = std::path::PathBuf::from(status["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);
    // What the interrupted client wrote was flushed at shutdown.
    let busy = std::path::PathBuf::from(open["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&busy);
    let mut expected = vec![0u8; 2 << 20];
    expected[1 << 20..].fill(0x77);
    let raw = dir.path().join("busy.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_img_compare(&raw, &busy);

    // Restart: the catalog is kept; the interrupted backup stays failed.
    let (mut hub, api, _) = start_hub(&data);
    let kept = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{id}"),
        Some(&token),
        None,
    ));
    assert_eq!(kept["status"], "completed");
    let failed = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{open_id}"),
        Some(&token),
        None,
    ));
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("hub stopped"),
        "{failed}"
    );
    assert!(hub.terminate_and_wait().success());
}

/// Writes the disk over and over in 256 KiB WRITEs, 16 in flight, with a FLUSH after every round;
/// says "flushed" once the first round is durable, and runs until the server goes away.
const WRITE_FOREVER: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
size = h.get_size(); chunk = 262144; n = 0
while True:
    for off in range(0, size, chunk):
        h.aio_pwrite(bytes([n % 251 + 1]) * chunk, off)
        while h.aio_in_flight() >= 16:
            h.poll(-1)
        n += 1
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
    if n == size // chunk:
        print("flushed", flush=True)
"#;

#[test]
fn serve_process_killed_mid_write_leaves_a_clean_image_and_a_failed_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, _) = start_hub(&data);
    let token = read_token(&data);
    // A completed backup first: a crash later must not touch it.
    let src = dir.path().join("disk.raw");
    make_raw(&src, 4 << 20, 41);
    let done = create_full(&api, &token, "crash", 4 << 20);
    let done_id = done["backup_id"].as_str().unwrap().to_owned();
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(done["disk_results"][0]["nbd_uri"].as_str().unwrap()),
    );
    let body = json!({"disk_id": 0, "change_id": "c-1"});
    ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{done_id}/complete"),
        None,
        Some(&body),
    ));

    // The next one is being written and flushed without pause when the hub is killed.
    let busy = create_full(&api, &token, "crash-busy", 16 << 20);
    let busy_id = busy["backup_id"].as_str().unwrap().to_owned();
    let mut writer = nbd_client(WRITE_FOREVER, &busy, "flushed");
    hub.child().kill().unwrap();
    hub.child().wait().unwrap();
    let _ = writer.child().wait();

    // Leaked clusters at worst (exit 3), never corruption, before anything repairs it.
    let busy_image =
        std::path::PathBuf::from(busy["disk_results"][0]["qcow2_path"].as_str().unwrap());
    wait_unlocked(&busy_image);
    let check = run_expect(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&busy_image),
        &[0, 3],
    );
    eprintln!("{}", String::from_utf8_lossy(&check.stdout));
    // The first round was flushed before the kill: every cluster of the disk is allocated.
    let map = run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(&busy_image),
    );
    let extents: Vec<Value> = serde_json::from_slice(&map.stdout).unwrap();
    assert!(
        extents.iter().all(|e| e["data"] == true),
        "flushed data lost: {extents:?}"
    );

    // Restarted on the same data dir: the catalog survived, the interrupted backup is failed
    // (with an image the check found readable), the completed one is intact.
    let (mut hub, api, _) = start_hub(&data);
    wait_status(&api, &token, &done_id, "completed");
    let failed = wait_status(&api, &token, &busy_id, "failed");
    let reason = failed["error"].as_str().unwrap();
    assert!(
        reason.contains("interrupted by restart") && !reason.contains("corrupt"),
        "{reason}"
    );
    let done_image =
        std::path::PathBuf::from(done["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&done_image);
    qemu_img_compare(&src, &done_image);

    // The killed process's image lock died with it: the VM backs up again at once.
    let again = create_full(&api, &token, "crash-busy", 4 << 20);
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(again["disk_results"][0]["nbd_uri"].as_str().unwrap()),
    );
    assert!(hub.terminate_and_wait().success());
    let again_image =
        std::path::PathBuf::from(again["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&again_image);
    qemu_img_compare(&src, &again_image);
}

/// An HTTPS request by curl, trusting only `ca`; returns the status and the JSON body.
fn curl(
    method: &str,
    url: &str,
    ca: &Path,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-H", "Content-Type: application/json"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["--data", &b.to_string()]);
    }
    let out = run_ok(cmd.arg(url));
    let text = String::from_utf8(out.stdout).unwrap();
    let (payload, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(payload).unwrap_or(Value::Null),
    )
}

#[test]
fn https_api_and_nbds_uris_with_tls_init_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = dir.path().join("tls");
    run_ok(Command::new(BIN).args(["tls", "init"]).arg(&creds));
    let creds_arg = creds.to_str().unwrap();
    let (mut hub, api, nbd) = start_hub_with(
        &data,
        &[
            "--tls",
            "require",
            "--tls-creds",
            creds_arg,
            "--api-tls",
            "on",
        ],
    );
    let ca = creds.join("ca-cert.pem");
    let base = format!("https://{api}");
    let (code, health) = curl("GET", &format!("{base}/health"), &ca, None, None);
    assert_eq!((code, &health["status"]), (200, &json!("healthy")));
    // A client that does not trust the CA refuses the server (curl: exit 60), and the next is served.
    let untrusted = Command::new("curl")
        .args(["-sS", &format!("{base}/health")])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    assert_eq!(
        curl("GET", &format!("{base}/health"), &ca, None, None).0,
        200
    );
    // Nothing is served in clear any more.
    let clear = Command::new("curl")
        .args(["-sS", &format!("http://{api}/health")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&clear.stdout).contains("\"ok\""));

    let token = read_token(&data);
    let req = json!({"vm_name": "tls", "backup_type": "full",
        "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 2 << 20}]});
    let (code, backup) = curl(
        "POST",
        &format!("{base}/api/v1/backups"),
        &ca,
        Some(&token),
        Some(&req),
    );
    assert_eq!(code, 200, "{backup}");
    let uri = backup["disk_results"][0]["nbd_uri"].as_str().unwrap();
    assert!(uri.starts_with(&format!("nbds://{nbd}/")), "{uri}");
    let targets = backup["nbd_targets_string"].as_str().unwrap();
    assert!(targets.starts_with("2000:nbds://"), "{targets}");
    let src = dir.path().join("disk.raw");
    make_raw(&src, 2 << 20, 41);
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(format!("{uri}?tls-certificates={creds_arg}")),
    );
    // The SNA's token-free route still answers on loopback, now over HTTPS.
    let id = backup["backup_id"].as_str().unwrap();
    let body = json!({"disk_id": 0, "change_id": "x-1"});
    let (code, _) = curl(
        "POST",
        &format!("{base}/api/v1/backups/{id}/complete"),
        &ca,
        None,
        Some(&body),
    );
    assert_eq!(code, 200);
    let (code, _) = curl(
        "GET",
        &format!("{base}/api/v1/backups/{id}"),
        &ca,
        None,
        None,
    );
    assert_eq!(code, 401, "operator routes still need the token");
    assert!(hub.terminate_and_wait().success());
}

/// A python3-libnbd client running `script` on the backup's first disk, once it printed `ready`.
fn nbd_client(script: &str, backup: &Value, ready: &str) -> ChildGuard {
    let mut client = ChildGuard(Some(
        Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(backup["disk_results"][0]["nbd_uri"].as_str().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut line = String::new();
    BufReader::new(client.child().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), ready);
    client
}

#[test]
fn killed_while_finalising_keeps_the_bytes_received() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, _) = start_hub(&data);
    let token = read_token(&data);
    let b = create_full(&api, &token, "slow-close", 2 << 20);
    let id = b["backup_id"].as_str().unwrap().to_owned();
    // 1 MiB written, the connection held open: finalising waits for it to go idle.
    let writer = nbd_client(HOLD_OPEN, &b, "written");
    let c = ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{id}/complete"),
        None,
        Some(&json!({"change_id": "c-9"})),
    ));
    assert_eq!(c["status"], "finalizing");
    hub.child().kill().unwrap();
    hub.child().wait().unwrap();
    drop(writer);

    let (mut hub, api, _) = start_hub(&data);
    let failed = wait_status(&api, &token, &id, "failed");
    assert_eq!(
        failed["disk_results"][0]["bytes_written"],
        1 << 20,
        "{failed}"
    );
    assert!(hub.terminate_and_wait().success());
}
