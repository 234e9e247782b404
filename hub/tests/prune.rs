//! Retention through the API, against the `sendense-hub` binary at its defaults: a chain made
//! as the SNA makes it, pruned; every kept point restored through an NBD restore export and
//! compared with the guest's bytes at that point; images checked by qemu-img.

mod common;

use std::path::Path;
use std::process::Command;

use common::chain::{self, Chain};
use common::*;
use serde_json::{Value, json};

const SIZE: usize = 4 << 20;

fn backup(api: &str, token: &str, id: &str) -> Value {
    ok(http(
        "GET",
        api,
        &format!("/api/v1/backups/{id}"),
        Some(token),
        None,
    ))
}

fn backups_of(api: &str, token: &str, vm: &str) -> Vec<Value> {
    let list = ok(http(
        "GET",
        api,
        &format!("/api/v1/backups?vm_name={vm}"),
        Some(token),
        None,
    ));
    list["backups"].as_array().unwrap().clone()
}

/// Every backup of the VM that remains, restored and compared with its point; each image
/// `qemu-img check` clean; the newest's chain as long as the number kept.
fn assert_kept(api: &str, token: &str, chain: &Chain, kept: &[usize], dir: &Path) {
    let left = backups_of(api, token, &chain.vm);
    let mut ids: Vec<&str> = left
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = kept.iter().map(|&k| chain.ids[k].as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "the backups left");
    for &k in kept {
        let id = &chain.ids[k];
        let got = chain::restore_bytes(api, token, id, dir);
        assert!(
            got == chain.points[k],
            "backup {k} ({id}) does not read as its point in time"
        );
    }
    let newest = &chain.ids[*kept.iter().max().unwrap()];
    let b = backup(api, token, newest);
    let image = b["disk_results"][0]["qcow2_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let info = run_ok(Command::new("qemu-img").args([
        "info",
        "--backing-chain",
        "--output=json",
        "-U",
        &image,
    ]));
    let layers: Vec<Value> = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(layers.len(), kept.len(), "chain of the newest");
    for layer in &layers {
        qemu_img_check(Path::new(layer["filename"].as_str().unwrap()));
    }
}

fn prune(api: &str, token: &str, body: Value) -> Value {
    let resp = http("POST", api, "/api/v1/prune", Some(token), Some(&body));
    assert_eq!(resp.0, 202, "{}", resp.1);
    let job = chain::wait_job(api, token, resp.1["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job:#}");
    job
}

#[test]
fn keep_last_three_merges_the_bottom_of_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let chain = chain::build(&api, &token, "vm-a", dir.path(), 6, SIZE);

    let plan = ok(http(
        "POST",
        &api,
        "/api/v1/prune",
        Some(&token),
        Some(&json!({ "vm_name": "vm-a", "keep_last": 3, "dry_run": true })),
    ));
    assert_eq!(
        (plan["keep_count"].as_u64(), plan["remove_count"].as_u64()),
        (Some(3), Some(4)),
        "{plan:#}"
    );
    let verdicts: Vec<(&str, bool)> = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["backup_id"].as_str().unwrap(),
                i["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(&str, bool)> = chain
        .ids
        .iter()
        .rev()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n < 3))
        .collect();
    assert_eq!(verdicts, want, "newest first, the three newest kept");
    assert_eq!(plan["backups"][0]["rule"], "keep_last", "{plan:#}");
    // A dry run changes nothing.
    assert_eq!(backups_of(&api, &token, "vm-a").len(), 7);

    let job = prune(&api, &token, json!({ "vm_name": "vm-a", "keep_last": 3 }));
    assert_eq!(
        job["result"]["merged"].as_array().unwrap().len(),
        4,
        "{job:#}"
    );
    assert_kept(&api, &token, &chain, &[4, 5, 6], dir.path());
    let bottom = backup(&api, &token, &chain.ids[4]);
    assert_eq!(bottom["parent_backup_id"], Value::Null);
    assert_eq!(
        bottom["backup_type"], "full",
        "the new bottom holds a whole disk"
    );
    let top = backup(&api, &token, &chain.ids[6]);
    assert_eq!(top["parent_backup_id"], chain.ids[5].as_str());
    // The removed backups' directories are gone.
    for id in &chain.ids[..4] {
        let gone = data.join("repository").join("vm-a").join(id);
        assert!(!gone.exists(), "directory of removed backup {id} left");
    }
    // The next incremental builds on what is left.
    let next = ok(http(
        "GET",
        &api,
        "/api/v1/backups/changeid?vm_name=vm-a&disk_id=0",
        None,
        None,
    ));
    assert_eq!(
        next["change_id"],
        format!("change-{}", chain.ids[6]),
        "{next:#}"
    );
}

