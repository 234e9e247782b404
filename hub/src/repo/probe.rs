//! Whether a directory can hold images, asked of the filesystem itself.

/// Kernel filesystems that show processes or devices as files: nothing stored there is kept.
#[allow(clippy::unnecessary_cast)] // the magics are i64 or u32 depending on the target
const VIRTUAL_FILESYSTEMS: [(i64, &str); 9] = [
    (libc::PROC_SUPER_MAGIC as i64, "proc"),
    (libc::SYSFS_MAGIC as i64, "sysfs"),
    (libc::DEVPTS_SUPER_MAGIC as i64, "devpts"),
    (libc::CGROUP_SUPER_MAGIC as i64, "cgroup"),
    (libc::CGROUP2_SUPER_MAGIC as i64, "cgroup2"),
    (libc::DEBUGFS_MAGIC as i64, "debugfs"),
    (libc::TRACEFS_MAGIC as i64, "tracefs"),
    (libc::SECURITYFS_MAGIC as i64, "securityfs"),
    (libc::BPF_FS_MAGIC as i64, "bpf"),
];

/// Why `path` cannot hold images: not a directory, a kernel filesystem (`/proc/self`), or a
/// place where a regular file cannot be created and removed.
pub(crate) fn usable_directory(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    let fs = rustix::fs::statfs(path).map_err(|e| format!("statfs: {e}"))?;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the target
    let kind = fs.f_type as i64;
    if let Some((_, name)) = VIRTUAL_FILESYSTEMS.iter().find(|(magic, _)| *magic == kind) {
        return Err(format!("it is on the kernel's {name} filesystem"));
    }
    let probe = path.join(format!(".sendense-probe-{}", uuid::Uuid::new_v4().simple()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|file| {
            let regular = file.metadata()?.is_file();
            drop(file);
            std::fs::remove_file(&probe)?;
            if regular {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "a new file there is not a regular file",
                ))
            }
        })
        .map_err(|e| format!("cannot create a file there: {e}"))
}
