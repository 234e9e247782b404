//! What one backup of a VM may be: its name and its disks' number and sizes. The backup path
//! refuses anything else (`backup::create`), and discovery refuses to store a VM context that
//! the backup path would refuse (`inventory::discovery`), so both ask here. The bounds are the
//! repository's: a directory per VM name, an image per disk.

/// Bytes of a VM name (it names the VM's directory and its exports, after `layout::safe_name`).
pub const MAX_VM_NAME: usize = 255;

/// Disks of one backup.
pub const MAX_DISKS: usize = 256;

/// Largest virtual size of one disk (QCOW2 with 64 KiB clusters handles far more; this only
/// bounds what a request can ask for).
pub const MAX_CAPACITY: u64 = 256 << 40;

/// Sector size: the images' virtual size and every NBD request are counted in it.
const SECTOR: u64 = 512;

pub fn check_vm_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > MAX_VM_NAME {
        return Err(format!(
            "vm_name must have 1 to {MAX_VM_NAME} bytes (not only blanks), got {}",
            name.len()
        ));
    }
    Ok(())
}

pub fn check_disk_count(count: usize) -> Result<(), String> {
    if count == 0 || count > MAX_DISKS {
        return Err(format!(
            "disks must list 1 to {MAX_DISKS} disks, got {count}"
        ));
    }
    Ok(())
}

pub fn check_capacity(capacity: u64) -> Result<(), String> {
    if capacity == 0 || capacity % SECTOR != 0 {
        return Err(format!(
            "capacity_bytes must be a positive multiple of {SECTOR}, got {capacity}"
        ));
    }
    if capacity > MAX_CAPACITY {
        return Err(format!(
            "capacity_bytes {capacity} is more than {MAX_CAPACITY} (256 TiB)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        check_vm_name("web-01").unwrap();
        check_vm_name(&"x".repeat(MAX_VM_NAME)).unwrap();
        for bad in ["", "  ", &"x".repeat(5000)] {
            assert!(check_vm_name(bad).is_err(), "{}", bad.len());
        }
        check_disk_count(1).unwrap();
        check_disk_count(MAX_DISKS).unwrap();
        assert!(check_disk_count(0).is_err() && check_disk_count(10_000).is_err());
        check_capacity(512).unwrap();
        check_capacity(MAX_CAPACITY).unwrap();
        for bad in [0, 1000, MAX_CAPACITY + 512] {
            assert!(check_capacity(bad).is_err(), "{bad}");
        }
    }
}
