//! `sendense-hub serve` as a real process: curl for the API (like the README's quick start),
//! nbdcopy for the disk, SIGTERM at the end.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use serde_json::{Value, json};

fn curl(args: &[&str]) -> Value {
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("curl {args:?}: {e}: {:?}", out.stdout))
}

#[test]
fn serve_process_quick_start_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args([
            "--log-json",
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = ChildGuard(Some(child));
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("hub: {line}");
            let _ = tx.send(line);
        }
    });
    let (mut api, mut nbd) = (None, None);
    while api.is_none() || nbd.is_none() {
        let line = rx.recv().expect("hub exited before listening");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(a) = v["fields"]["api"].as_str() {
            api = Some(a.to_owned());
        }
        if let Some(n) = v["fields"]["nbd"].as_str() {
            nbd = Some(n.to_owned());
        }
    }
    let api = format!("http://{}", api.unwrap());
    assert_eq!(curl(&[&format!("{api}/health")])["status"], "ok");

    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let src = dir.path().join("disk.raw");
    make_raw(&src, 3 << 20, 40);
    let req = json!({"vm_name": "quick", "backup_type": "full",
        "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 3 << 20}]});
    let backup = curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        &req.to_string(),
        &format!("{api}/api/v1/backups"),
    ]);
    let id = backup["backup_id"].as_str().unwrap();
    let uri = backup["disk_results"][0]["nbd_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!("nbd://{}/", nbd.unwrap())),
        "{uri}"
    );
    run_ok(Command::new("nbdcopy").arg(&src).arg(uri));
    // The SNA completes without a token (it comes from loopback through its tunnel).
    let complete = format!("{api}/api/v1/backups/{id}/complete");
    curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"disk_id":0,"change_id":"x-1"}"#,
        &complete,
    ]);
    let get = format!("{api}/api/v1/backups/{id}");
    let mut status = Value::Null;
    for _ in 0..600 {
        status = curl(&["-H", &auth, &get]);
        if status["status"] == "completed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status["status"], "completed", "{status}");
    // Without a token the operator routes refuse.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &get])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    let exit = guard.terminate_and_wait();
    assert!(exit.success(), "hub exited with {exit}");
    let image = std::path::PathBuf::from(status["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);
}
