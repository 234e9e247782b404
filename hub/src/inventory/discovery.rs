//! VM discovery through the SNA (`POST /api/v1/discover`) and the VM contexts it fills.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::{ContextOwner, VmContext, VmDisk};
use crate::error::{Error, Result};
pub use crate::inventory::answer::{Inventory, InventoryVcenter, SnaDisk, SnaVm, parse_disk_key};
use crate::inventory::credentials::VcenterLogin;
use crate::inventory::vetting::{Origin, context_of, namesakes, vet};
use crate::state::Hub;

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

/// One VM of the answer: what the SNA said, and whether a context exists for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscoveredVm {
    #[serde(flatten)]
    pub vm: SnaVm,
    /// A context for this VM existed before this discovery.
    pub existing: bool,
    pub context_id: Option<String>,
}

/// A VM of the SNA's answer of which no context is made or kept up to date (the backup path
/// would refuse it, or its name is not its own), and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefusedVm {
    /// The VMware VM id the SNA gave.
    pub id: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscoverResponse {
    /// The VMs a context can be made of; the others are in `refused_vms`.
    pub discovered_vms: Vec<DiscoveredVm>,
    pub discovery_count: usize,
    pub refused_vms: Vec<RefusedVm>,
    pub contexts_created: usize,
    pub contexts_updated: usize,
    pub status: &'static str,
    pub message: String,
}

/// Contexts written per transaction: one sync per batch, and a caller gone is noticed between
/// batches.
const BATCH: usize = 512;

/// The contexts one discovery makes or refreshes: each with its index in the answer's
/// `discovered_vms`.
#[derive(Default)]
struct Pending {
    contexts: Vec<(VmContext, Vec<VmDisk>)>,
    slots: Vec<usize>,
}

impl Hub {
    /// The SNA's inventory; with `create_context`, contexts of the selected VMs. VMs the backup
    /// path would refuse, and VMs whose name another VM has, are refused and listed, never
    /// stored. Filing the answer runs off the async threads and stops between batches once the
    /// caller is gone (axum drops this future when the client disconnects, and the guard then
    /// cancels the work).
    pub async fn discover(&self, req: DiscoverRequest) -> Result<DiscoverResponse> {
        let login = self.vcenter_login(req.credential_id)?;
        let inventory = self
            .sna_inventory(&login, req.filter.as_deref().unwrap_or(""))
            .await?;
        let origin = Origin {
            credential_id: login.credential_id,
            vcenter_host: if inventory.vcenter.host.is_empty() {
                login.vcenter_host.clone()
            } else {
                inventory.vcenter.host.clone()
            },
            datacenter: [&inventory.vcenter.datacenter, &login.datacenter]
                .into_iter()
                .find(|d| !d.is_empty())
                .cloned()
                .unwrap_or_default(),
        };
        drop(login);
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let hub = self.clone();
        tokio::task::spawn_blocking(move || hub.file_inventory(req, inventory.vms, origin, &cancel))
            .await
            .map_err(|e| Error::Internal(format!("discovery task: {e}")))?
    }

    /// Sort the answer's VMs into refused and discovered, then write the contexts asked for.
    fn file_inventory(
        &self,
        req: DiscoverRequest,
        vms: Vec<SnaVm>,
        origin: Origin,
        cancel: &CancellationToken,
    ) -> Result<DiscoverResponse> {
        let owners: HashMap<String, ContextOwner> = self
            .catalog
            .vm_context_owners()?
            .into_iter()
            .map(|o| (o.vm_name.clone(), o))
            .collect();
        let namesakes = namesakes(&vms);
        let selected = |name: &str| match &req.selected_vms {
            Some(names) if !names.is_empty() => names.iter().any(|n| n == name),
            _ => true,
        };
        let (mut discovered, mut refused) = (Vec::with_capacity(vms.len()), Vec::new());
        let mut pending = Pending::default();
        for mut vm in vms {
            for disk in &mut vm.disks {
                if let Ok(bytes @ 1..) = u64::try_from(disk.capacity_bytes) {
                    disk.size_gb = crate::sys::size::gib(bytes);
                }
            }
            let owner = owners.get(&vm.name);
            let disks = match vet(&vm, &namesakes, owner, &origin.vcenter_host) {
                Ok(disks) => disks,
                Err(reason) => {
                    refused.push(RefusedVm {
                        id: vm.id,
                        name: vm.name,
                        reason,
                    });
                    continue;
                }
            };
            if req.create_context && selected(&vm.name) {
                pending.contexts.push((context_of(&vm, &origin), disks));
                pending.slots.push(discovered.len());
            }
            discovered.push(DiscoveredVm {
                existing: owner.is_some(),
                context_id: owner.map(|o| o.context_id.clone()),
                vm,
            });
        }
        let (created, updated) = self.write_contexts(pending, &mut discovered, cancel)?;
        if let Some(first) = refused.first() {
            tracing::warn!(refused = refused.len(), first = %first.reason,
                "discovery refused VMs the backup path cannot take");
        }
        let message = format!(
            "discovered {} VM(s), refused {}; {created} context(s) created, {updated} updated",
            discovered.len(),
            refused.len()
        );
        Ok(DiscoverResponse {
            discovery_count: discovered.len(),
            discovered_vms: discovered,
            refused_vms: refused,
            contexts_created: created,
            contexts_updated: updated,
            status: "success",
            message,
        })
    }

    /// Write `pending` in batches, each context's id into its slot of `discovered`; (created,
    /// updated). Stops before the next batch once `cancel` is set: what was written stays.
    fn write_contexts(
        &self,
        pending: Pending,
        discovered: &mut [DiscoveredVm],
        cancel: &CancellationToken,
    ) -> Result<(usize, usize)> {
        let (mut created, mut updated) = (0, 0);
        let total = pending.contexts.len();
        for (batch, slots) in pending
            .contexts
            .chunks(BATCH)
            .zip(pending.slots.chunks(BATCH))
        {
            if cancel.is_cancelled() {
                tracing::warn!(
                    written = created + updated,
                    total,
                    "discovery stopped: its caller went away"
                );
                return Err(Error::Conflict(
                    "discovery stopped: its caller went away".into(),
                ));
            }
            for (slot, (id, existed)) in slots.iter().zip(self.catalog.upsert_vm_contexts(batch)?) {
                if existed {
                    updated += 1;
                } else {
                    created += 1;
                }
                discovered[*slot].context_id = Some(id);
            }
        }
        tracing::info!(created, updated, "VM contexts from discovery");
        Ok((created, updated))
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
    use crate::inventory::vetting::context_disks;

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
        assert!(context_disks(&vm).unwrap_err().contains("twice"));
        vm.disks.pop();
        for bad in [0, -512, 1000] {
            vm.disks[0].capacity_bytes = bad;
            assert!(context_disks(&vm).is_err(), "{bad}");
        }
        vm.disks[0].capacity_bytes = 512;
        vm.disks[0].id = "scsi0:0".into();
        assert!(context_disks(&vm).is_err());
    }
}
