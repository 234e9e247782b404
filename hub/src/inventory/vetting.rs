//! Which VMs of the SNA's answer discovery keeps a context of. A context is what a backup of the
//! VM is made from, so a VM the backup path would refuse (`repo::limits`: its name, its disks'
//! number and sizes) is refused here instead of stored; so is a VM whose name is not its own
//! (contexts are keyed by VM name, as backups and their directories are): several VMs of the
//! answer with one name, or a name whose context is another VM's.

use std::collections::HashMap;

use crate::catalog::{ContextOwner, VmContext, VmDisk};
use crate::inventory::answer::{SnaVm, parse_disk_key};
use crate::repo::limits;
use crate::state::now;

/// Where the VMs of one answer are: the credential that found them and their vCenter.
pub(super) struct Origin {
    pub credential_id: i64,
    pub vcenter_host: String,
    pub datacenter: String,
}

/// Ids named in a refusal at most: a name shared by thousands would repeat them in each.
const SHOWN_IDS: usize = 5;

/// The names several VMs of the answer have, with those VMs' ids.
pub(super) fn namesakes(vms: &[SnaVm]) -> HashMap<String, Vec<String>> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for vm in vms {
        *count.entry(vm.name.as_str()).or_default() += 1;
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for vm in vms.iter().filter(|vm| count[vm.name.as_str()] > 1) {
        out.entry(vm.name.clone()).or_default().push(vm.id.clone());
    }
    out
}

/// The context's disks, or why no context of `vm` is kept. `owner`: the context its name has.
pub(super) fn vet(
    vm: &SnaVm,
    namesakes: &HashMap<String, Vec<String>>,
    owner: Option<&ContextOwner>,
    vcenter_host: &str,
) -> Result<Vec<VmDisk>, String> {
    limits::check_vm_name(&vm.name)?;
    if let Some(ids) = namesakes.get(&vm.name) {
        let mut shown = ids[..ids.len().min(SHOWN_IDS)].join(", ");
        if ids.len() > SHOWN_IDS {
            shown.push_str(&format!(" and {} more", ids.len() - SHOWN_IDS));
        }
        return Err(format!(
            "{} VMs of this inventory are named {:?} (ids {shown}): a VM context is keyed by its \
             name, so none is kept; rename all but one in vCenter",
            ids.len(),
            vm.name
        ));
    }
    if let Some(o) = owner.filter(|o| someone_else(o, vm, vcenter_host)) {
        return Err(format!(
            "the VM context {:?} is of VM {:?} on {:?}, not of this VM {:?} on {:?}; delete that \
             context (DELETE /api/v1/vm-contexts/{{vm_name}}) to make one of this VM",
            vm.name, o.vmware_vm_id, o.vcenter_host, vm.id, vcenter_host
        ));
    }
    limits::check_disk_count(vm.disks.len())?;
    context_disks(vm)
}

/// Whether the context `o` is of another VM than `vm`: another VMware id or another vCenter
/// (an empty one, from an SNA that gave none, says nothing).
fn someone_else(o: &ContextOwner, vm: &SnaVm, vcenter_host: &str) -> bool {
    let differs = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
    differs(&o.vmware_vm_id, &vm.id) || differs(&o.vcenter_host, vcenter_host)
}

/// The context's disks from the SNA's, in its order; `disk_id` is assigned by the catalog. A
/// disk named unlike `disk-<VMware key>`, a key named twice or a capacity the backup path would
/// refuse refuses the VM.
pub(super) fn context_disks(vm: &SnaVm) -> Result<Vec<VmDisk>, String> {
    let mut disks = Vec::with_capacity(vm.disks.len());
    for d in &vm.disks {
        let key = parse_disk_key(&d.id).ok_or_else(|| {
            format!(
                "the SNA named a disk {:?}; expected disk-<VMware key>",
                d.id
            )
        })?;
        let capacity = u64::try_from(d.capacity_bytes).map_err(|_| {
            format!(
                "disk {}: capacity_bytes {} is negative",
                d.id, d.capacity_bytes
            )
        })?;
        limits::check_capacity(capacity).map_err(|why| format!("disk {}: {why}", d.id))?;
        disks.push(VmDisk {
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
        });
    }
    let mut keys: Vec<i64> = disks.iter().map(|d| d.vmware_disk_key).collect();
    keys.sort_unstable();
    if let Some(twice) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("the SNA named disk-{} twice", twice[0]));
    }
    Ok(disks)
}

/// The context of `vm` as found from `origin` (a new id: the catalog keeps a known one).
pub(super) fn context_of(vm: &SnaVm, origin: &Origin) -> VmContext {
    VmContext {
        context_id: format!("ctx-{}", uuid::Uuid::new_v4()),
        vm_name: vm.name.clone(),
        vmware_vm_id: vm.id.clone(),
        vm_path: vm.path.clone(),
        vcenter_host: origin.vcenter_host.clone(),
        datacenter: if vm.datacenter.is_empty() {
            origin.datacenter.clone()
        } else {
            vm.datacenter.clone()
        },
        credential_id: Some(origin.credential_id),
        power_state: vm.power_state.clone(),
        guest_os: vm.guest_os.clone(),
        memory_mb: vm.memory_mb,
        num_cpu: vm.num_cpu,
        created_at: now(),
        updated_at: now(),
    }
}
