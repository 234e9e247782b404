//! File-level restore from a copy in an S3 bucket (moto_server on loopback), against the
//! `sendense-hub` binary at its defaults: a GPT disk with an ext4 filesystem (made by mke2fs -d,
//! no mount) backed up, copied, the local backup deleted; the copy's disk is mounted with
//! `repository_id`, its tree listed as the source's and a file downloaded byte for byte, read
//! in place from the bucket.

mod common;

use std::process::Command;

use common::chain;
use common::copies;
use common::restore::*;
use common::s3::Moto;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

#[test]
fn a_file_comes_back_from_a_copy_in_a_bucket() {
    if !have("mke2fs") || !have("sfdisk") {
        eprintln!("skipped: mke2fs or sfdisk missing");
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("offsite", false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api) = Api::start(&data);
    let repo = moto.repository("offsite", "offsite", "");
    ok(http(
        "POST",
        &api.api,
        "/api/v1/repositories",
        Some(&api.token),
        Some(&repo),
    ));

    let src = dir.path().join("src");
    let hello = b"hello from the bucket\n".repeat(5000);
    guest_tree(&src, &hello);
    let ext4 = dir.path().join("root.ext4");
    run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&ext4)
            .arg("200M"),
    );
    let disk = dir.path().join("disk.raw");
    let script = "label: gpt\nstart=2048, size=409600, type=linux\n";
    partitioned_disk(&disk, 202, script, &[(&ext4, MIB)]);
    let size = std::fs::metadata(&disk).unwrap().len() as usize;
    let id = chain::backup(&api.api, &api.token, "vm6", "full", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk).arg(uri));
    });
    copies::copied(
        &api.api,
        &api.token,
        &id,
        &json!({"repository_id": "offsite"}),
    );
    let gone = http(
        "DELETE",
        &api.api,
        &format!("/api/v1/backups/{id}"),
        Some(&api.token),
        None,
    );
    assert!(gone.0 == 200 || gone.0 == 204, "{}", gone.1);

    let body = json!({"backup_id": id, "disk_index": 0, "repository_id": "offsite"});
    let m = ok(http(
        "POST",
        &api.api,
        "/api/v1/restore/mount",
        Some(&api.token),
        Some(&body),
    ));
    let mid = m["mount_id"].as_str().unwrap();
    let tree = ok(api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/partition-1&recursive=true"
    )));
    assert_eq!(
        listing_of(&tree["files"], "/partition-1"),
        source_listing(&src)
    );
    let out = dir.path().join("hello.txt");
    let (status, _) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-1/hello.txt"),
        &out,
        &[],
    );
    assert_eq!(status, 200);
    assert!(
        std::fs::read(&out).unwrap() == hello,
        "the file from the bucket differs"
    );
}
