//! VM contexts from discovery through the stand-in SNA (`common::standin`), for tests that need
//! only the inventory.

use std::path::Path;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::hub::TestHub;

pub const PASSWORD: &str = "Vc-pa55-standin";

/// The stand-in serving an inventory, for tests that need only discovery.
pub struct StandIn {
    _sna: super::standin::StandIn,
    pub port: u16,
}

impl StandIn {
    /// Serves `inventory` (the SNA's discover answer) with the login [`PASSWORD`].
    pub fn start(dir: &Path, inventory: Value) -> StandIn {
        let config = json!({
            "hub_url": "", "password": PASSWORD, "inventory": inventory,
            "sources": {}, "changed": {}, "expect_change_id": {}, "new_change_ids": {},
            "mode": "ok", "hang_secs": 1,
            "log": dir.join("sna-log.jsonl"), "errors": dir.join("sna-errors.jsonl"),
        });
        let sna = super::standin::StandIn::start(dir, config);
        StandIn {
            port: super::standin::StandIn::port(dir),
            _sna: sna,
        }
    }
}

impl StandIn {
    /// The inventory discovery answers from now on.
    pub fn set_inventory(&mut self, inventory: Value) {
        self._sna.set("inventory", inventory);
    }

    /// From now on discovery answers `n` generated VMs (`gen-<i>`, one 1 MiB disk each).
    pub fn set_generated(&mut self, n: u64) {
        self._sna.set("generate_vms", json!(n));
    }
}

/// A VM of the stand-in's inventory, with one small disk.
pub fn vm(id: &str, name: &str, num_cpu: i64, memory_mb: i64) -> Value {
    json!({"id": id, "name": name, "path": format!("/DC1/vm/{name}"), "datacenter": "DC1",
        "power_state": "poweredOn", "guest_os": "ubuntu64Guest", "memory_mb": memory_mb,
        "num_cpu": num_cpu,
        "disks": [{"id": "disk-2000", "label": "Hard disk 1", "path": format!("[ds1] {name}/d.vmdk"),
            "vmdk_path": format!("[ds1] {name}/d.vmdk"), "size_gb": 0, "capacity_bytes": 1 << 20,
            "datastore": "ds1", "provisioning_type": "thin", "unit_number": 0}],
        "networks": []})
}

/// A default credential for the stand-in's vCenter (login [`PASSWORD`]); its id.
pub async fn default_credential(h: &TestHub) -> Value {
    let (s, c) = h
        .post(
            "/api/v1/vmware-credentials",
            &json!({"credential_name": "vc", "vcenter_host": "vc.example", "username": "admin",
                "password": PASSWORD, "datacenter": "DC1", "is_default": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    c["credential"]["id"].clone()
}

/// A default credential, then discovery of `vms` with contexts; returns their context ids.
pub async fn discover(h: &TestHub, vms: &[&str]) -> Vec<String> {
    let credential_id = default_credential(h).await;
    let (s, d) = h
        .post(
            "/api/v1/discovery/discover-vms",
            &json!({"credential_id": credential_id, "selected_vms": vms, "create_context": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    d["discovered_vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| vms.contains(&v["name"].as_str().unwrap()))
        .map(|v| v["context_id"].as_str().unwrap().to_owned())
        .collect()
}
