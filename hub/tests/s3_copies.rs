//! Copies into an S3 repository, against the `sendense-hub` binary at its defaults and a real S3
//! server on loopback (moto_server): the repository is created only when the bucket answers, its
//! secret is never shown or stored in clear, a copy of the newest backup of a chain sends the
//! whole chain (a 40 MiB full as a multipart upload, two incrementals), every layer is read back,
//! and the objects alone give the guest's bytes back through qemu-img. An object already at a
//! key is never replaced.

mod common;

use std::path::Path;
use std::process::Command;

use common::chain::{self, wait_job};
use common::copies;
use common::s3::{Moto, SECRET};
use common::*;
use serde_json::{Value, json};

const SIZE: usize = 40 << 20;

fn call(api: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    http(method, api, path, Some(token), body)
}

/// A moto server with `bucket`, a hub at its defaults, and the bucket added as repository
/// `bucket` (no prefix).
struct Env {
    moto: Moto,
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    hub: ChildGuard,
    api: String,
    token: String,
}

fn env(bucket: &str, object_lock: bool) -> Option<Env> {
    let moto = Moto::start()?;
    moto.create_bucket(bucket, object_lock);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let repo = moto.repository(bucket, bucket, "");
    ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&repo),
    ));
    Some(Env {
        moto,
        dir,
        data,
        hub,
        api,
        token,
    })
}

