//! Backups the operator can trust through mistakes and faults: a lost or older catalog, clients
//! that keep writing after `complete`, deletes beside cancelled children, a full disk, hostile
//! names in logs, weak tokens, SIGTERM mid-backup, and many cycles without leaks.

mod common;

use std::path::Path;
use std::process::Command;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::*;
use serde_json::{Value, json};

/// The message of an API error, whatever the error body's shape.
/// The error's message and its details (`{"error": "...", "details": "..."}`).
fn error_text(body: &Value) -> String {
    format!(
        "{} {}",
        body["error"].as_str().unwrap_or_default(),
        body["details"].as_str().unwrap_or_default()
    )
}

/// `hub::start` on this data dir, expected to refuse; returns its message.
async fn start_refused(data: &Path) -> String {
    let nbd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    match ::hub::start(test_config(data.to_owned()), nbd, token).await {
        Ok(_) => panic!("the hub started on a catalog behind its repository"),
        Err(err) => err.to_string(),
    }
}

/// `sendense-hub catalog rebuild --data-dir DATA`: exit code and stdout.
fn rebuild(data: &Path) -> (i32, String) {
    rebuild_with(data, &[])
}

fn rebuild_with(data: &Path, args: &[String]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["catalog", "rebuild", "--data-dir"])
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("rebuild: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn remove_catalog(data: &Path) {
    for name in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(name));
    }
}

