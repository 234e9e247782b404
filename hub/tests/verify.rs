//! Verify against the `sendense-hub` binary at its defaults: chains made as the SNA makes them
//! (nbdcopy, qemu-io), each then corrupted by hand in one way, and the verify job must fail
//! naming the backup, the disk and (for data) the 1 MiB guest range; a clean chain verifies ok,
//! before and after a prune merges it; a failed chain is no base for the next incremental.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::chain::{self, Chain};
use common::*;
use serde_json::{Value, json};

const SIZE: usize = 4 << 20;
const MIB: u64 = 1 << 20;

struct Hub {
    _guard: ChildGuard,
    api: String,
    token: String,
    dir: tempfile::TempDir,
}

fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (guard, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    Hub {
        _guard: guard,
        api,
        token,
        dir,
    }
}

impl Hub {
    fn chain(&self, vm: &str, increments: usize) -> Chain {
        chain::build(
            &self.api,
            &self.token,
            vm,
            self.dir.path(),
            increments,
            SIZE,
        )
    }

    fn backup(&self, id: &str) -> Value {
        ok(http(
            "GET",
            &self.api,
            &format!("/api/v1/backups/{id}"),
            Some(&self.token),
            None,
        ))
    }

    fn image(&self, id: &str) -> PathBuf {
        PathBuf::from(
            self.backup(id)["disk_results"][0]["qcow2_path"]
                .as_str()
                .unwrap(),
        )
    }

    /// Verify of one backup, to its end.
    fn verify(&self, id: &str) -> Value {
        let resp = http(
            "POST",
            &self.api,
            &format!("/api/v1/backups/{id}/verify"),
            Some(&self.token),
            None,
        );
        assert_eq!(resp.0, 202, "{}", resp.1);
        chain::wait_job(&self.api, &self.token, resp.1["id"].as_str().unwrap())
    }

    /// The verify of `id` fails, and its first failure is in backup `at`, disk 0, at `offset`
    /// (the 1 MiB range's start) and says `what`.
    fn assert_fails(&self, id: &str, at: &str, offset: Option<u64>, what: &str) {
        let job = self.verify(id);
        assert_eq!(job["status"], "failed", "{job:#}");
        let b = self.backup(id);
        assert_eq!(b["verify_state"], "failed", "{b:#}");
        assert!(b["verified_at"].is_string(), "{b:#}");
        let error = b["verify_error"].as_str().unwrap();
        let place = match offset {
            Some(o) => format!("backup {at} disk 0 guest offset {o}: "),
            None => format!("backup {at} disk 0: "),
        };
        assert!(
            error.starts_with(&place),
            "{error:?} should start {place:?}"
        );
        assert!(error.contains(what), "{error:?} should say {what:?}");
        let first = &job["result"]["failures"][0];
        assert_eq!(first["backup_id"], at, "{job:#}");
    }
}

/// Host offset and guest offset of a data cluster the image itself holds (not its backing).
fn own_data_cluster(image: &Path) -> (u64, u64) {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["map", "-U", "--output=json"])
            .arg(image),
    );
    let map: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["depth"] == 0 && e["data"] == true && e["offset"].is_u64())
        .expect("a data cluster of the image's own");
    (e["offset"].as_u64().unwrap(), e["start"].as_u64().unwrap())
}

fn flip_bit(path: &Path, at: u64, bit: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
}

