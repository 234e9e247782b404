//! Repository boundaries: a copied data dir never works on the original's repositories, and a
//! new repository overlaps neither the data dir nor another repository.

mod common;

use std::path::Path;
use std::process::Command;

use axum::http::StatusCode;
use common::hub::*;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// `hub::start` on this data dir, expected to refuse; returns its message.
async fn start_refused(data: &Path) -> String {
    let nbd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    match ::hub::start(test_config(data.to_owned()), nbd, token).await {
        Ok(_) => panic!("the hub started on {}", data.display()),
        Err(err) => err.to_string(),
    }
}

/// A data dir copied with `cp -a` lists the original's repositories by their absolute paths: the
/// copy refuses to start (naming both paths) rather than delete the original's images, and after
/// `catalog rebuild` it still refuses the repository outside that the original owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copied_data_dir_never_touches_the_originals_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let src = dir.path().join("app.raw");
    make_raw(&src, (2 * MIB) as usize, 3);
    let backup = completed_full(&h, "app", &src, 2 * MIB).await;
    let id = backup["backup_id"].as_str().unwrap().to_owned();
    let image = std::path::PathBuf::from(backup["disk_results"][0]["qcow2_path"].as_str().unwrap());
    let nas = dir.path().join("nas");
    let (s, r) = h
        .post("/api/v1/repositories", &json!({"id": "nas", "path": nas}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    h.stop().await;
    // As a stopped process leaves it: the catalog's last connection closes (SQLite then removes
    // its -wal and -shm) when the tasks holding the hub have ended, which may be just after
    // `stop`; a copy made meanwhile finds them vanishing.
    for _ in 0..200 {
        if !data.join("catalog.sqlite-wal").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let copy = dir.path().join("copy");
    run_ok(Command::new("cp").arg("-a").arg(&data).arg(&copy));
    let why = start_refused(&copy).await;
    let ours = copy.join("repository").canonicalize().unwrap();
    let theirs = data.join("repository").canonicalize().unwrap();
    assert!(
        why.contains(&ours.display().to_string()) && why.contains(&theirs.display().to_string()),
        "{why}"
    );
    assert!(why.contains("catalog rebuild"), "{why}");

    // The way out the message names: the copy's catalog rebuilt from its own repository. The
    // repository outside is still the original's, and the copy says so.
    ::hub::repo::rebuild::rebuild_catalog(&copy, &[]).unwrap();
    let why = start_refused(&copy).await;
    assert!(
        why.contains(&nas.canonicalize().unwrap().display().to_string()),
        "{why}"
    );
    assert!(
        why.contains(&data.canonicalize().unwrap().display().to_string()),
        "{why}"
    );

    // The original is whole: its backup is listed, its image checks clean.
    qemu_img_check(&image);
    let h = TestHub::start(test_config(data.clone())).await;
    let (s, b) = h.get(&format!("/api/v1/backups/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "completed", "{b}");
    h.stop().await;
}

/// The default repository, a path inside it, the data dir, a path inside the data dir, one that
/// contains it, and a symlink to the default repository are each refused, with nothing created;
/// a disjoint path works, and then a path inside or around it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_repositories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let default = data.join("repository");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&default, &link).unwrap();
    let refused = [
        default.clone(),
        default.join("nested"),
        data.clone(),
        data.join("other"),
        dir.path().to_owned(),
        link.clone(),
        link.join("via-link"),
    ];
    for (i, path) in refused.iter().enumerate() {
        let (s, body) = h
            .post(
                "/api/v1/repositories",
                &json!({"id": format!("r{i}"), "path": path}),
            )
            .await;
        assert!(s.is_client_error(), "{}: {s} {body}", path.display());
        let text = body.to_string();
        assert!(
            text.contains("repository") || text.contains("data dir"),
            "{}: {text}",
            path.display()
        );
    }
    for created in [
        default.join("nested"),
        data.join("other"),
        link.join("via-link"),
    ] {
        assert!(!created.exists(), "{} was created", created.display());
    }
    let (_, repos) = h.get("/api/v1/repositories").await;
    assert_eq!(
        repos["repositories"].as_array().unwrap().len(),
        1,
        "{repos}"
    );

    let disjoint = dir.path().join("disjoint");
    let (s, r) = h
        .post(
            "/api/v1/repositories",
            &json!({"id": "ok", "path": disjoint}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    for path in [disjoint.join("inner"), disjoint.clone()] {
        let (s, body) = h
            .post(
                "/api/v1/repositories",
                &json!({"id": "again", "path": path}),
            )
            .await;
        assert!(s.is_client_error(), "{}: {s} {body}", path.display());
    }
    assert!(!disjoint.join("inner").exists());
    h.stop().await;
}
