//! `kill -9` of the hub at many moments of a prune that merges a chain, then a restart at the
//! defaults: every backup still listed reads as its point in time through an NBD restore export,
//! every image is `qemu-img check` clean (leaks allowed), each manifest agrees with the catalog,
//! no merge is left recorded, and the next prune finishes the job.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chain::{self, Chain};
use common::*;
use serde_json::{Value, json};

const SIZE: usize = 4 << 20;
const INCREMENTS: usize = 3;
/// Moments of the kill, spread over the prune's length as measured in this run.
const MOMENTS: u32 = 22;

fn start(data: &Path) -> (ChildGuard, String, String) {
    let (hub, api, _nbd) = start_hub(data);
    let token = read_token(data);
    (hub, api, token)
}

fn post_prune(api: &str, token: &str, vm: &str) -> String {
    let body = json!({ "vm_name": vm, "keep_last": 1 });
    let resp = http("POST", api, "/api/v1/prune", Some(token), Some(&body));
    assert_eq!(resp.0, 202, "{}", resp.1);
    resp.1["id"].as_str().unwrap().to_owned()
}

/// What must hold after any crash and restart.
fn assert_consistent(api: &str, token: &str, data: &Path, chain: &Chain, dir: &Path) {
    let list = ok(http(
        "GET",
        api,
        &format!("/api/v1/backups?vm_name={}", chain.vm),
        Some(token),
        None,
    ));
    let left = list["backups"].as_array().unwrap();
    assert!(!left.is_empty(), "the newest backup is always kept");
    let newest = chain.ids.last().unwrap();
    assert!(
        left.iter().any(|b| b["backup_id"] == newest.as_str()),
        "newest kept"
    );
    for b in left {
        let id = b["backup_id"].as_str().unwrap();
        assert_eq!(b["status"], "completed", "{b:#}");
        let k = chain
            .ids
            .iter()
            .position(|c| c == id)
            .expect("a backup of the chain");
        let got = chain::restore_bytes(api, token, id, dir);
        assert!(
            got == chain.points[k],
            "backup {k} ({id}) no longer reads as its point in time"
        );
        let backup_dir = data.join("repository").join(&chain.vm).join(id);
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(backup_dir.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            manifest["parent_backup_id"], b["parent_backup_id"],
            "manifest of {id} agrees with the catalog"
        );
        let image = backup_dir.join("disk0.qcow2");
        run_expect(
            Command::new("qemu-img")
                .args(["check", "-f", "qcow2"])
                .arg(&image),
            &[0, 3],
        );
        // The parent named is the one the image is built on.
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json", "-U"])
                .arg(&image),
        );
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        match b["parent_backup_id"].as_str() {
            None => assert!(info["backing-filename"].is_null(), "{info:#}"),
            Some(parent) => assert!(
                info["backing-filename"].as_str().unwrap().contains(parent),
                "{id}: catalog parent {parent}, image backing {info:#}"
            ),
        }
    }
    // The removed backups' directories went (pending deletions are finished at start).
    for entry in std::fs::read_dir(data.join("repository").join(&chain.vm)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            left.iter().any(|b| b["backup_id"] == name.as_str()),
            "directory {name} left behind"
        );
    }
}

/// One round: a fresh hub and chain, a prune killed after `delay`, a restart, the checks, and a
/// second prune that must leave only the newest.
fn round(dir: &Path, n: u32, delay: Option<Duration>) -> Duration {
    let data = dir.join(format!("data-{n}"));
    let (mut hub, api, token) = start(&data);
    let chain = chain::build(&api, &token, "vm", dir, INCREMENTS, SIZE);
    let began = Instant::now();
    let job = post_prune(&api, &token, "vm");
    let Some(delay) = delay else {
        let job = chain::wait_job(&api, &token, &job);
        assert_eq!(job["status"], "succeeded", "{job:#}");
        return began.elapsed();
    };
    std::thread::sleep(delay.saturating_sub(began.elapsed()));
    hub.child().kill().unwrap();
    hub.child().wait().unwrap();
    drop(hub);
    for id in &chain.ids {
        let image = data
            .join("repository")
            .join("vm")
            .join(id)
            .join("disk0.qcow2");
        if image.exists() {
            wait_unlocked(&image);
        }
    }
    let (_hub, api, token) = start(&data);
    assert_consistent(&api, &token, &data, &chain, dir);
    let job = chain::wait_job(&api, &token, &post_prune(&api, &token, "vm"));
    assert_eq!(job["status"], "succeeded", "round {n}: {job:#}");
    assert_consistent(&api, &token, &data, &chain, dir);
    let left = ok(http(
        "GET",
        &api,
        "/api/v1/backups?vm_name=vm",
        Some(&token),
        None,
    ));
    assert_eq!(left["backups"].as_array().unwrap().len(), 1, "round {n}");
    began.elapsed()
}

#[test]
fn a_prune_killed_at_any_moment_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The prune's length here, on this machine, in this build.
    let length = round(dir.path(), 0, None);
    for n in 1..=MOMENTS {
        let delay = length * (n - 1) / (MOMENTS - 2);
        eprintln!("round {n}: kill after {delay:?} of {length:?}");
        round(dir.path(), n, Some(delay));
    }
}