fn be64(path: &Path, at: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

#[test]
fn a_flipped_data_bit_is_found_in_the_layer_that_holds_it() {
    let h = hub();
    let c = h.chain("vm-full-bit", 1);
    let full = h.image(&c.ids[0]);
    let (host, guest) = own_data_cluster(&full);
    flip_bit(&full, host + 4321, 3);
    let range = (guest + 4321) / MIB * MIB;
    // Verifying the incremental reads its chain: the fault is the full's.
    h.assert_fails(&c.ids[1], &c.ids[0], Some(range), "data differs");
    assert_eq!(h.backup(&c.ids[0])["verify_state"], "failed");

    let c = h.chain("vm-inc-bit", 2);
    let inc = h.image(&c.ids[1]);
    let (host, guest) = own_data_cluster(&inc);
    flip_bit(&inc, host + 17, 0);
    h.assert_fails(
        &c.ids[2],
        &c.ids[1],
        Some(guest / MIB * MIB),
        "data differs",
    );
    // The full below is fine.
    assert_eq!(h.backup(&c.ids[0])["verify_state"], "ok");
}

#[test]
fn metadata_faults_are_found() {
    let h = hub();
    // A bit of an L2 entry's host offset: the cluster now points elsewhere.
    let c = h.chain("vm-l2", 0);
    let img = h.image(&c.ids[0]);
    let l1 = be64(&img, 40);
    let l2 = be64(&img, l1) & OFFSET_MASK;
    let entry = (0..8192u64)
        .find(|i| be64(&img, l2 + i * 8) & OFFSET_MASK != 0)
        .unwrap();
    flip_bit(&img, l2 + entry * 8 + 5, 1); // bit 17 of the offset: two clusters away
    h.assert_fails(
        &c.ids[0],
        &c.ids[0],
        Some(entry * 65536 / MIB * MIB),
        "data differs",
    );
    let job_log = h.verify(&c.ids[0]);
    let all = job_log["result"]["failures"].to_string();
    assert!(
        all.contains("structural check"),
        "the check sees it too: {all}"
    );

    // A refcount block: the header cluster's refcount 1 becomes 0.
    let c = h.chain("vm-refblock", 0);
    let img = h.image(&c.ids[0]);
    let reftable = be64(&img, 48);
    let refblock = be64(&img, reftable);
    flip_bit(&img, refblock + 1, 0);
    h.assert_fails(&c.ids[0], &c.ids[0], None, "structural check");
}

#[test]
fn missing_truncated_and_swapped_files_are_found() {
    let h = hub();
    let c = h.chain("vm-trunc", 1);
    let full = h.image(&c.ids[0]);
    let len = std::fs::metadata(&full).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .unwrap()
        .set_len(len - 65536)
        .unwrap();
    h.assert_fails(&c.ids[1], &c.ids[0], None, "truncated");

    let c = h.chain("vm-no-image", 1);
    std::fs::remove_file(h.image(&c.ids[1])).unwrap();
    h.assert_fails(&c.ids[1], &c.ids[1], None, "missing");

    let c = h.chain("vm-no-digests", 1);
    std::fs::remove_file(h.image(&c.ids[0]).with_extension("digests")).unwrap();
    h.assert_fails(&c.ids[1], &c.ids[0], None, "digests file");

    // The incremental's header made to name another valid qcow2 as its backing file.
    let c = h.chain("vm-backing", 1);
    let inc = h.image(&c.ids[1]);
    let other = inc.parent().unwrap().join("other.qcow2");
    qemu_img_create(&other, SIZE as u64);
    run_ok(
        Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b"])
            .arg(&other)
            .arg(&inc),
    );
    h.assert_fails(&c.ids[1], &c.ids[1], None, "backing file is");

    // The full's file replaced by another valid qcow2 of the same size.
    let c = h.chain("vm-replaced", 1);
    let full = h.image(&c.ids[0]);
    std::fs::remove_file(&full).unwrap();
    qemu_img_create(&full, SIZE as u64);
    let job = h.verify(&c.ids[1]);
    assert_eq!(job["status"], "failed", "{job:#}");
    let all = job["result"]["failures"].to_string();
    assert!(all.contains("no longer mapped"), "{all}");
}

#[test]
fn a_clean_chain_verifies_ok_and_a_failed_one_is_no_base() {
    let h = hub();
    let c = h.chain("vm-clean", 2);
    let job = h.verify(&c.ids[2]);
    assert_eq!(job["status"], "succeeded", "{job:#}");
    for id in &c.ids {
        let b = h.backup(id);
        assert_eq!(b["verify_state"], "ok", "{b:#}");
        assert!(b["verify_error"].is_null());
    }
    let dir = h.image(&c.ids[2]).parent().unwrap().to_owned();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["verify_state"], "ok");
    assert!(
        manifest["disks"][0]["digests_blake3"].is_string(),
        "{manifest:#}"
    );
    let metrics = http("GET", &h.api, "/metrics", None, None).1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("sendense_backups_verify{state=\"ok\"} 3"),
        "{metrics}"
    );

    let changeid = |vm: &str| {
        ok(http(
            "GET",
            &h.api,
            &format!("/api/v1/backups/changeid?vm_name={vm}&disk_id=0"),
            Some(&h.token),
            None,
        ))
    };
    assert_eq!(
        changeid("vm-clean")["change_id"],
        format!("change-{}", c.ids[2])
    );
    let (host, _) = own_data_cluster(&h.image(&c.ids[0]));
    flip_bit(&h.image(&c.ids[0]), host, 7);
    assert_eq!(h.verify(&c.ids[0])["status"], "failed");
    let answer = changeid("vm-clean");
    assert_eq!(answer["change_id"], "", "{answer:#}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("failed verify"),
        "{answer:#}"
    );
    let b = ok(http(
        "POST",
        &h.api,
        "/api/v1/backups",
        Some(&h.token),
        Some(&json!({
            "vm_name": "vm-clean",
            "backup_type": "incremental",
            "disks": [{ "disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": SIZE }],
        })),
    ));
    assert_eq!(b["backup_type"], "full", "{b:#}");
    assert!(b["parent_backup_id"].is_null(), "{b:#}");
    assert!(
        b["note"].as_str().unwrap().contains("failed verify"),
        "{b:#}"
    );
    assert_eq!(
        changeid("vm-clean")["change_id"],
        "",
        "the active full copies everything"
    );
    let resp = http(
        "POST",
        &h.api,
        &format!(
            "/api/v1/backups/{}/verify",
            b["backup_id"].as_str().unwrap()
        ),
        Some(&h.token),
        None,
    );
    assert_eq!(resp.0, 409, "an active backup is not verified: {}", resp.1);
}