#[test]
fn middle_points_go_and_protected_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let chain = chain::build(&api, &token, "vm-b", dir.path(), 4, SIZE);
    let protect = |id: &str, on: bool| {
        http(
            "PUT",
            &api,
            &format!("/api/v1/backups/{id}/protected"),
            Some(&token),
            Some(&json!({ "protected": on })),
        )
    };
    let marked = ok(protect(&chain.ids[2], true));
    assert_eq!(marked["protected"], true);
    // A protected backup is not deleted either.
    let refused = http(
        "DELETE",
        &api,
        &format!("/api/v1/backups/{}", chain.ids[2]),
        Some(&token),
        None,
    );
    assert_eq!(refused.0, 409, "{}", refused.1);

    // Keep the newest: F and I1 go from the bottom, I3 from between protected I2 and I4.
    prune(&api, &token, json!({ "vm_name": "vm-b", "keep_last": 1 }));
    assert_kept(&api, &token, &chain, &[2, 4], dir.path());
    let top = backup(&api, &token, &chain.ids[4]);
    assert_eq!(top["parent_backup_id"], chain.ids[2].as_str());

    // Unprotected, it goes at the next prune: a merge of the top into it.
    ok(protect(&chain.ids[2], false));
    prune(&api, &token, json!({ "vm_name": "vm-b", "keep_last": 1 }));
    assert_kept(&api, &token, &chain, &[4], dir.path());
}

#[test]
fn prune_refusals_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let chain = chain::build(&api, &token, "vm-c", dir.path(), 1, SIZE);
    let post = |body: Value| http("POST", &api, "/api/v1/prune", Some(&token), Some(&body));

    let both = post(json!({ "vm_name": "vm-c", "policy_id": "p", "keep_last": 1 }));
    assert_eq!(both.0, 400, "{}", both.1);
    let no_policy = post(json!({ "vm_name": "vm-c", "policy_id": "nope" }));
    assert_eq!(no_policy.0, 404, "{}", no_policy.1);
    let no_repo = post(json!({ "vm_name": "vm-c", "repository_id": "nope", "keep_last": 1 }));
    assert_eq!(no_repo.0, 404, "{}", no_repo.1);
    let unknown = post(json!({ "vm_name": "vm-c", "keep_lats": 1 }));
    assert_eq!(unknown.0, 400, "{}", unknown.1);

    // A backup of the VM is writing: no prune under it.
    let body = json!({
        "vm_name": "vm-c", "backup_type": "incremental",
        "disks": [{ "disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": SIZE }],
    });
    let active = ok(http(
        "POST",
        &api,
        "/api/v1/backups",
        Some(&token),
        Some(&body),
    ));
    let busy = post(json!({ "vm_name": "vm-c", "keep_last": 1 }));
    assert_eq!(busy.0, 409, "{}", busy.1);
    let id = active["backup_id"].as_str().unwrap();
    ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{id}/cancel"),
        Some(&token),
        None,
    ));

    // Only a completed backup can be protected.
    let cancelled = http(
        "PUT",
        &api,
        &format!("/api/v1/backups/{id}/protected"),
        Some(&token),
        Some(&json!({ "protected": true })),
    );
    assert_eq!(cancelled.0, 409, "{}", cancelled.1);
    // No rules: everything stays.
    let plan = ok(post(json!({ "vm_name": "vm-c", "dry_run": true })));
    assert_eq!(plan["remove_count"], 0, "{plan:#}");
    assert_eq!(plan["backups"].as_array().unwrap().len(), chain.ids.len());
}