/// The catalog with its WAL (the hub may not have checkpointed it).
fn copy_catalog(from: &Path, to: &Path) {
    for name in ["catalog.sqlite", "catalog.sqlite-wal"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

fn image_of(backup: &Value) -> std::path::PathBuf {
    backup["disk_results"][0]["qcow2_path"]
        .as_str()
        .unwrap()
        .into()
}

/// A hub in a temp dir and a 1 MiB source disk made from `seed`.
async fn hub_and_source(
    seed: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    TestHub,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src.raw");
    make_raw(&src, MIB as usize, seed);
    let h = TestHub::start(test_config(data.clone())).await;
    (dir, data, src, h)
}

/// A full backup of `vm` and an incremental on top, both completed; returns both bodies.
async fn full_and_incremental(h: &TestHub, dir: &Path, vm: &str) -> (Value, Value) {
    let src = dir.join(format!("{vm}.raw"));
    make_raw(&src, (2 * MIB) as usize, 7);
    let full = completed_full(h, vm, &src, 2 * MIB).await;
    let (inc, _) = completed_incremental(h, &src, vm).await;
    (full, inc)
}

/// An incremental of `vm` written from `src` and completed; returns its body and id.
async fn completed_incremental(h: &TestHub, src: &Path, vm: &str) -> (Value, String) {
    let (id, _) = incremental(h, vm).await;
    let (_, b) = h.get(&format!("/api/v1/backups/{id}")).await;
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    nbdcopy(vec![src.display().to_string(), uri]).await;
    let (s, c) = h.complete(&id, r#"{"change_id":"c1"}"#).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    (h.wait_status(&id, "completed").await, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_catalog_refuses_to_start_and_rebuild_brings_every_backup_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let (full, inc) = full_and_incremental(&h, dir.path(), "app").await;
    // And one in a repository outside the data dir.
    let elsewhere = dir.path().join("elsewhere");
    let (s, r) = h
        .post(
            "/api/v1/repositories",
            &json!({"id": "nas", "path": elsewhere.display().to_string()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let src = dir.path().join("app.raw");
    let (s, far) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": "far", "backup_type": "full", "repository_id": "nas",
                "disks": [disk(0, 2000, 2 * MIB)]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{far}");
    let far_id = far["backup_id"].as_str().unwrap().to_owned();
    nbdcopy(vec![
        src.display().to_string(),
        far["disk_results"][0]["nbd_uri"]
            .as_str()
            .unwrap()
            .to_owned(),
    ])
    .await;
    let (s, c) = h.complete(&far_id, "{}").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    h.wait_status(&far_id, "completed").await;
    h.stop().await;

    // The natural reaction to "file is not a database": an empty catalog file.
    remove_catalog(&data);
    std::fs::write(data.join("catalog.sqlite"), b"").unwrap();
    let msg = start_refused(&data).await;
    assert!(msg.contains("catalog rebuild"), "{msg}");
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    assert!(msg.contains(full["backup_id"].as_str().unwrap()), "{msg}");
    for b in [&full, &inc] {
        assert!(image_of(b).exists(), "an image went at a refused start");
    }
    // Missing altogether: the same.
    remove_catalog(&data);
    assert!(start_refused(&data).await.contains("catalog rebuild"));

    // A directory from before manifests (or written by hand): reported, never guessed at, and
    // moved into the repository's quarantine so that the next start proceeds.
    let stray = data
        .join("repository")
        .join("app")
        .join("5f1c9e3a-8b7d-4e2f-a6c4-2d3b9e8f1a00");
    std::fs::create_dir_all(&stray).unwrap();
    qemu_img_create(&stray.join("disk0.qcow2"), MIB);
    let nas = vec![
        "--repository".to_owned(),
        format!("nas={}", elsewhere.display()),
    ];
    let (code, out) = rebuild_with(&data, &nas);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("3 backup(s)"), "{out}");
    assert!(
        out.contains("could not rebuild 1") && out.contains(&stray.display().to_string()),
        "{out}"
    );
    let quarantined = data
        .join("repository/.quarantine/app")
        .join(stray.file_name().unwrap());
    assert!(out.contains(&quarantined.display().to_string()), "{out}");
    assert!(quarantined.join("disk0.qcow2").is_file() && !stray.exists());
    let h = TestHub::start(test_config(data.clone())).await;
    for (b, change_id) in [(&full, "c0"), (&inc, "c1")] {
        let id = b["backup_id"].as_str().unwrap();
        let (s, back) = h.get(&format!("/api/v1/backups/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{back}");
        assert_eq!(back["status"], "completed");
        assert_eq!(back["vm_name"], "app");
        assert_eq!(back["parent_backup_id"], b["parent_backup_id"]);
        assert_eq!(back["disk_results"][0]["change_id"], change_id);
        assert_eq!(
            back["disk_results"][0]["bytes_written"],
            b["disk_results"][0]["bytes_written"]
        );
    }
    let (_, back) = h.get(&format!("/api/v1/backups/{far_id}")).await;
    assert_eq!(
        (back["status"].clone(), back["repository_id"].clone()),
        (json!("completed"), json!("nas")),
        "{back}"
    );
    // The next incremental builds on the rebuilt chain.
    let next =
        json!({"vm_name": "app", "backup_type": "incremental", "disks": [disk(0, 2000, 2 * MIB)]});
    let (s, next) = h.post("/api/v1/backups", &next).await;
    assert_eq!(s, StatusCode::OK, "{next}");
    assert_eq!(next["parent_backup_id"], inc["backup_id"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn older_catalog_refuses_to_start() {
    let (dir, data, src, h) = hub_and_source(3).await;
    let first = completed_full(&h, "a", &src, MIB).await;
    h.stop().await;
    let old = dir.path().join("old-catalog");
    std::fs::create_dir(&old).unwrap();
    copy_catalog(&data, &old);

    let h = TestHub::start(test_config(data.clone())).await;
    let second = completed_full(&h, "b", &src, MIB).await;
    h.stop().await;
    let second_id = second["backup_id"].as_str().unwrap();

    // A catalog whose row is behind the manifest: `running` where the backup completed.
    {
        let conn = rusqlite::Connection::open(data.join("catalog.sqlite")).unwrap();
        conn.execute(
            "UPDATE backups SET status = 'running' WHERE id = ?1",
            [second_id],
        )
        .unwrap();
    }
    let msg = start_refused(&data).await;
    assert!(msg.contains(second_id) && msg.contains("running"), "{msg}");
    assert!(msg.contains("catalog rebuild"), "{msg}");

    // The copy taken before the second backup existed.
    remove_catalog(&data);
    copy_catalog(&old, &data);
    let msg = start_refused(&data).await;
    assert!(msg.contains(second_id), "{msg}");
    assert!(!msg.contains(first["backup_id"].as_str().unwrap()), "{msg}");
    assert!(image_of(&second).exists());

    let (code, out) = rebuild(&data);
    assert_eq!(code, 0, "{out}");
    let h = TestHub::start(test_config(data.clone())).await;
    let (_, back) = h.get(&format!("/api/v1/backups/{second_id}")).await;
    assert_eq!(back["status"], "completed", "{back}");
    qemu_img_compare(&src, &image_of(&back));
    h.stop().await;
}

/// Writes 1 MiB every 0.3 s at increasing offsets, prints each write, stops at the first refusal.
const KEEPS_WRITING: &str = r#"
import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(int(sys.argv[2])):
    try:
        h.pwrite(b"\x11" * 1048576, i * 1048576)
    except nbd.Error as e:
        print("refused", i, e, flush=True)
        sys.exit(0)
    print("wrote", i, flush=True)
    time.sleep(0.3)
print("all written", flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_while_the_client_writes_fails_the_backup() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &full("busy", vec![disk(0, 2000, 64 * MIB)]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    let mut py = ChildGuard(Some(
        Command::new("/usr/bin/python3")
            .args(["-c", KEEPS_WRITING, &uri, "64"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stdout = py.child().stdout.take().unwrap();
    let lines = blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        // A few writes in, the client (wrongly) says it is done, and goes on writing.
        for _ in 0..3 {
            lines.next().unwrap().unwrap();
        }
        lines
    })
    .await;
    let (s, c) = h.complete(&id, r#"{"change_id":"early"}"#).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let failed = h.wait_status(&id, "failed").await;
    assert_eq!(
        failed["error"], "client kept writing after complete",
        "{failed}"
    );
    let rest: Vec<String> = blocking(move || lines.map_while(Result::ok).collect()).await;
    assert!(
        rest.iter().any(|l| l.starts_with("refused")),
        "the write after complete was accepted: {rest:?}"
    );
    // Never offered as a base: no completed backup of the VM exists.
    let (s, list) = h.get("/api/v1/backups?vm_name=busy&status=completed").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["backups"], json!([]), "{list}");
    h.stop().await;
}

/// Holds one connection open and acts on each line it reads: `write` answers `accepted` or
/// `refused <errno>`, anything else disconnects (`closed`). Says `wrote` after a first write.
const HOLDS_ON: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x22" * 65536, 0)
print("wrote", flush=True)
for line in sys.stdin:
    if line.strip() == "write":
        try:
            h.pwrite(b"\x33" * 65536, 65536)
            print("accepted", flush=True)
        except nbd.Error as e:
            print("refused", e.errno, flush=True)
    else:
        h.shutdown()
        print("closed", flush=True)
        break
"#;

/// A libnbd client in python driven line by line: the test decides when it writes and closes.
struct Held {
    _child: ChildGuard,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Held {
    /// Connected, with one write done.
    fn connect(uri: &str) -> Held {
        use std::io::BufRead;
        let mut child = ChildGuard(Some(
            Command::new("/usr/bin/python3")
                .args(["-c", HOLDS_ON, uri])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        let stdin = child.child().stdin.take().unwrap();
        let stdout = child.child().stdout.take().unwrap();
        let mut held = Held {
            _child: child,
            stdin,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        assert_eq!(held.answer(), "wrote");
        held
    }

    fn answer(&mut self) -> String {
        // The runtime has other workers; the hub goes on serving while this one waits.
        tokio::task::block_in_place(|| self.lines.next().unwrap().unwrap())
    }

    fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{command}").unwrap();
        self.answer()
    }
}

/// A one-disk full of `vm` (ready): its id and the disk's NBD URI.
async fn one_disk(h: &TestHub, vm: &str) -> (String, String) {
    let (s, b) = h
        .post("/api/v1/backups", &full(vm, vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    (b["backup_id"].as_str().unwrap().to_owned(), uri)
}

/// `complete` with the connection still open, quiet for longer than the drain waits for an idle
/// connection, then one more WRITE: refused, and the backup fails. Kept open then closed without
/// writing, it completes. The hub's default drain times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_after_complete_on_a_connection_kept_open_fails_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = ::hub::Config {
        drain_grace: ::hub::Config::default().drain_grace,
        ..test_config(dir.path().join("data"))
    };
    let h = TestHub::start(config).await;
    let quiet = std::time::Duration::from_secs(3);

    let (id, uri) = one_disk(&h, "late").await;
    let mut client = Held::connect(&uri);
    let (s, c) = h.complete(&id, "{}").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    tokio::time::sleep(quiet).await;
    // EPERM: the export still stands, sealed.
    assert_eq!(client.ask("write"), "refused EPERM");
    let failed = h.wait_status(&id, "failed").await;
    assert_eq!(
        failed["error"], "client kept writing after complete",
        "{failed}"
    );
    client.ask("close");

    let (id, uri) = one_disk(&h, "kept").await;
    let mut client = Held::connect(&uri);
    let (s, c) = h.complete(&id, "{}").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    tokio::time::sleep(quiet).await;
    assert_eq!(client.ask("close"), "closed");
    h.wait_status(&id, "completed").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_nobody_connected_to_cannot_be_completed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d1.raw");
    make_raw(&src, MIB as usize, 5);
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &full("two", vec![disk(0, 2000, MIB), disk(1, 2001, MIB)]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let (s, e) = h.complete(&id, "{}").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(error_text(&e).contains("no client ever connected"), "{e}");
    // Writing one disk is not enough for the other, nor for both at once.
    let uri1 = b["disk_results"][1]["nbd_uri"].as_str().unwrap().to_owned();
    nbdcopy(vec![src.display().to_string(), uri1]).await;
    let (s, e) = h.complete(&id, r#"{"disk_id":0}"#).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = h.complete(&id, "{}").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (_, now) = h.get(&format!("/api/v1/backups/{id}")).await;
    for d in now["disk_results"].as_array().unwrap() {
        assert_ne!(d["status"], "completed", "{now}");
    }
    let (s, ok) = h.complete(&id, r#"{"disk_id":1}"#).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    h.stop().await;
}

/// An incremental of `vm` (ready, nothing written); returns its id and directory.
async fn incremental(h: &TestHub, vm: &str) -> (String, std::path::PathBuf) {
    let req =
        json!({"vm_name": vm, "backup_type": "incremental", "disks": [disk(0, 2000, 2 * MIB)]});
    let (s, b) = h.post("/api/v1/backups", &req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let dir = image_of(&b).parent().unwrap().to_owned();
    (b["backup_id"].as_str().unwrap().to_owned(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_parent_takes_its_cancelled_and_failed_children_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("p.raw");
    make_raw(&src, (2 * MIB) as usize, 9);
    let h = TestHub::start(test_config(data.clone())).await;
    let parent = completed_full(&h, "db", &src, 2 * MIB).await;
    let parent_id = parent["backup_id"].as_str().unwrap().to_owned();
    let parent_dir = image_of(&parent).parent().unwrap().to_owned();
    let (cancelled, _) = incremental(&h, "db").await;
    let (s, c) = h
        .call(
            Method::POST,
            &format!("/api/v1/backups/{cancelled}/cancel"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let (failed, failed_dir) = incremental(&h, "db").await;
    h.stop().await;
    let manifest = parent_dir.join("manifest.json");
    let written = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    // The restart fails the unfinished child.
    let h = TestHub::start(test_config(data.clone())).await;
    h.wait_status(&failed, "failed").await;
    let m: Value =
        serde_json::from_slice(&std::fs::read(failed_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "failed", "{m}");
    // A manifest already in step with the catalog is not rewritten at start.
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        written
    );

    // A completed child keeps its parent; the refusal changes nothing.
    let (_, done_child) = completed_incremental(&h, &src, "db").await;
    let (s, e) = h.delete(&parent_id).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(error_text(&e).contains(&done_child), "{e}");
    assert!(parent_dir.exists() && failed_dir.exists());
    let (s, e) = h.delete(&done_child).await;
    assert_eq!(s, StatusCode::OK, "{e}");

    let (s, e) = h.delete(&parent_id).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    for id in [&parent_id, &cancelled, &failed] {
        let (s, b) = h.get(&format!("/api/v1/backups/{id}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    }
    assert!(!parent_dir.exists() && !failed_dir.exists());
    let (s, list) = h.get("/api/v1/backups?vm_name=db").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["backups"], json!([]), "{list}");
    // The VM starts over with a full backup.
    completed_full(&h, "db", &src, 2 * MIB).await;

    // A crash after the catalog committed a delete, before the files went: the next start
    // finishes it (and does not take the directory for one the catalog lost).
    let victim = completed_full(&h, "other", &src, 2 * MIB).await;
    let victim_id = victim["backup_id"].as_str().unwrap().to_owned();
    let victim_dir = image_of(&victim).parent().unwrap().to_owned();
    h.stop().await;
    {
        let mut conn = rusqlite::Connection::open(data.join("catalog.sqlite")).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO deletions (backup_id, dir, requested_at) VALUES (?1, ?2, '2026-01-01T00:00:00Z')",
            [&victim_id, &victim_dir.display().to_string()],
        )
        .unwrap();
        tx.execute("DELETE FROM backups WHERE id = ?1", [&victim_id])
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(victim_dir.exists());
    let h = TestHub::start(test_config(data.clone())).await;
    assert!(
        !victim_dir.exists(),
        "the interrupted delete was not finished"
    );
    h.stop().await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (and a message) when the test cannot mount: not root, or not allowed to.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        if !out.status.success() {
            // Root without CAP_SYS_ADMIN (some containers).
            eprintln!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write a file until the filesystem is full; returns its path.
fn fill_up(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!("filler-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0x55u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
    path
}

fn assert_no_space(resp: &(StatusCode, Value), data: &Path) {
    assert_eq!(resp.0, StatusCode::INSUFFICIENT_STORAGE, "{}", resp.1);
    let text = error_text(&resp.1);
    assert!(text.contains("no space left on device"), "{text}");
    assert!(text.contains(&data.display().to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_data_dir_answers_507_frees_space_on_cancel_and_delete_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), "32m") else {
        return;
    };
    let data = fs.0.join("data");
    let small = dir.path().join("small.raw");
    make_raw(&small, MIB as usize, 11);
    let big = dir.path().join("big.raw");
    // Two thirds data: 32 MiB, more than the filesystem has left.
    make_raw(&big, (48 * MIB) as usize, 12);

    let h = TestHub::start(test_config(data.clone())).await;
    let kept = completed_full(&h, "kept", &small, MIB).await;
    let kept_id = kept["backup_id"].as_str().unwrap().to_owned();
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &full("big", vec![disk(0, 2000, 64 * MIB)]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let big_id = b["backup_id"].as_str().unwrap().to_owned();
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    let src = big.display().to_string();
    let copy = blocking(move || Command::new("nbdcopy").args([&src, &uri]).output().unwrap()).await;
    assert!(
        !copy.status.success(),
        "32 MiB of data fit in a 32 MiB filesystem"
    );
    let filler = fill_up(&fs.0);

    // A new backup cannot even get its manifest written: 507 naming the path, not a 500.
    let (s, e) = h
        .post("/api/v1/backups", &full("new", vec![disk(0, 2000, MIB)]))
        .await;
    assert_no_space(&(s, e), &data);
    // Whatever else is asked answers or says 507, never a bare 500.
    let (s, t) = h
        .call(
            Method::POST,
            &format!("/api/v1/telemetry/backup/{big_id}"),
            Some(r#"{"progress": 50}"#),
            Caller::Sna,
        )
        .await;
    assert!(
        s == StatusCode::OK || s == StatusCode::INSUFFICIENT_STORAGE,
        "{s} {t}"
    );
    let credential = serde_json::json!({"credential_name": "vc", "vcenter_host": "vc.example",
        "username": "u", "password": "p", "datacenter": "dc"});
    let (s, c) = h.post("/api/v1/vmware-credentials", &credential).await;
    assert!(
        s == StatusCode::OK || s == StatusCode::INSUFFICIENT_STORAGE,
        "{s} {c}"
    );
    // Cancel works and gives the space back.
    let (s, c) = h
        .call(
            Method::POST,
            &format!("/api/v1/backups/{big_id}/cancel"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert!(!image_of(&b).exists());
    let (s, b2) = h
        .post("/api/v1/backups", &full("new", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{b2}");
    h.stop().await;

    // Full to the last byte while stopped: the hub still starts, serves reads and deletes.
    let _filler2 = fill_up(&fs.0);
    let h = TestHub::start(test_config(data.clone())).await;
    let (s, got) = h.get(&format!("/api/v1/backups/{kept_id}")).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["status"], "completed");
    let (s, e) = h.delete(&kept_id).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert!(!image_of(&kept).exists());
    h.stop().await;
    drop(filler);
}

/// `serve` on ephemeral ports; the data dir follows.
const SERVE_ON_ANY_PORT: [&str; 6] = [
    "serve",
    "--api-listen",
    "127.0.0.1:0",
    "--nbd-listen",
    "127.0.0.1:0",
    "--data-dir",
];

/// `sendense-hub serve` with text logs under umask 000; returns it, the API address and its
/// stderr lines as they come.
fn start_text_hub(
    data: &Path,
) -> (
    ChildGuard,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    let mut child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\"", BIN])
        .args(SERVE_ON_ANY_PORT)
        .arg(data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(Some(child));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let keep = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("hub: {line}");
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv().expect("hub exited before listening");
        if let Some(at) = line.split("api=").nth(1) {
            let api = at.split_whitespace().next().unwrap().to_owned();
            return (guard, api, lines);
        }
    }
}

#[test]
fn hostile_names_cannot_forge_log_lines_and_files_stay_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, lines) = start_text_hub(&data);
    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let forged = "2026-01-01T00:00:00.000000Z  INFO hub::backups: backup deleted backup_id=all";
    let vm = format!("web\n{forged}\r\u{1b}[2K\u{202e}exe.gpj\u{0}");
    let req = json!({"vm_name": vm, "backup_type": "full", "disks": [disk(0, 2000, MIB)]});
    let b = ok(http(
        "POST",
        &api,
        "/api/v1/backups",
        Some(&token),
        Some(&req),
    ));
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let image = image_of(&b);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for private in [
        data.join("catalog.sqlite"),
        data.join("api-token"),
        image.clone(),
        image.parent().unwrap().join("manifest.json"),
    ] {
        assert_eq!(mode(&private), 0o600, "{}", private.display());
    }
    for dir in [
        data.join("repository"),
        image.parent().unwrap().to_owned(),
        image.parent().unwrap().parent().unwrap().to_owned(),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // No rebuild under a running hub.
    let (code, out) = rebuild(&data);
    assert_ne!(code, 0, "{out}");
    ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{id}/cancel"),
        Some(&token),
        None,
    ));
    assert!(hub.terminate_and_wait().success());
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("web\\n2026-01-01")),
        "the VM name was not logged escaped"
    );
    for line in lines.iter() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "forged line: {line:?}"
        );
        assert!(
            !line.contains(['\r', '\u{1b}', '\u{202e}', '\u{0}']),
            "raw control character in {line:?}"
        );
    }
}

#[test]
fn weak_tokens_are_refused_with_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let serve = |env_token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(SERVE_ON_ANY_PORT)
            .arg(&data)
            .env_remove("SENDENSE_HUB_API_TOKEN");
        if let Some(t) = env_token {
            cmd.env("SENDENSE_HUB_API_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(Some("short-token"));
    assert!(
        err.contains("at least 32") && err.contains("openssl rand -hex 32"),
        "{err}"
    );
    let file = data.join("api-token");
    std::fs::write(&file, format!("{}\n", "t".repeat(64))).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = serve(None);
    assert!(
        err.contains(&format!("chmod 600 {}", file.display())),
        "{err}"
    );
    // Said once: no "X: X" from a cause printed again by the error chain.
    let first = err.lines().find(|l| l.contains("chmod")).unwrap();
    assert_eq!(
        first.matches("readable by group or others").count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("readable by group or others").count(),
        1,
        "{err}"
    );
    std::fs::write(&file, "x\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = serve(None);
    assert!(err.contains("at least 32"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_catalog_row_is_skipped_not_fatal() {
    let (_dir, data, src, h) = hub_and_source(2).await;
    let good = completed_full(&h, "good", &src, MIB).await;
    let (s, bad) = h
        .post("/api/v1/backups", &full("bad", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{bad}");
    let bad_id = bad["backup_id"].as_str().unwrap().to_owned();
    h.stop().await;
    {
        let conn = rusqlite::Connection::open(data.join("catalog.sqlite")).unwrap();
        conn.execute(
            "UPDATE backups SET created_at = 'yesterday', status = 'running' WHERE id = ?1",
            [&bad_id],
        )
        .unwrap();
    }
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(backup_ids(&h).await, [good["backup_id"].as_str().unwrap()]);
    let (s, one) = h.get(&format!("/api/v1/backups/{bad_id}")).await;
    assert!(s.is_server_error(), "{s} {one}");
    assert!(error_text(&one).contains(&bad_id), "{one}");
    h.stop().await;
}
