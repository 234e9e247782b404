//! The SNA's answer to `POST /api/v1/discover` as the hub reads it: the inventory's VMs and
//! disks, and the VMware disk keys in the disks' ids.

use serde::{Deserialize, Serialize};

/// The SNA's inventory. Fields it may leave out default to empty.
#[derive(Debug, Deserialize)]
pub struct Inventory {
    #[serde(default)]
    pub vcenter: InventoryVcenter,
    #[serde(default)]
    pub vms: Vec<SnaVm>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InventoryVcenter {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub datacenter: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SnaVm {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub power_state: String,
    #[serde(default)]
    pub guest_os: String,
    #[serde(default)]
    pub memory_mb: i64,
    #[serde(default)]
    pub num_cpu: i64,
    #[serde(default)]
    pub disks: Vec<SnaDisk>,
    #[serde(default)]
    pub networks: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SnaDisk {
    /// `disk-<VMware key>`.
    pub id: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub vmdk_path: String,
    /// The SNA's whole GiB on the way in; on the way out, `capacity_bytes` in GiB unrounded
    /// ([`crate::sys::size::gib`]) when the SNA gave it.
    #[serde(default)]
    pub size_gb: f64,
    #[serde(default)]
    pub capacity_bytes: i64,
    #[serde(default)]
    pub datastore: String,
    #[serde(default)]
    pub provisioning_type: String,
    #[serde(default)]
    pub unit_number: i64,
}

/// `disk-2000` → 2000: the SNA names disks by their VMware key, which the client matches against
/// the keys in `nbd_targets`.
pub fn parse_disk_key(id: &str) -> Option<i64> {
    id.strip_prefix("disk-")?.parse().ok().filter(|k| *k >= 0)
}