/// Failed and cancelled backups are kept for `failed_backup_retention` (7 days by default), then
/// swept with their files; completed ones are not the sweep's business.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backups_go_after_their_grace() {
    use axum::http::{Method, StatusCode};
    use common::hub::{Caller, TestHub, disk, full};

    let dir = tempfile::tempdir().unwrap();
    let make_failed = |h: &TestHub| {
        let h = h.hub.clone();
        async move {
            let b = h
                .create_backup(
                    serde_json::from_value(full("vm-f", vec![disk(0, 2000, SIZE as u64)])).unwrap(),
                )
                .await
                .unwrap();
            h.cancel(&b.id).await.unwrap();
            b.id
        }
    };
    let config = ::hub::Config {
        data_dir: dir.path().join("data"),
        ..::hub::Config::default()
    };
    let h = TestHub::start(config.clone()).await;
    let young = make_failed(&h).await;
    assert_eq!(
        h.hub.sweep_failed().await.unwrap(),
        0,
        "at the defaults a new failure stays"
    );
    let (status, _) = h
        .call(
            Method::GET,
            &format!("/api/v1/backups/{young}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;

    let h = TestHub::start(::hub::Config {
        failed_backup_retention: std::time::Duration::from_millis(1),
        ..config
    })
    .await;
    // The sweep runs at start, then hourly.
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = h
            .call(
                Method::GET,
                &format!("/api/v1/backups/{young}"),
                None,
                Caller::Operator,
            )
            .await
            .0;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::NOT_FOUND, "swept at start");
    assert!(
        !dir.path()
            .join("data/repository/vm-f")
            .join(&young)
            .exists()
    );
    let other = make_failed(&h).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(h.hub.sweep_failed().await.unwrap(), 1);
    assert!(
        !dir.path()
            .join("data/repository/vm-f")
            .join(&other)
            .exists()
    );
    h.stop().await;
}

/// An image held by a qemu: its merge is refused before it writes and the job says so; that
/// backup stays as it was (still restorable), the rest of the plan goes on, and a later prune
/// finishes it.
#[test]
fn an_image_held_by_qemu_refuses_the_merge_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let chain = chain::build(&api, &token, "vm-d", dir.path(), 2, SIZE);
    let full = data
        .join("repository/vm-d")
        .join(&chain.ids[0])
        .join("disk0.qcow2");
    let mut qemu = ChildGuard(Some(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-r", "-c", "sleep 60000"])
            .arg(&full)
            .spawn()
            .unwrap(),
    ));
    // Until qemu holds its lock.
    for _ in 0..200 {
        let out = Command::new("qemu-img")
            .args(["info", "-f", "qcow2"])
            .arg(&full)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stderr).contains("lock") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let resp = http(
        "POST",
        &api,
        "/api/v1/prune",
        Some(&token),
        Some(&json!({ "vm_name": "vm-d", "keep_last": 1 })),
    );
    assert_eq!(resp.0, 202, "{}", resp.1);
    let job = chain::wait_job(&api, &token, resp.1["id"].as_str().unwrap());
    // The full stays (its image is held); the middle one goes by merging the newest into it.
    assert_eq!(job["status"], "warning", "{job:#}");
    let refused = &job["result"]["not_removed"][0];
    assert_eq!(refused["backup_id"], chain.ids[0].as_str(), "{job:#}");
    assert!(
        refused["reason"].as_str().unwrap().contains("lock"),
        "{job:#}"
    );
    let log = ok(http(
        "GET",
        &api,
        &format!("/api/v1/jobs/{}/log", job["id"].as_str().unwrap()),
        Some(&token),
        None,
    ));
    assert!(
        log.to_string().contains("lock"),
        "the log names the lock: {log:#}"
    );
    qemu.child().kill().unwrap();
    qemu.child().wait().unwrap();
    qemu.0 = None;
    assert_kept(&api, &token, &chain, &[0, 2], dir.path());
    prune(&api, &token, json!({ "vm_name": "vm-d", "keep_last": 1 }));
    assert_kept(&api, &token, &chain, &[2], dir.path());
}

