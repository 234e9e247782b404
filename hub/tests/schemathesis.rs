//! `schemathesis` (PyPI) against `sendense-hub serve` over a real socket, with the token, driven by
//! the hub's own OpenAPI document: no 5xx, every status and body as documented, invalid input
//! refused, 401 without the token, 405 with `Allow` for other methods.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// The schemathesis CLI (`st`, or `schemathesis`) on PATH, or in `$SCHEMATHESIS`.
fn find_schemathesis() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("SCHEMATHESIS") {
        return Some(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["st", "schemathesis"].into_iter().find_map(|name| {
            let candidate = dir.join(name);
            // pyenv leaves shims for tools of other Python versions: ask it to answer.
            let answers = Command::new(&candidate)
                .arg("--version")
                .output()
                .is_ok_and(|out| {
                    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("st")
                });
            answers.then_some(candidate)
        })
    })
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let Some(st) = find_schemathesis() else {
        assert!(
            !under_ci(),
            "schemathesis is not installed (CI must install it: pip install schemathesis)"
        );
        eprintln!(
            "SKIPPED: schemathesis is not installed (pip install schemathesis); the OpenAPI \
             document was not tested against the running hub"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No SNA runs here: a closed loopback port refuses at once, so discovery answers 502 without
    // waiting for the SNA timeout.
    let (mut hub, api, _nbd) = start_hub_with(&data, &["--sna-url", "http://127.0.0.1:1"]);
    let token = read_token(&data);
    let config = seed(&api, &token, dir.path());
    let out = run_schemathesis(&st, &config, dir.path(), &api, &token);
    let status = hub.terminate_and_wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It ran the operations rather than, say, failing to load the document.
    assert!(stdout.contains("generated"), "{stdout}\n{stderr}");
    assert!(status.success(), "hub exited with {status}");
    no_response_has_the_password(&dir.path().join(HAR));
}

/// The recording of every exchange (`--report har`), relative to schemathesis' directory.
const HAR: &str = "exchanges.har";
/// The seeded credential's password: no answer to any generated request may carry it.
const SEED_PASSWORD: &str = "seed-Secret-1";

/// Every response schemathesis got, read from its HAR recording (written unsanitised, so a
/// `password` field would show rather than be masked): none holds the seeded password, and the
/// credential routes did answer (the check is not vacuous).
fn no_response_has_the_password(har: &Path) {
    use base64::Engine;
    let har: Value = serde_json::from_slice(&std::fs::read(har).expect("the HAR report")).unwrap();
    let entries = har["log"]["entries"].as_array().expect("HAR entries");
    let mut credential_answers = 0;
    for entry in entries {
        let content = &entry["response"]["content"];
        let text = content["text"].as_str().unwrap_or_default();
        let text = if content["encoding"] == "base64" {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            text.to_owned()
        };
        let url = entry["request"]["url"].as_str().unwrap_or_default();
        assert!(
            !text.contains(SEED_PASSWORD),
            "the password in the answer to {url}: {text}"
        );
        if url.contains("/vmware-credentials") && entry["response"]["status"] == 200 {
            credential_answers += 1;
        }
    }
    assert!(
        credential_answers > 0,
        "no credential route answered 200 in {} exchanges",
        entries.len()
    );
}

/// Things for the generated requests to find besides the 404s of random ids: a completed backup
/// with an open restore, and a ready one. Returns a schemathesis config that offers their ids
/// (and the VM names) for half of the ids it generates.
fn seed(api: &str, token: &str, dir: &Path) -> PathBuf {
    let create = |vm: &str| {
        let body = json!({"vm_name": vm, "backup_type": "full", "disks": [
            {"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 1 << 20},
            {"disk_id": 1, "vmware_disk_key": 2001, "capacity_bytes": 1 << 20}]});
        ok(http(
            "POST",
            api,
            "/api/v1/backups",
            Some(token),
            Some(&body),
        ))["backup_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let done = create("seed-done");
    // A disk is completed only once a client connected to it: nbdinfo opens each export.
    let view = ok(http(
        "GET",
        api,
        &format!("/api/v1/backups/{done}"),
        Some(token),
        None,
    ));
    for disk in view["disk_results"].as_array().unwrap() {
        run_ok(Command::new("nbdinfo").arg(disk["nbd_uri"].as_str().unwrap()));
    }
    let complete = format!("/api/v1/backups/{done}/complete");
    ok(http("POST", api, &complete, Some(token), Some(&json!({}))));
    let mut status = Value::Null;
    for _ in 0..600 {
        status = ok(http(
            "GET",
            api,
            &format!("/api/v1/backups/{done}"),
            Some(token),
            None,
        ))["status"]
            .clone();
        if status == "completed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, "completed");
    let restore = ok(http(
        "POST",
        api,
        "/api/v1/restores",
        Some(token),
        Some(&json!({"backup_id": done, "disk_id": 1})),
    ))["restore_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let live = create("seed-live");
    // A credential, so discovery reaches its call to the (absent) SNA.
    let credential = ok(http(
        "POST",
        api,
        "/api/v1/vmware-credentials",
        Some(token),
        Some(
            &json!({"credential_name": "seed", "vcenter_host": "vc.example",
            "username": "administrator", "password": SEED_PASSWORD}),
        ),
    ))["credential"]["id"]
        .as_i64()
        .unwrap();

    // Discovery's 502 (and a credential test's, which is a discovery) is the absent SNA
    // (documented), not a fault of the hub: the one 5xx allowed.
    let config = dir.join("schemathesis.toml");
    let ids = json!([done, live, restore, credential]);
    std::fs::write(
        &config,
        format!(
            "[dictionaries.ids]\nvalues = {ids}\n\
             [dictionaries.vms]\nvalues = [\"seed-done\", \"seed-live\"]\n\
             [parameters]\n\
             \"path.id\" = {{ dictionary = \"ids\", probability = 0.5 }}\n\
             \"body.backup_id\" = {{ dictionary = \"ids\", probability = 0.5 }}\n\
             \"query.vm_name\" = {{ dictionary = \"vms\", probability = 0.5 }}\n\
             \"body.vm_name\" = {{ dictionary = \"vms\", probability = 0.3 }}\n\
             \"body.credential_id\" = {{ dictionary = \"ids\", probability = 0.5 }}\n\
             [[operations]]\n\
             include-operation-id = \"discover_vms\"\n\
             checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"502\"]\n\
             [[operations]]\n\
             include-operation-id = \"test_vmware_credential\"\n\
             checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"502\"]\n"
        ),
    )
    .unwrap();
    config
}

fn run_schemathesis(
    st: &Path,
    config: &Path,
    cwd: &Path,
    api: &str,
    token: &str,
) -> std::process::Output {
    Command::new(st)
        .current_dir(cwd)
        .env("HOME", cwd)
        .arg("--config-file")
        .arg(config)
        .args([
            "run",
            &format!("http://{api}/api/v1/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "all",
            // The document cannot say every rule that spans fields (unique disk ids in one list,
            // a parent only for an incremental, an incremental needs a completed backup), so a
            // schema-valid body may rightly get 400; every other check runs.
            "--exclude-checks",
            "positive_data_acceptance",
            // It would make repositories at random absolute paths on this machine.
            "--exclude-operation-id",
            "create_repository",
            // One worker: Hypothesis under CPython 3.11 threads can fail inside `ast` on its own.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "har",
            "--report-har-path",
            HAR,
            // Unmasked, so that a password in an answer is seen (the token shows in failures).
            "--output-sanitize",
            "false",
        ])
        // Bounded: under half a minute on two cores. A fixed seed makes a failure repeatable;
        // both can be changed for a longer hunt.
        .args(["--max-examples", &env_or("SCHEMATHESIS_MAX_EXAMPLES", "25")])
        .args(["--seed", &env_or("SCHEMATHESIS_SEED", "20261128")])
        .output()
        .expect("running schemathesis")
}
