//! VM discovery through the SNA (`POST /api/v1/discover`) and the VM contexts it fills.

use serde::{Deserialize, Serialize};

use crate::catalog::{VmContext, VmDisk};
use crate::error::{Error, Result};
use crate::inventory::credentials::VcenterLogin;
use crate::state::{Hub, now};

/// `POST /api/v1/discovery/discover-vms`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DiscoverRequest {
    pub credential_id: i64,
    #[serde(default)]
    pub filter: Option<String>,
    /// VM names to make contexts of; all discovered VMs when absent or empty.
    #[serde(default)]
    pub selected_vms: Option<Vec<String>>,
    #[serde(default)]
    pub create_context: bool,
}

/// What the SNA's `POST /api/v1/discover` takes.
#[derive(Serialize)]
struct SnaDiscover<'a> {
    vcenter: &'a str,
    username: &'a str,
    password: &'a str,
    datacenter: &'a str,
    filter: &'a str,
}

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

/// One VM of the answer: what the SNA said, and whether a context exists for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscoveredVm {
    #[serde(flatten)]
    pub vm: SnaVm,
    /// A context for this VM existed before this discovery.
    pub existing: bool,
    pub context_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscoverResponse {
    pub discovered_vms: Vec<DiscoveredVm>,
    pub discovery_count: usize,
    pub contexts_created: usize,
    pub contexts_updated: usize,
    pub status: &'static str,
    pub message: String,
}

/// `disk-2000` → 2000: the SNA names disks by their VMware key, which the client matches against
/// the keys in `nbd_targets`.
pub fn parse_disk_key(id: &str) -> Option<i64> {
    id.strip_prefix("disk-")?.parse().ok().filter(|k| *k >= 0)
}

/// The context's disks from the SNA's, in its order; `disk_id` is assigned by the catalog. A VMware
/// key named twice is the SNA's error (502), not a catalog constraint failing (500).
fn context_disks(vm: &SnaVm) -> Result<Vec<VmDisk>> {
    let disks: Vec<VmDisk> = vm
        .disks
        .iter()
        .map(|d| {
            let key = parse_disk_key(&d.id).ok_or_else(|| {
                Error::Upstream(format!(
                    "the SNA named a disk of VM {:?} {:?}; expected disk-<VMware key>",
                    vm.name, d.id
                ))
            })?;
            let capacity = u64::try_from(d.capacity_bytes)
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| {
                    Error::Upstream(format!(
                        "the SNA gave disk {} of VM {:?} capacity_bytes {}",
                        d.id, vm.name, d.capacity_bytes
                    ))
                })?;
            Ok(VmDisk {
                disk_id: 0,
                vmware_disk_key: key,
                label: d.label.clone(),
                vmdk_path: if d.vmdk_path.is_empty() {
                    d.path.clone()
                } else {
                    d.vmdk_path.clone()
                },
                datastore: d.datastore.clone(),
                capacity_bytes: capacity,
                provisioning_type: d.provisioning_type.clone(),
                unit_number: d.unit_number,
            })
        })
        .collect::<Result<_>>()?;
    let mut keys: Vec<i64> = disks.iter().map(|d| d.vmware_disk_key).collect();
    keys.sort_unstable();
    if let Some(twice) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Upstream(format!(
            "the SNA named disk-{} of VM {:?} twice",
            twice[0], vm.name
        )));
    }
    Ok(disks)
}

impl Hub {
    pub async fn discover(&self, req: DiscoverRequest) -> Result<DiscoverResponse> {
        let login = self.vcenter_login(req.credential_id)?;
        let inventory = self
            .sna_inventory(&login, req.filter.as_deref().unwrap_or(""))
            .await?;
        let selected = |name: &str| match &req.selected_vms {
            Some(names) if !names.is_empty() => names.iter().any(|n| n == name),
            _ => true,
        };
        let (mut created, mut updated) = (0, 0);
        let mut discovered = Vec::with_capacity(inventory.vms.len());
        for mut vm in inventory.vms {
            for disk in &mut vm.disks {
                if let Ok(bytes @ 1..) = u64::try_from(disk.capacity_bytes) {
                    disk.size_gb = crate::sys::size::gib(bytes);
                }
            }
            let before = self
                .catalog
                .vm_context(&vm.name)?
                .map(|(c, _)| c.context_id);
            let mut context_id = before.clone();
            if req.create_context && selected(&vm.name) {
                let (id, existed) = self.save_context(&vm, &inventory.vcenter, &login)?;
                if existed {
                    updated += 1;
                } else {
                    created += 1;
                }
                context_id = Some(id);
            }
            discovered.push(DiscoveredVm {
                existing: before.is_some(),
                context_id,
                vm,
            });
        }
        let message = format!(
            "discovered {} VM(s); {created} context(s) created, {updated} updated",
            discovered.len()
        );
        Ok(DiscoverResponse {
            discovery_count: discovered.len(),
            discovered_vms: discovered,
            contexts_created: created,
            contexts_updated: updated,
            status: "success",
            message,
        })
    }