/// A chain in use is refused to whoever else would change or read it, with the job that holds
/// it, and accepted again once that job ends: a second prune and a verify while a prune merges,
/// a prune while a verify reads. The increment rewrites the whole disk so that the merge and the
/// verify last far longer than the request that follows them.
#[test]
fn a_chain_in_use_refuses_a_second_prune_and_a_verify() {
    const BIG: usize = 128 << 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let copy_in = |raw: &Path| {
        let raw = raw.to_owned();
        move |uri: &str| {
            run_ok(Command::new("nbdcopy").arg(&raw).arg(uri));
        }
    };
    let full_raw = dir.path().join("big-full.raw");
    make_raw(&full_raw, BIG, 11);
    let full = chain::backup(&api, &token, "vm-big", "full", BIG, copy_in(&full_raw));
    let inc_raw = dir.path().join("big-inc.raw");
    let inc_bytes = make_raw(&inc_raw, BIG, 12);
    let inc = chain::backup(
        &api,
        &token,
        "vm-big",
        "incremental",
        BIG,
        copy_in(&inc_raw),
    );
    let post = |path: &str, body: Option<&Value>| http("POST", &api, path, Some(&token), body);
    let prune_body = json!({ "vm_name": "vm-big", "keep_last": 1 });
    let verify_path = format!("/api/v1/backups/{inc}/verify");

    // A prune merges the full into the increment...
    let first = post("/api/v1/prune", Some(&prune_body));
    assert_eq!(first.0, 202, "{}", first.1);
    let job = first.1["id"].as_str().unwrap().to_owned();
    // ...and holds the chain: neither a second prune nor a verify gets in.
    let second = post("/api/v1/prune", Some(&prune_body));
    assert_eq!(second.0, 409, "{}", second.1);
    assert!(second.1.to_string().contains(&job), "{}", second.1);
    let verify = post(&verify_path, None);
    assert_eq!(verify.0, 409, "{}", verify.1);
    assert!(verify.1.to_string().contains(&job), "{}", verify.1);
    let done = chain::wait_job(&api, &token, &job);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let gone = http(
        "GET",
        &api,
        &format!("/api/v1/backups/{full}"),
        Some(&token),
        None,
    );
    assert_eq!(gone.0, 404, "the full was merged away: {}", gone.1);

    // A verify reads the chain: a prune waits for it.
    let verify = post(&verify_path, None);
    assert_eq!(verify.0, 202, "{}", verify.1);
    let vjob = verify.1["id"].as_str().unwrap().to_owned();
    let refused = post("/api/v1/prune", Some(&prune_body));
    assert_eq!(refused.0, 409, "{}", refused.1);
    assert!(refused.1.to_string().contains(&vjob), "{}", refused.1);
    let vdone = chain::wait_job(&api, &token, &vjob);
    assert_eq!(vdone["status"], "succeeded", "{vdone:#}");
    let b = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{inc}"),
        Some(&token),
        None,
    ));
    assert_eq!(b["verify_state"], "ok", "{b:#}");

    // Nothing was lost under the refusals: the kept point reads back as written.
    assert!(chain::restore_bytes(&api, &token, &inc, dir.path()) == inc_bytes);
    let after = prune(&api, &token, prune_body.clone());
    assert_eq!(after["status"], "succeeded", "{after:#}");
}
