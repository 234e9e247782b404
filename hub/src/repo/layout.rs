//! The repository's on-disk layout, in one place: `<repository>/<vm>/<backup id>/disk<N>.qcow2`,
//! and the names of the exports that serve those images. Whoever writes a backup directory and
//! whoever reads one back (orphan sweep, catalog rebuild) asks this module.

use std::path::{Path, PathBuf};

use rand::Rng;

/// A name usable as a directory and inside an NBD URI: VM names are free text.
pub fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() { "vm".to_owned() } else { out }
}

/// 64 random bits as hex: the part of an export name that cannot be guessed.
pub fn random_hex() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// `<repository>/<safe vm name>`: the directory holding a VM's backups.
pub fn vm_dir(repository: &Path, vm_name: &str) -> PathBuf {
    repository.join(safe_name(vm_name))
}

/// `<repository>/<safe vm name>/<backup id>`: one backup's images.
pub fn backup_dir(repository: &Path, vm_name: &str, backup_id: &str) -> PathBuf {
    vm_dir(repository, vm_name).join(backup_id)
}

/// The image of one disk inside a backup directory.
pub fn disk_path(backup_dir: &Path, disk_id: u32) -> PathBuf {
    backup_dir.join(format!("disk{disk_id}.qcow2"))
}

/// The disk id of a file named like [`disk_path`] names it, or `None`.
pub fn disk_file_id(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("disk")?.strip_suffix(".qcow2")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a file name is one [`disk_path`] makes.
pub fn is_disk_file(name: &str) -> bool {
    disk_file_id(name).is_some()
}

/// Whether a directory name can be a backup id: a UUID, with or without a `backup-` prefix.
pub fn is_backup_id(name: &str) -> bool {
    uuid::Uuid::parse_str(name.strip_prefix("backup-").unwrap_or(name)).is_ok()
}

/// The manifest of a backup directory (see [`crate::repo::manifest`]).
pub const MANIFEST_FILE: &str = "manifest.json";

pub fn manifest_path(backup_dir: &Path) -> PathBuf {
    backup_dir.join(MANIFEST_FILE)
}

/// Where a new manifest is written before it is renamed over the old one.
pub fn manifest_temp_path(backup_dir: &Path) -> PathBuf {
    backup_dir.join(".manifest.json.tmp")
}

/// The folder of a repository's root where `catalog rebuild` moves the backup directories it
/// cannot file, as `<repository>/.quarantine/<vm>/<id>`: out of the way of the start's comparison
/// (no VM directory starts with a dot: [`safe_name`]), deleted by nobody, and moved back by hand.
pub const QUARANTINE_DIR: &str = ".quarantine";

/// Where the backup directory `dir` (`<repository>/<vm>/<id>`) goes in quarantine; `None` when
/// `dir` is not shaped like one.
pub fn quarantine_path(dir: &Path) -> Option<PathBuf> {
    let id = dir.file_name()?;
    let vm_dir = dir.parent()?;
    let repository = vm_dir.parent()?;
    Some(
        repository
            .join(QUARANTINE_DIR)
            .join(vm_dir.file_name()?)
            .join(id),
    )
}

/// The export name of a backup's disk: the VM, 64 unguessable bits, the disk.
pub fn backup_export_name(vm_name: &str, disk_id: u32) -> String {
    format!("{}-{}-disk{disk_id}", safe_name(vm_name), random_hex())
}

/// The export name of a restore of one disk.
pub fn restore_export_name(vm_name: &str, disk_id: u32) -> String {
    format!("restore-{}", backup_export_name(vm_name, disk_id))
}

/// The backup directory an image path lies in (the catalog records image paths).
pub fn dir_of_disk(disk_path: &Path) -> Option<&Path> {
    disk_path.parent()
}

/// The directory of a catalog record: where its images are.
pub fn dir_of_backup(backup: &crate::catalog::Backup) -> Option<&Path> {
    backup
        .disks
        .first()
        .and_then(|d| dir_of_disk(&d.qcow2_path))
}

/// [`dir_of_backup`], or an empty path for a record without disks (nothing to remove).
pub fn backup_dir_of(backup: &crate::catalog::Backup) -> PathBuf {
    dir_of_backup(backup).map(PathBuf::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("web-01"), "web-01");
        assert_eq!(safe_name("my vm/../x"), "my_vm_.._x");
        assert_eq!(safe_name(".."), "_.");
        assert_eq!(safe_name(""), "vm");
    }

    #[test]
    fn disk_files() {
        let dir = backup_dir(Path::new("/r"), "a b", "id");
        assert_eq!(dir, Path::new("/r/a_b/id"));
        let p = disk_path(&dir, 7);
        assert_eq!(p, Path::new("/r/a_b/id/disk7.qcow2"));
        assert_eq!(disk_file_id("disk7.qcow2"), Some(7));
        assert!(is_disk_file("disk0.qcow2"));
        for bad in [
            "disk.qcow2",
            "diskx.qcow2",
            "disk1.qcow2.tmp",
            "disk-1.qcow2",
        ] {
            assert!(!is_disk_file(bad), "{bad}");
        }
        assert!(restore_export_name("vm", 2).starts_with("restore-vm-"));
        assert_eq!(
            quarantine_path(&dir).unwrap(),
            Path::new("/r/.quarantine/a_b/id")
        );
        assert!(!safe_name(QUARANTINE_DIR).starts_with('.'));
    }
}