    /// The SNA's inventory of the vCenter `login` opens.
    /// The credential's login sent to the SNA's discovery, nothing stored: a success proves the
    /// SNA is reachable, reached vCenter and logged in with it, and could list the inventory.
    /// Returns how many VMs it listed.
    pub async fn test_credential(&self, id: i64) -> Result<usize> {
        let login = self.vcenter_login(id)?;
        Ok(self.sna_inventory(&login, "").await?.vms.len())
    }

    async fn sna_inventory(&self, login: &VcenterLogin, filter: &str) -> Result<Inventory> {
        let body = SnaDiscover {
            vcenter: &login.vcenter_host,
            username: &login.username,
            password: login.password.expose(),
            datacenter: &login.datacenter,
            filter,
        };
        self.sna
            .post("/api/v1/discover", &body, &[login.password.expose()])
            .await
    }

    /// Create or update `vm`'s context; its id, and whether it existed.
    fn save_context(
        &self,
        vm: &SnaVm,
        vcenter: &InventoryVcenter,
        login: &VcenterLogin,
    ) -> Result<(String, bool)> {
        let disks = context_disks(vm)?;
        let context = VmContext {
            context_id: format!("ctx-{}", uuid::Uuid::new_v4()),
            vm_name: vm.name.clone(),
            vmware_vm_id: vm.id.clone(),
            vm_path: vm.path.clone(),
            vcenter_host: if vcenter.host.is_empty() {
                login.vcenter_host.clone()
            } else {
                vcenter.host.clone()
            },
            datacenter: [&vm.datacenter, &vcenter.datacenter, &login.datacenter]
                .into_iter()
                .find(|d| !d.is_empty())
                .cloned()
                .unwrap_or_default(),
            credential_id: Some(login.credential_id),
            power_state: vm.power_state.clone(),
            guest_os: vm.guest_os.clone(),
            memory_mb: vm.memory_mb,
            num_cpu: vm.num_cpu,
            created_at: now(),
            updated_at: now(),
        };
        let (id, existed) = self.catalog.upsert_vm_context(&context, &disks)?;
        tracing::info!(vm = %vm.name, context_id = %id, disks = disks.len(), existed,
            "VM context from discovery");
        Ok((id, existed))
    }

    pub fn vm_contexts(&self) -> Result<Vec<VmContext>> {
        self.catalog.vm_contexts()
    }

    /// By VM name or context id.
    pub fn vm_context(&self, name_or_id: &str) -> Result<(VmContext, Vec<VmDisk>)> {
        self.catalog.vm_context(name_or_id)?.ok_or_else(|| {
            Error::NotFound(format!(
                "VM not found: run discovery (no VM context {name_or_id:?})"
            ))
        })
    }

    pub fn delete_vm_context(&self, vm_name: &str) -> Result<()> {
        if !self.catalog.delete_vm_context(vm_name)? {
            return Err(Error::NotFound(format!("no VM context {vm_name:?}")));
        }
        tracing::info!(vm = %vm_name, "VM context deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_keys() {
        assert_eq!(parse_disk_key("disk-2000"), Some(2000));
        assert_eq!(parse_disk_key("disk-0"), Some(0));
        for bad in ["2000", "disk-", "disk--1", "disk-20x", "Disk-2000"] {
            assert_eq!(parse_disk_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn inventory_decodes_with_missing_fields() {
        let inv: Inventory = serde_json::from_str(
            r#"{"vcenter": {"host": "vc"}, "vms": [{"name": "a", "disks": [{"id": "disk-2000",
                "capacity_bytes": 1048576}], "extra": 1}]}"#,
        )
        .unwrap();
        let disks = context_disks(&inv.vms[0]).unwrap();
        assert_eq!(
            (disks[0].vmware_disk_key, disks[0].capacity_bytes),
            (2000, 1 << 20)
        );
        let mut vm = inv.vms[0].clone();
        vm.disks.push(vm.disks[0].clone());
        assert!(matches!(context_disks(&vm), Err(Error::Upstream(_))));
        vm.disks.pop();
        vm.disks[0].capacity_bytes = 0;
        assert!(context_disks(&vm).is_err());
        vm.disks[0].id = "scsi0:0".into();
        assert!(context_disks(&vm).is_err());
    }
}
