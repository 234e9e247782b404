//! The vCenter password, echoed back by the SNA in its error body (JSON-escaped both ways, by the
//! stand-in's `echo_password` mode), reaches no API answer, no byte of the catalog and no log line
//! of the real binary — in any encoding.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::standin::StandIn;
use common::*;
use serde_json::{Value, json};

/// `"`, `\` and non-ASCII: each has an escaped form the hub's old scrub did not look for.
const PASSWORD: &str = "pässwörd\"\\x-Vc-7d1e";
const VM: &str = "db-07";

/// The password's forms an answer, the catalog or a log line might carry it in.
fn forms() -> Vec<String> {
    let json = serde_json::to_string(PASSWORD).unwrap();
    let debug = format!("{PASSWORD:?}");
    let ascii: String = PASSWORD
        .chars()
        .map(|c| match c {
            '"' => "\\\"".to_owned(),
            '\\' => "\\\\".to_owned(),
            c if c.is_ascii() => c.to_string(),
            c => format!("\\u{:04x}", u32::from(c)),
        })
        .collect();
    let percent: String = PASSWORD.bytes().map(|b| format!("%{b:02X}")).collect();
    vec![
        PASSWORD.to_owned(),
        json[1..json.len() - 1].to_owned(),
        debug[1..debug.len() - 1].to_owned(),
        ascii,
        percent,
        // Its start alone, in case the rest was cut off.
        "pässwörd".to_owned(),
        "p\\u00e4ssw".to_owned(),
    ]
}

fn assert_hidden(what: &str, text: &str) {
    for form in forms() {
        assert!(!text.contains(&form), "{what} holds {form:?}: {text}");
    }
}

/// `sendense-hub serve` with text logs (what a user runs) against `sna_url`: the process, its
/// API address, and its stderr lines, all of them once the reader thread ends.
fn start(data: &Path, sna_url: &str) -> (ChildGuard, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(["--sna-url", sna_url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(Some(child));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("hub: {line}");
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
        std::mem::take(&mut *keep.lock().unwrap())
    });
    loop {
        let line = rx.recv().expect("hub exited before listening");
        if let Some(at) = line.split("api=").nth(1) {
            let api = at.split_whitespace().next().unwrap().to_owned();
            return (guard, api, reader);
        }
    }
}

#[test]
fn an_echoed_password_reaches_no_answer_catalog_or_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let inventory = json!({
        "vcenter": {"host": "vc.example", "datacenter": "DC1"},
        "vms": [{"id": "vm-7", "name": VM, "path": format!("/DC1/vm/{VM}"), "datacenter": "DC1",
            "disks": [{"id": "disk-2000", "label": "Hard disk 1", "path": "[ds1] db-07/a.vmdk",
                "vmdk_path": "[ds1] db-07/a.vmdk", "size_gb": 0, "capacity_bytes": 1 << 20,
                "datastore": "ds1", "provisioning_type": "thin", "unit_number": 0}],
            "networks": []}]
    });
    let mut sna = StandIn::start(
        dir.path(),
        json!({"hub_url": "", "password": PASSWORD, "inventory": inventory, "mode": "ok",
            "log": dir.path().join("sna-log.jsonl"), "errors": dir.path().join("sna-errors.jsonl")}),
    );
    let sna_url = format!("http://127.0.0.1:{}", StandIn::port(dir.path()));
    let (mut hub, api, reader) = start(&data, &sna_url);
    let token = read_token(&data);
    let call = |method: &str, path: &str, body: Option<&Value>| {
        let (status, answer) = http(method, &api, path, Some(&token), body);
        assert_hidden(&format!("{method} {path}"), &answer.to_string());
        (status, answer)
    };

    let c = ok(call(
        "POST",
        "/api/v1/vmware-credentials",
        Some(
            &json!({"credential_name": "vc", "vcenter_host": "vc.example", "username": "admin",
            "password": PASSWORD, "datacenter": "DC1", "is_default": true}),
        ),
    ));
    let discover = json!({"credential_id": c["credential"]["id"], "selected_vms": [VM],
        "create_context": true});
    ok(call(
        "POST",
        "/api/v1/discovery/discover-vms",
        Some(&discover),
    ));

    // From here the SNA answers 500 with the password in its body.
    sna.set("mode", json!("echo_password"));
    let (s, body) = call("POST", "/api/v1/discovery/discover-vms", Some(&discover));
    assert_eq!(s, 502, "{body}");
    assert!(body.to_string().contains("withheld"), "{body}");
    let full = json!({"vm_name": VM, "backup_type": "full", "repository_id": "default"});
    let (s, body) = call("POST", "/api/v1/backups", Some(&full));
    assert_eq!(s, 502, "{body}");
    assert!(body.to_string().contains("withheld"), "{body}");
    let list = ok(call("GET", "/api/v1/backups?status=failed", None));
    let id = list["backups"][0]["backup_id"].as_str().unwrap().to_owned();
    let failed = ok(call("GET", &format!("/api/v1/backups/{id}"), None));
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap()
            .contains("withheld"),
        "{failed}"
    );
    // The SNA did receive (and echo) the password the credential holds.
    let asked = sna.lines("log");
    assert!(
        asked.iter().all(|r| r["body"]["password_ok"] == true),
        "{asked:?}"
    );

    // The catalog (and its WAL, while the hub runs and after it stops) holds only the sealed
    // password.
    for form in forms() {
        let found = files_containing(&data, form.as_bytes());
        assert!(found.is_empty(), "{form:?} in {found:?}");
    }
    assert!(hub.terminate_and_wait().success());
    for form in forms() {
        let found = files_containing(&data, form.as_bytes());
        assert!(found.is_empty(), "{form:?} in {found:?}");
    }
    let log = reader.join().unwrap().join("\n");
    assert!(log.contains("502") || log.contains("withheld"), "{log}");
    assert_hidden("the hub's log", &log);
}
