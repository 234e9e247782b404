//! A VM's chain of backups made through the API as the SNA makes them (a full copied with
//! nbdcopy, incrementals that rewrite and zero a few 64 KiB pieces with qemu-io), with the
//! guest's bytes at each point kept, so a test can check every kept point after a prune.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{http, make_raw, run_ok};

pub struct Chain {
    pub vm: String,
    /// Oldest first.
    pub ids: Vec<String>,
    /// The guest's bytes as of each backup of `ids`.
    pub points: Vec<Vec<u8>>,
}

const PIECE: usize = 64 << 10;

fn ok(resp: (u16, Value)) -> Value {
    assert_eq!(resp.0, 200, "{}", resp.1);
    resp.1
}

pub fn wait_backup(api: &str, token: &str, id: &str, want: &str) -> Value {
    for _ in 0..1200 {
        let b = ok(http(
            "GET",
            api,
            &format!("/api/v1/backups/{id}"),
            Some(token),
            None,
        ));
        if b["status"] == want {
            return b;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("backup {id} never became {want}");
}

/// Polls a job until it ends; returns it.
pub fn wait_job(api: &str, token: &str, id: &str) -> Value {
    for _ in 0..2400 {
        let j = ok(http(
            "GET",
            api,
            &format!("/api/v1/jobs/{id}"),
            Some(token),
            None,
        ));
        if !matches!(j["status"].as_str(), Some("queued" | "running")) {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("job {id} never ended");
}

/// One backup of `vm`: created, written by `write` (given the disk's NBD URI), completed.
pub fn backup(
    api: &str,
    token: &str,
    vm: &str,
    kind: &str,
    size: usize,
    write: impl FnOnce(&str),
) -> String {
    backup_in(api, token, vm, kind, size, None, write)
}

/// [`backup`] into the repository `repository` (None: the default one).
pub fn backup_in(
    api: &str,
    token: &str,
    vm: &str,
    kind: &str,
    size: usize,
    repository: Option<&str>,
    write: impl FnOnce(&str),
) -> String {
    let mut body = json!({
        "vm_name": vm,
        "backup_type": kind,
        "disks": [{ "disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": size }],
    });
    if let Some(r) = repository {
        body["repository_id"] = json!(r);
    }
    backup_of(api, token, &body, write)
}

/// One backup made from the request `body` (one disk), written by `write`, completed.
pub fn backup_of(api: &str, token: &str, body: &Value, write: impl FnOnce(&str)) -> String {
    let b = ok(http(
        "POST",
        api,
        "/api/v1/backups",
        Some(token),
        Some(body),
    ));
    let id = b["backup_id"].as_str().unwrap().to_owned();
    write(b["disk_results"][0]["nbd_uri"].as_str().unwrap());
    // As the SNA calls it: from loopback, without the token.
    let done = http(
        "POST",
        api,
        &format!("/api/v1/backups/{id}/complete"),
        None,
        Some(&json!({ "change_id": format!("change-{id}") })),
    );
    assert_eq!(done.0, 200, "{}", done.1);
    wait_backup(api, token, &id, "completed");
    id
}

/// A full and `increments` incrementals of a `size`-byte disk.
pub fn build(
    api: &str,
    token: &str,
    vm: &str,
    dir: &Path,
    increments: usize,
    size: usize,
) -> Chain {
    let raw = dir.join(format!("{vm}-full.raw"));
    let mut bytes = make_raw(&raw, size, 7);
    let full = backup(api, token, vm, "full", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&raw).arg(uri));
    });
    let mut chain = Chain {
        vm: vm.to_owned(),
        ids: vec![full],
        points: vec![bytes.clone()],
    };
    let pieces = size / PIECE;
    for k in 1..=increments {
        // Three pieces rewritten with a pattern and one zeroed, spread over the disk and
        // different in every increment.
        let mut cmds = Vec::new();
        for j in 0..4 {
            let piece = (k * 7 + j * pieces / 4 + j * 3) % pieces;
            let at = piece * PIECE;
            if j == 3 {
                bytes[at..at + PIECE].fill(0);
                cmds.push(format!("write -z {at} {PIECE}"));
            } else {
                let pattern = (k * 16 + j) as u8 | 1;
                bytes[at..at + PIECE].fill(pattern);
                cmds.push(format!("write -P {pattern} {at} {PIECE}"));
            }
        }
        let id = backup(api, token, vm, "incremental", size, |uri| {
            let mut qemu_io = Command::new("qemu-io");
            qemu_io.args(["-f", "raw"]);
            for c in &cmds {
                qemu_io.args(["-c", c]);
            }
            run_ok(qemu_io.arg(uri));
        });
        chain.ids.push(id);
        chain.points.push(bytes.clone());
    }
    chain
}

/// The disk as of backup `id`, read through a restore export with nbdcopy.
pub fn restore_bytes(api: &str, token: &str, id: &str, dir: &Path) -> Vec<u8> {
    restore_bytes_from(api, token, id, dir, None)
}

/// [`restore_bytes`] from the backup's copy in `repository` (an S3 repository) when given.
pub fn restore_bytes_from(
    api: &str,
    token: &str,
    id: &str,
    dir: &Path,
    repository: Option<&str>,
) -> Vec<u8> {
    let mut body = json!({ "backup_id": id, "disk_id": 0 });
    if let Some(r) = repository {
        body["repository_id"] = json!(r);
    }
    let r = ok(http(
        "POST",
        api,
        "/api/v1/restores",
        Some(token),
        Some(&body),
    ));
    let out = dir.join(format!("{id}.restored"));
    run_ok(
        Command::new("nbdcopy")
            .arg(r["nbd_uri"].as_str().unwrap())
            .arg(&out),
    );
    let restore = r["restore_id"].as_str().unwrap();
    let closed = http(
        "DELETE",
        api,
        &format!("/api/v1/restores/{restore}"),
        Some(token),
        None,
    );
    assert!(closed.0 == 200 || closed.0 == 204, "{}", closed.1);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}