#[test]
fn digests_are_right_after_a_prune_merges() {
    let h = hub();
    let c = h.chain("vm-merge", 4);
    let resp = http(
        "POST",
        &h.api,
        "/api/v1/prune",
        Some(&h.token),
        Some(&json!({ "vm_name": "vm-merge", "keep_last": 2 })),
    );
    assert_eq!(resp.0, 202, "{}", resp.1);
    let job = chain::wait_job(&h.api, &h.token, resp.1["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job:#}");
    // The bottom of the chain is now the merged image of backup 3.
    let job = h.verify(&c.ids[4]);
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(h.backup(&c.ids[3])["verify_state"], "ok");
    assert_eq!(h.backup(&c.ids[3])["backup_type"], "full");
    // And they still catch a flipped bit of the merged image.
    let merged = h.image(&c.ids[3]);
    let (host, guest) = own_data_cluster(&merged);
    flip_bit(&merged, host + 9, 2);
    h.assert_fails(
        &c.ids[4],
        &c.ids[3],
        Some(guest / MIB * MIB),
        "data differs",
    );
}

#[test]
fn verify_requests_are_checked() {
    let h = hub();
    let post =
        |path: &str, body: Option<Value>| http("POST", &h.api, path, Some(&h.token), body.as_ref());
    assert_eq!(post("/api/v1/backups/nope/verify", None).0, 404);
    assert_eq!(post("/api/v1/verify", Some(json!({}))).0, 400);
    assert_eq!(
        post("/api/v1/verify", Some(json!({ "repository_id": "nope" }))).0,
        404
    );
    assert_eq!(
        post("/api/v1/verify", Some(json!({ "vm_name": "nobody" }))).0,
        404
    );
    let c = h.chain("vm-scope", 1);
    let resp = post("/api/v1/verify", Some(json!({ "vm_name": "vm-scope" })));
    assert_eq!(resp.0, 202, "{}", resp.1);
    let job = chain::wait_job(&h.api, &h.token, resp.1["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(h.backup(&c.ids[1])["verify_state"], "ok");

    // Verify new backups: the next backup there is verified without being asked.
    let resp = http(
        "PUT",
        &h.api,
        "/api/v1/repositories/default/verify-new-backups",
        Some(&h.token),
        Some(&json!({ "verify_new_backups": true })),
    );
    assert_eq!(resp.0, 200, "{}", resp.1);
    let c = h.chain("vm-auto", 0);
    for _ in 0..600 {
        if h.backup(&c.ids[0])["verify_state"] == "ok" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the new backup was never verified");
}
