//! vCenter credentials: Sendense's routes, the password write-only and sealed at rest, a wrong key
//! reported by name without stopping anything else, and the key rotation.

mod common;

use std::process::Command;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::*;
use serde_json::{Value, json};

const PASSWORD: &str = "vc-Secret-9f3a!";

fn assert_no_password(body: &Value) {
    assert!(!body.to_string().contains(PASSWORD), "password in {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_write_only_sealed_and_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let base = "/api/v1/vmware-credentials";

    let new = json!({"credential_name": "vc-prod", "vcenter_host": "vc.example", "username":
        "administrator@vsphere.local", "password": PASSWORD, "datacenter": "DC1",
        "is_active": true, "is_default": true});
    let (s, created) = h.post(base, &new).await;
    assert_eq!(s, StatusCode::OK, "{created}");
    assert_no_password(&created);
    let c = &created["credential"];
    assert!(c["id"].is_i64(), "{created}");
    assert_eq!(
        (&c["credential_name"], &c["vcenter_host"], &c["is_default"]),
        (&json!("vc-prod"), &json!("vc.example"), &json!(true))
    );
    let id = c["id"].as_i64().unwrap();
    let (s, second) = h
        .post(
            base,
            &json!({"credential_name": "vc-lab", "vcenter_host": "lab", "username": "u",
                "password": "other", "is_default": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    let id2 = second["credential"]["id"].as_i64().unwrap();

    // One default at a time; every read leaves the password out.
    let (_, list) = h.get(base).await;
    assert_no_password(&list);
    assert_eq!(list["count"], 2);
    let defaults: Vec<i64> = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["is_default"] == true)
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(defaults, vec![id2]);
    let (s, b) = h
        .call(
            Method::PUT,
            &format!("{base}/{id}/set-default"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, d) = h.get(&format!("{base}/default")).await;
    assert_eq!(d["credentials"]["id"], id);
    assert_no_password(&d);
    let (_, one) = h.get(&format!("{base}/{id}")).await;
    assert_eq!(one["username"], "administrator@vsphere.local");
    assert_no_password(&one);

    // Update without a password keeps it; the login opens to the password given.
    let (s, upd) = h
        .call(
            Method::PUT,
            &format!("{base}/{id}"),
            Some(r#"{"datacenter": "DC2"}"#),
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{upd}");
    assert_eq!(upd["credential"]["datacenter"], "DC2");
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    assert!(!format!("{:?}", h.hub.vcenter_login(id).unwrap()).contains(PASSWORD));

    // Refusals: status codes only (the error body's shape belongs to the API's error module).
    for (method, uri, body, want) in [
        (
            Method::GET,
            format!("{base}/abc"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("{base}/999"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            format!("{base}/999"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            format!("{base}/999/set-default"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            base.to_owned(),
            Some(r#"{"credential_name": "x", "vcenter_host": "h", "username": "u"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            base.to_owned(),
            Some(
                r#"{"credential_name": "vc-prod", "vcenter_host": "h", "username": "u", "password": "p"}"#,
            ),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            base.to_owned(),
            Some(
                r#"{"credential_name": "y", "vcenter_host": "h", "username": "u", "password": 31337}"#,
            ),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = h.call(method.clone(), &uri, body, Caller::Operator).await;
        assert_eq!(s, want, "{method} {uri}: {b}");
        assert!(!b.to_string().contains("31337"), "{b}");
    }
    let (s, _) = h.call(Method::GET, base, None, Caller::Remote).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("{base}/{id2}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    h.stop().await;
    assert!(
        files_containing(&data, PASSWORD.as_bytes()).is_empty(),
        "password in clear under the data dir"
    );

    // Rotation re-encrypts under a new key file; the hub opens the credential afterwards.
    let key_file = data.join("credential-key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let out = run_ok(
        Command::new(BIN)
            .args(["rotate-credential-key", "--data-dir"])
            .arg(&data)
            .env_remove("SENDENSE_HUB_CREDENTIAL_KEY"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-encrypted 1 credential"),
        "{out:?}"
    );
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), old_key);
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;

    // A wrong key: the credential is named in a clear error, everything else works.
    std::fs::remove_file(&key_file).unwrap();
    write_private(&key_file, old_key.as_bytes());
    let h = TestHub::start(test_config(data.clone())).await;
    let err = h.hub.vcenter_login(id).unwrap_err().to_string();
    assert!(
        err.contains("vc-prod") && err.contains("cannot be decrypted"),
        "{err}"
    );
    let (s, _) = h.get(&format!("{base}/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.get("/api/v1/backups").await;
    assert_eq!(s, StatusCode::OK);
    h.stop().await;
}

/// With the key in the environment, rotation takes the new key from the environment too, and
/// nothing changes when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_the_key_in_the_environment() {
    use ::hub::sys::secrets::{CredentialKey, Secret};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (k1, k2) = (
        CredentialKey::generate().to_base64(),
        CredentialKey::generate().to_base64(),
    );
    let with_key = |key: &str| {
        let mut c = test_config(data.clone());
        c.credential_key = Some(Secret::new(key));
        c
    };
    let h = TestHub::start(with_key(&k1)).await;
    let (s, c) = h
        .post(
            "/api/v1/vmware-credentials",
            &json!({"credential_name": "vc", "vcenter_host": "h", "username": "u", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let id = c["credential"]["id"].as_i64().unwrap();
    h.stop().await;
    assert!(
        !data.join("credential-key").exists(),
        "no key file with the key in the environment"
    );

    let rotate = |new: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["rotate-credential-key", "--data-dir"])
            .arg(&data)
            .env("SENDENSE_HUB_CREDENTIAL_KEY", &k1)
            .env_remove("SENDENSE_HUB_NEW_CREDENTIAL_KEY");
        if let Some(new) = new {
            cmd.env("SENDENSE_HUB_NEW_CREDENTIAL_KEY", new);
        }
        cmd.output().unwrap()
    };
    let refused = rotate(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SENDENSE_HUB_NEW_CREDENTIAL_KEY"));
    let done = rotate(Some(&k2));
    assert!(done.status.success(), "{done:?}");

    let h = TestHub::start(with_key(&k2)).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
    let h = TestHub::start(with_key(&k1)).await;
    assert!(h.hub.vcenter_login(id).is_err());
    h.stop().await;
}

const CREDENTIALS: &str = "/api/v1/vmware-credentials";

fn credential(name: &str) -> Value {
    json!({"credential_name": name, "vcenter_host": "vc.example", "username": "u",
        "password": PASSWORD})
}

/// `rotate-credential-key` as an operator runs it: the key in the key file, none in the
/// environment.
fn rotate(data: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["rotate-credential-key", "--data-dir"])
        .arg(data)
        .env_remove("SENDENSE_HUB_CREDENTIAL_KEY")
        .env_remove("SENDENSE_HUB_NEW_CREDENTIAL_KEY")
        .output()
        .unwrap()
}

/// A file only its owner reads, as the hub writes its key files.
fn write_private(path: &std::path::Path, contents: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents).unwrap();
}

/// A data dir with one credential, left as a rotation killed between its catalog commit and its
/// rename leaves it: the catalog sealed under `credential-key.new`, `credential-key` still the
/// old key. Made by a real rotation with its last step (the rename) undone. Returns the
/// credential's id and the staged key.
async fn interrupted_rotation(data: &std::path::Path) -> (i64, String) {
    let h = TestHub::start(test_config(data.to_owned())).await;
    let (s, c) = h.post(CREDENTIALS, &credential("vc-prod")).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    h.stop().await;
    let key_file = data.join("credential-key");
    let old = std::fs::read(&key_file).unwrap();
    let out = rotate(data);
    assert!(out.status.success(), "{out:?}");
    std::fs::rename(&key_file, data.join("credential-key.new")).unwrap();
    write_private(&key_file, &old);
    let staged = std::fs::read_to_string(data.join("credential-key.new")).unwrap();
    (c["credential"]["id"].as_i64().unwrap(), staged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_an_interrupted_rotation_finishes_it_and_never_deletes_the_key_that_opens_the_catalog()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (id, staged) = interrupted_rotation(&data).await;
    let out = rotate(&data);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-encrypted 1 credential"),
        "{out:?}"
    );
    assert!(!data.join("credential-key.new").exists());
    assert_ne!(
        std::fs::read_to_string(data.join("credential-key")).unwrap(),
        staged,
        "the second rotation made a key of its own"
    );
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_finishes_an_interrupted_rotation_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (id, staged) = interrupted_rotation(&data).await;
    let (mut hub, _, _) = start_hub(&data);
    assert!(hub.terminate_and_wait().success());
    assert!(!data.join("credential-key.new").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("credential-key")).unwrap(),
        staged
    );
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
}

/// A rotation stopped before its commit left a staged key that sealed nothing: the next
/// rotation replaces it and the catalog keeps opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_stopped_before_its_commit_is_simply_redone() {
    use ::hub::sys::secrets::CredentialKey;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let (s, c) = h.post(CREDENTIALS, &credential("vc-prod")).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let id = c["credential"]["id"].as_i64().unwrap();
    h.stop().await;
    let never_used = format!("{}\n", CredentialKey::generate().to_base64());
    write_private(&data.join("credential-key.new"), never_used.as_bytes());
    let out = rotate(&data);
    assert!(out.status.success(), "{out:?}");
    assert!(!data.join("credential-key.new").exists());
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_refused_while_a_hub_serves_so_no_credential_is_sealed_with_a_replaced_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, _) = start_hub(&data);
    let token = read_token(&data);
    let create = |name: &str| {
        let c = ok(http(
            "POST",
            &api,
            CREDENTIALS,
            Some(&token),
            Some(&credential(name)),
        ));
        c["credential"]["id"].as_i64().unwrap()
    };
    let before = create("before");
    let rotation = rotate(&data);
    let after = create("after");
    assert!(hub.terminate_and_wait().success());
    let h = TestHub::start(test_config(data.clone())).await;
    for id in [before, after] {
        assert_eq!(
            h.hub
                .vcenter_login(id)
                .map(|l| l.password.expose().to_owned())
                .ok(),
            Some(PASSWORD.to_owned()),
            "credential {id}"
        );
    }
    h.stop().await;
    assert!(!rotation.status.success(), "{rotation:?}");
    assert!(
        String::from_utf8_lossy(&rotation.stderr).contains("another sendense-hub process"),
        "{rotation:?}"
    );
    // Once the hub is stopped, the same rotation goes through.
    let out = rotate(&data);
    assert!(out.status.success(), "{out:?}");
}

/// The data dir of a stopped hub holding one sealed credential; returns its id.
async fn one_sealed_credential(data: &std::path::Path) -> i64 {
    let h = TestHub::start(test_config(data.to_owned())).await;
    let (s, c) = h.post(CREDENTIALS, &credential("vc-prod")).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    h.stop().await;
    c["credential"]["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_file_is_not_replaced_while_sealed_credentials_exist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = one_sealed_credential(&data).await;
    let key_file = data.join("credential-key");
    let key = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();

    // The hub runs; credential use answers 503 naming the missing file.
    let (mut hub, api, _) = start_hub(&data);
    let token = read_token(&data);
    let (s, b) = http(
        "POST",
        &api,
        CREDENTIALS,
        Some(&token),
        Some(&credential("new")),
    );
    // `/health` says so too: a hub that cannot open its credentials is not healthy.
    let (health_status, health) = http("GET", &api, "/health", None, None);
    assert!(hub.terminate_and_wait().success());
    assert_eq!(s, 503, "{b}");
    assert!(
        b.to_string()
            .contains(&format!("{} does not exist", key_file.display())),
        "{b}"
    );
    assert!(!key_file.exists(), "a new key replaced the lost one");
    assert_eq!(health_status, 503, "{health}");
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("credential key") && e.contains("does not exist")),
        "{health}"
    );

    // With the key back, nothing was lost.
    write_private(&key_file, &key);
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused_with_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = one_sealed_credential(&data).await;
    let key_file = data.join("credential-key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fix = format!("chmod 600 {}", key_file.display());

    let (mut hub, api, _) = start_hub(&data);
    let token = read_token(&data);
    let (s, b) = http(
        "POST",
        &api,
        CREDENTIALS,
        Some(&token),
        Some(&credential("new")),
    );
    assert!(hub.terminate_and_wait().success());
    assert_eq!(s, 503, "{b}");
    assert!(b.to_string().contains(&fix), "{b}");
    let out = rotate(&data);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&fix),
        "{out:?}"
    );

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let h = TestHub::start(test_config(data.clone())).await;
    assert_eq!(h.hub.vcenter_login(id).unwrap().password.expose(), PASSWORD);
    h.stop().await;
}