#[test]
fn a_chain_copied_to_s3_restores_from_the_objects_alone() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("offsite", false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);

    // Refused at creation, each with a 400 that says why.
    let mut missing = moto.repository("nobucket", "no-such-bucket", "");
    let r = call(&api, &token, "POST", "/api/v1/repositories", Some(&missing));
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.to_string().contains("no-such-bucket"), "{}", r.1);
    missing["config"]["endpoint"] = json!("http://127.0.0.1:9");
    let r = call(&api, &token, "POST", "/api/v1/repositories", Some(&missing));
    assert_eq!(r.0, 400, "{}", r.1);
    let mut no_secret = moto.repository("nosecret", "offsite", "");
    no_secret["config"]
        .as_object_mut()
        .unwrap()
        .remove("secret_access_key");
    let r = call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&no_secret),
    );
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.to_string().contains("secret_access_key"), "{}", r.1);
    // The old test route: a failed test is a 200 with success false.
    let test = |bucket: &str| {
        let body = moto.repository("t", bucket, "");
        ok(call(
            &api,
            &token,
            "POST",
            "/api/v1/repositories/test",
            Some(&body),
        ))
    };
    assert_eq!(test("no-such-bucket")["success"], false);
    assert_eq!(test("offsite")["success"], true);

    let created = ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&moto.repository("offsite", "offsite", "hub1")),
    ));
    assert_eq!(created["repository"]["type"], "s3", "{created}");
    assert_eq!(created["repository"]["config"]["bucket"], "offsite");
    assert_eq!(created["repository"]["config"]["prefix"], "hub1");
    // A second repository over the same keys is refused.
    let r = call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&moto.repository("again", "offsite", "")),
    );
    assert_eq!(r.0, 409, "{}", r.1);
    // Backups are not written into a bucket.
    let r = call(
        &api,
        &token,
        "POST",
        "/api/v1/backups",
        Some(
            &json!({"vm_name": "vm1", "backup_type": "full", "repository_id": "offsite",
            "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": SIZE}]}),
        ),
    );
    assert_eq!(r.0, 400, "{}", r.1);

    let c = chain::build(&api, &token, "vm1", dir.path(), 2, SIZE);
    let top = c.ids.last().unwrap().clone();

    // A local destination is refused; the S3 copy of the newest backup takes the chain.
    let r = call(
        &api,
        &token,
        "POST",
        &format!("/api/v1/backups/{top}/copy"),
        Some(&json!({"repository_id": "default"})),
    );
    assert_eq!(r.0, 400, "{}", r.1);
    let started = call(
        &api,
        &token,
        "POST",
        &format!("/api/v1/backups/{top}/copy"),
        Some(&json!({"repository_id": "offsite"})),
    );
    assert_eq!(started.0, 201, "{}", started.1);
    assert_eq!(started.1["status"], "pending", "{}", started.1);
    let job = wait_job(&api, &token, started.1["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job}");
    let again = call(
        &api,
        &token,
        "POST",
        &format!("/api/v1/backups/{top}/copy"),
        Some(&json!({"repository_id": "offsite"})),
    );
    assert_eq!(again.0, 409, "{}", again.1);

    let restored = dir.path().join("from-bucket");
    std::fs::create_dir(&restored).unwrap();
    let mut below: Option<std::path::PathBuf> = None;
    for (i, id) in c.ids.iter().enumerate() {
        let copies = ok(call(
            &api,
            &token,
            "GET",
            &format!("/api/v1/backups/{id}/copies"),
            None,
        ));
        let copies = copies.as_array().unwrap();
        assert_eq!(copies.len(), 1, "{copies:?}");
        let copy = &copies[0];
        assert_eq!(copy["status"], "completed", "{copy}");
        assert_eq!(copy["verification_status"], "passed", "{copy}");
        assert_eq!(copy["repository_id"], "offsite");
        assert_eq!(copy["source_backup_id"], *id);
        let parent = i.checked_sub(1).map(|p| c.ids[p].clone());
        assert_eq!(
            copy["parent_backup_id"].as_str(),
            parent.as_deref(),
            "{copy}"
        );
        // The layer's objects, fetched with plain GETs, read back as the chain.
        let prefix = format!("hub1/vm1/{id}");
        let image = restored.join(format!("{id}.qcow2"));
        std::fs::write(
            &image,
            moto.get("offsite", &format!("{prefix}/disk0.qcow2")),
        )
        .unwrap();
        let manifest: Value =
            serde_json::from_slice(&moto.get("offsite", &format!("{prefix}/manifest.json")))
                .unwrap();
        assert_eq!(manifest["backup_id"], *id, "{manifest}");
        assert_eq!(
            manifest["copy"]["disks"][0]["image_key"],
            format!("{prefix}/disk0.qcow2")
        );
        assert!(
            !moto
                .get("offsite", &format!("{prefix}/disk0.digests"))
                .is_empty()
        );
        if let Some(parent) = &below {
            run_ok(
                Command::new("qemu-img")
                    .args(["rebase", "-u", "-F", "qcow2", "-b"])
                    .arg(parent)
                    .arg(&image),
            );
        }
        qemu_img_check(&image);
        let raw = restored.join(format!("{id}.raw"));
        std::fs::write(&raw, &c.points[i]).unwrap();
        qemu_img_compare(&raw, &image);
        below = Some(image);
    }

    // Restores from the bucket while the local chain is there, and after it is gone: each point
    // of the chain read over NBD from the objects alone.
    let from_bucket =
        |id: &str| chain::restore_bytes_from(&api, &token, id, dir.path(), Some("offsite"));
    assert!(
        from_bucket(&top) == c.points[2],
        "the bucket's newest point differs"
    );
    for id in c.ids.iter().rev() {
        let gone = call(
            &api,
            &token,
            "DELETE",
            &format!("/api/v1/backups/{id}"),
            None,
        );
        assert!(gone.0 == 200 || gone.0 == 204, "{}", gone.1);
    }
    for (i, id) in c.ids.iter().enumerate() {
        assert!(
            from_bucket(id) == c.points[i],
            "point {i} from the bucket differs"
        );
    }

    // The storage figures count the copies; the repository cannot go while it holds them.
    let storage = ok(call(
        &api,
        &token,
        "GET",
        "/api/v1/repositories/offsite/storage",
        None,
    ));
    assert_eq!(storage["backup_count"], 3, "{storage}");
    assert!(
        storage["used_bytes"].as_u64().unwrap() > SIZE as u64 / 2,
        "{storage}"
    );
    let r = call(&api, &token, "DELETE", "/api/v1/repositories/offsite", None);
    assert_eq!(r.0, 409, "{}", r.1);

    // The secret is in no answer and in no file of the data dir.
    let list = ok(call(&api, &token, "GET", "/api/v1/repositories", None));
    assert!(list.to_string().contains("AKIATESTKEY"), "{list}");
    assert!(!list.to_string().contains(SECRET), "{list}");
    assert!(files_containing(&data, SECRET.as_bytes()).is_empty());

    never_over_an_existing_object(&moto, &api, &token, dir.path(), &c.vm);

    // A restart: the bucket is no directory to reconcile or probe; the copies are still there.
    hub.terminate_and_wait();
    let (_hub, api, _nbd) = start_hub(&data);
    let health = http("GET", &api, "/health", None, None);
    assert_eq!(health.0, 200, "{}", health.1);
    let copies = ok(call(
        &api,
        &token,
        "GET",
        &format!("/api/v1/backups/{top}/copies"),
        None,
    ));
    assert_eq!(copies[0]["status"], "completed", "{copies}");
    let t = ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories/offsite/test",
        None,
    ));
    assert_eq!(t["success"], true, "{t}");

    // The hub's disks lost: a new hub given the same bucket finds the copies in their manifests
    // and restores every point from them.
    let data2 = dir.path().join("data2");
    let (_hub2, api2, _nbd2) = start_hub(&data2);
    let token2 = read_token(&data2);
    let again = ok(call(
        &api2,
        &token2,
        "POST",
        "/api/v1/repositories",
        Some(&moto.repository("offsite", "offsite", "hub1")),
    ));
    assert_eq!(again["adopted_copies"], 3, "{again}");
    for (i, id) in c.ids.iter().enumerate() {
        let bytes = chain::restore_bytes_from(&api2, &token2, id, dir.path(), Some("offsite"));
        assert!(
            bytes == c.points[i],
            "point {i} from the bucket on a new hub differs"
        );
    }
    let rescan = ok(call(
        &api2,
        &token2,
        "POST",
        "/api/v1/repositories/offsite/rescan",
        None,
    ));
    assert_eq!(rescan["adopted_copies"], 0, "{rescan}");

    // Bring the chain back into the new hub's own repository: its backups again, each point
    // restoring from local images, qemu-img finding them clean, and a verify passing.
    let top_copy = copies::copies(&api2, &token2, &top)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &api2,
        &token2,
        "POST",
        &format!("/api/v1/copies/{top_copy}/bring-back"),
        Some(&json!({})),
    );
    assert_eq!(r.0, 202, "{}", r.1);
    let job = wait_job(&api2, &token2, r.1["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job}");
    for (i, id) in c.ids.iter().enumerate() {
        let b = ok(call(
            &api2,
            &token2,
            "GET",
            &format!("/api/v1/backups/{id}"),
            None,
        ));
        assert_eq!(b["status"], "completed", "{b}");
        let image = data2.join(format!("repository/vm1/{id}/disk0.qcow2"));
        qemu_img_check(&image);
        assert!(chain::restore_bytes(&api2, &token2, id, dir.path()) == c.points[i]);
    }
    let v = call(
        &api2,
        &token2,
        "POST",
        &format!("/api/v1/backups/{top}/verify"),
        None,
    );
    assert_eq!(v.0, 202, "{}", v.1);
    let job = wait_job(&api2, &token2, v.1["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job}");
    let b = ok(call(
        &api2,
        &token2,
        "GET",
        &format!("/api/v1/backups/{top}"),
        None,
    ));
    assert_eq!(b["verify_state"], "ok", "{b}");

    // Copies go top down: a layer another copy reads through is refused; then the repository.
    let copy_of = |id: &str| {
        let all = ok(call(
            &api,
            &token,
            "GET",
            &format!("/api/v1/backups/{id}/copies"),
            None,
        ));
        all[0]["id"].as_str().unwrap().to_owned()
    };
    let full_copy = copy_of(&c.ids[0]);
    let r = call(
        &api,
        &token,
        "DELETE",
        &format!("/api/v1/copies/{full_copy}"),
        None,
    );
    assert_eq!(r.0, 409, "{}", r.1);
    let listed = ok(call(
        &api,
        &token,
        "GET",
        "/api/v1/repositories/offsite/copies",
        None,
    ));
    let all: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    for id in all {
        let r = call(
            &api,
            &token,
            "DELETE",
            &format!("/api/v1/copies/{id}"),
            None,
        );
        assert_eq!(r.0, 200, "{}", r.1);
    }
    let left = moto.keys("offsite");
    assert!(left.iter().all(|k| !k.starts_with("hub1/")), "{left:?}");
    let r = call(&api, &token, "DELETE", "/api/v1/repositories/offsite", None);
    assert_eq!(r.0, 200, "{}", r.1);
}

/// The civil date (YYYY-MM-DD, UTC) `days` from now (Howard Hinnant's days-to-civil).
fn date_in(days: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A bucket with Object Lock: every object of a copy is locked (compliance) until its date, the
/// hub refuses to delete the copy before it and says so, and a later layer's longer lock reaches
/// the layers it reads through.
#[test]
fn object_lock_keeps_a_chain_as_long_as_its_newest_layer() {
    let Some(Env {
        moto,
        dir,
        data: _data,
        hub: _hub,
        api,
        token,
    }) = env("vault", true)
    else {
        return;
    };
    let c = chain::build(&api, &token, "vm2", dir.path(), 1, 4 << 20);
    let copy = |id: &str, days: u32| {
        let body = json!({"repository_id": "vault", "retain_days": days});
        copies::copied(&api, &token, id, &body);
    };
    let row = |id: &str| {
        ok(call(
            &api,
            &token,
            "GET",
            &format!("/api/v1/backups/{id}/copies"),
            None,
        ))[0]
            .clone()
    };
    let until = |row: &Value| row["retain_until"].as_str().unwrap()[..10].to_owned();

    copy(&c.ids[0], 3);
    let full = row(&c.ids[0]);
    assert_eq!(until(&full), date_in(3), "{full}");
    let image = format!("vm2/{}/disk0.qcow2", c.ids[0]);
    let retention = moto.retention("vault", &image);
    assert!(retention.contains("COMPLIANCE"), "{retention}");
    assert!(retention.contains(&date_in(3)), "{retention}");
    let path = format!("/api/v1/copies/{}", full["id"].as_str().unwrap());
    let r = call(&api, &token, "DELETE", &path, None);
    assert_eq!(r.0, 409, "{}", r.1);
    assert!(r.1.to_string().contains("locked"), "{}", r.1);

    // The incremental's copy is kept 5 days: the full it reads through is too.
    copy(&c.ids[1], 5);
    assert_eq!(until(&row(&c.ids[1])), date_in(5));
    assert_eq!(until(&row(&c.ids[0])), date_in(5));
    assert!(moto.retention("vault", &image).contains(&date_in(5)));
    let manifest = format!("vm2/{}/manifest.json", c.ids[1]);
    assert!(moto.retention("vault", &manifest).contains(&date_in(5)));
}

/// An object already at a layer's key (not the hub's) stays as it is, and the copy fails saying
/// so; the copy row is failed, not completed.
fn never_over_an_existing_object(moto: &Moto, api: &str, token: &str, dir: &Path, vm: &str) {
    let id = chain::backup(api, token, vm, "full", SIZE, |uri| {
        run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 9 0 65536", uri]));
    });
    let squatter = dir.join("squatter");
    std::fs::write(&squatter, b"not a qcow2 image").unwrap();
    let key = format!("hub1/{vm}/{id}/disk0.qcow2");
    moto.put("offsite", &key, &squatter);
    let started = call(
        api,
        token,
        "POST",
        &format!("/api/v1/backups/{id}/copy"),
        Some(&json!({"repository_id": "offsite"})),
    );
    assert_eq!(started.0, 201, "{}", started.1);
    let job = wait_job(api, token, started.1["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("not replaced"),
        "{job}"
    );
    assert_eq!(moto.get("offsite", &key), b"not a qcow2 image");
    let copies = ok(call(
        api,
        token,
        "GET",
        &format!("/api/v1/backups/{id}/copies"),
        None,
    ));
    assert_eq!(copies[0]["status"], "failed", "{copies}");
    assert!(
        !moto
            .keys("offsite")
            .contains(&format!("hub1/{vm}/{id}/manifest.json")),
        "a failed layer has no manifest"
    );
}

/// A hub killed (SIGKILL) while a copy uploads: at the next start the copy is failed, saying
/// why, never completed; copying again finishes it, and the bucket restores the disk exactly.
#[test]
fn a_copy_killed_mid_upload_is_failed_then_finished_by_copying_again() {
    let Some(Env {
        moto: _moto,
        dir,
        data,
        mut hub,
        api,
        token,
    }) = env("offsite", false)
    else {
        return;
    };
    let c = chain::build(&api, &token, "vm3", dir.path(), 0, 128 << 20);
    let id = c.ids[0].clone();
    let path = format!("/api/v1/backups/{id}/copy");
    let body = json!({"repository_id": "offsite"});
    let started = call(&api, &token, "POST", &path, Some(&body));
    assert_eq!(started.0, 201, "{}", started.1);
    let job = started.1["job_id"].as_str().unwrap().to_owned();
    let sending = copies::when_sending(&api, &token, &job);
    assert!(sending, "the copy ended before it could be interrupted");
    hub.child().kill().unwrap();
    hub.child().wait().unwrap();

    let (_hub, api, _nbd) = start_hub(&data);
    let copies = ok(call(
        &api,
        &token,
        "GET",
        &format!("/api/v1/backups/{id}/copies"),
        None,
    ));
    assert_eq!(copies[0]["status"], "failed", "{copies}");
    assert!(
        copies[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("stopped"),
        "{copies}"
    );
    let r = call(&api, &token, "POST", &path, Some(&body));
    assert_eq!(r.0, 201, "{}", r.1);
    let j = wait_job(&api, &token, r.1["job_id"].as_str().unwrap());
    assert_eq!(j["status"], "succeeded", "{j}");
    let copies = ok(call(
        &api,
        &token,
        "GET",
        &format!("/api/v1/backups/{id}/copies"),
        None,
    ));
    assert_eq!(copies[0]["status"], "completed", "{copies}");
    assert_eq!(copies[0]["verification_status"], "passed", "{copies}");
    let gone = call(
        &api,
        &token,
        "DELETE",
        &format!("/api/v1/backups/{id}"),
        None,
    );
    assert!(gone.0 == 200 || gone.0 == 204, "{}", gone.1);
    let bytes = chain::restore_bytes_from(&api, &token, &id, dir.path(), Some("offsite"));
    assert!(bytes == c.points[0], "the disk from the bucket differs");
}

/// A policy's `scheduled` copy rule copies the newest backup it made on its own (the pass runs
/// every 30 s at the defaults), and not again once the copy is there.
#[test]
fn a_scheduled_rule_copies_the_policys_newest_backup_on_its_own() {
    let Some(Env {
        moto: _moto,
        dir,
        data: _data,
        hub: _hub,
        api,
        token,
    }) = env("offsite", false)
    else {
        return;
    };
    let policy = json!({"name": "nightly", "primary_repository_id": "default",
        "copy_rules": [{"destination_repository_id": "offsite", "copy_mode": "scheduled",
            "verify_after_copy": true}]});
    let r = call(&api, &token, "POST", "/api/v1/policies", Some(&policy));
    assert!(r.0 == 200 || r.0 == 201, "{}", r.1);
    let policy_id = r.1["id"].as_str().unwrap().to_owned();
    let raw = dir.path().join("vm4.raw");
    let bytes = make_raw(&raw, 4 << 20, 11);
    let body = json!({"vm_name": "vm4", "backup_type": "full", "policy_id": policy_id,
        "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 4 << 20}]});
    let id = chain::backup_of(&api, &token, &body, |uri| {
        run_ok(Command::new("nbdcopy").arg(&raw).arg(uri));
    });
    let mut copy = Value::Null;
    for _ in 0..900 {
        let all = ok(call(
            &api,
            &token,
            "GET",
            &format!("/api/v1/backups/{id}/copies"),
            None,
        ));
        copy = all.get(0).cloned().unwrap_or(Value::Null);
        if copy["status"] == "completed" || copy["status"] == "failed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(copy["status"], "completed", "{copy}");
    assert_eq!(copy["verification_status"], "passed", "{copy}");
    assert!(copy["copy_rule_id"].is_string(), "{copy}");
    let from_bucket = chain::restore_bytes_from(&api, &token, &id, dir.path(), Some("offsite"));
    assert!(
        from_bucket == bytes,
        "the scheduled copy restores other bytes"
    );
    // The next passes leave it alone: one copy job in all.
    std::thread::sleep(std::time::Duration::from_secs(35));
    let jobs = ok(call(&api, &token, "GET", "/api/v1/jobs?type=copy", None));
    assert_eq!(jobs["total"], 1, "{jobs}");
}

/// A store that answers every third request `503 SlowDown` (a proxy of the test's own in front
/// of moto): the copy rides it out with its retries and completes, verified, and the disk restores
/// exactly through the same store.
#[test]
fn a_store_saying_slow_down_is_ridden_out() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("busy", false);
    let proxy = common::s3::SlowDown::start(&moto.endpoint, 3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);
    let mut repo = moto.repository("busy", "busy", "");
    repo["config"]["endpoint"] = json!(proxy.endpoint);
    ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&repo),
    ));
    let c = chain::build(&api, &token, "vm5", dir.path(), 1, 40 << 20);
    let top = c.ids[1].clone();
    let body = json!({"repository_id": "busy"});
    copies::copied(&api, &token, &top, &body);
    let copies = ok(call(
        &api,
        &token,
        "GET",
        &format!("/api/v1/backups/{top}/copies"),
        None,
    ));
    assert_eq!(copies[0]["verification_status"], "passed", "{copies}");
    let bytes = chain::restore_bytes_from(&api, &token, &top, dir.path(), Some("busy"));
    assert!(
        bytes == c.points[1],
        "the disk through a busy store differs"
    );
    let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(refused >= 5, "only {refused} requests were refused");
}
