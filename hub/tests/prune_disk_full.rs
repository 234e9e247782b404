//! A merge that runs out of space, through the API against the `sendense-hub` binary at its
//! defaults: a repository on a small tmpfs holding a full whose upper half is empty and an
//! incremental that writes it, so removing the full makes its image grow by the child's data;
//! the tmpfs is filled first. The prune fails saying why, the kept backup still reads byte for
//! byte, and once space is freed the next prune finishes the merge. Needs root (the tmpfs);
//! SKIPPED without.

mod common;

use std::process::Command;

use common::chain;
use common::*;
use serde_json::{Value, json};

const SIZE: usize = 16 << 20;

/// Unmounts the tmpfs even when the test fails half way.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn prune_job(api: &str, token: &str) -> Value {
    let body = json!({ "vm_name": "vm-full", "repository_id": "small", "keep_last": 1 });
    let resp = http("POST", api, "/api/v1/prune", Some(token), Some(&body));
    assert_eq!(resp.0, 202, "{}", resp.1);
    chain::wait_job(api, token, resp.1["id"].as_str().unwrap())
}

#[test]
fn a_merge_out_of_space_fails_clearly_and_finishes_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&small)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let _unmount = Unmount(small.clone());
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let repo = small.join("repository");
    ok(http(
        "POST",
        &api,
        "/api/v1/repositories",
        Some(&token),
        Some(&json!({ "id": "small", "path": repo })),
    ));

    // The full: random lower half, nothing above; the incremental writes the upper half.
    let raw = dir.path().join("full.raw");
    let mut bytes = make_raw(&raw, SIZE, 3);
    bytes[SIZE / 2..].fill(0);
    std::fs::write(&raw, &bytes).unwrap();
    let full = chain::backup_in(
        &api,
        &token,
        "vm-full",
        "full",
        SIZE,
        Some("small"),
        |uri| {
            run_ok(Command::new("nbdcopy").arg(&raw).arg(uri));
        },
    );
    let half = SIZE / 2;
    let incr = chain::backup_in(
        &api,
        &token,
        "vm-full",
        "incremental",
        SIZE,
        Some("small"),
        |uri| {
            run_ok(
                Command::new("qemu-io")
                    .args(["-f", "raw", "-c", &format!("write -P 0x5a {half} {half}")])
                    .arg(uri),
            );
        },
    );
    bytes[half..].fill(0x5a);

    // Leave less room than the merge needs (the child's 8 MiB).
    let filler = small.join("filler");
    let free = || {
        let out = run_ok(
            Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&small),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let room = free();
    run_ok(
        Command::new("fallocate")
            .args(["-l", &(room - (2 << 20)).to_string()])
            .arg(&filler),
    );
    assert!(free() < 3 << 20, "the tmpfs is not full: {}", free());

    let job = prune_job(&api, &token);
    assert_eq!(job["status"], "failed", "{job:#}");
    let said = job.to_string().to_lowercase();
    assert!(
        said.contains("space") || said.contains("enospc"),
        "the failure says why: {job:#}"
    );
    // What is kept reads as its point in time, and its image is sound.
    assert!(
        chain::restore_bytes(&api, &token, &incr, dir.path()) == bytes,
        "the kept backup does not read as its point after the failed merge"
    );
    // The removed one is not restored as anything else.
    let r = http(
        "POST",
        &api,
        "/api/v1/restores",
        Some(&token),
        Some(&json!({ "backup_id": full, "disk_id": 0 })),
    );
    assert!(r.0 >= 400, "a backup half merged away was offered: {}", r.1);

    // With room again, the next prune finishes the merge.
    std::fs::remove_file(&filler).unwrap();
    let job = prune_job(&api, &token);
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert!(
        chain::restore_bytes(&api, &token, &incr, dir.path()) == bytes,
        "the kept backup does not read as its point after the merge"
    );
    let b = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{incr}"),
        Some(&token),
        None,
    ));
    assert_eq!(
        (&b["parent_backup_id"], &b["backup_type"]),
        (&Value::Null, &json!("full")),
        "{b:#}"
    );
    // Clean, leaks included: what the failed attempt took was given back, then reused.
    let image = b["disk_results"][0]["qcow2_path"].as_str().unwrap();
    qemu_img_check(std::path::Path::new(image));
    let gone = http(
        "GET",
        &api,
        &format!("/api/v1/backups/{full}"),
        Some(&token),
        None,
    );
    assert_eq!(gone.0, 404, "{}", gone.1);
}
