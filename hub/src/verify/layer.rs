//! One layer of a chain checked on its own: its files, its backing file, its digests, its
//! structure. Blocking; knows the catalog's records and the files.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{Backup, Disk};
use crate::repo::digests;

/// Mismatched ranges reported per disk; the first is what counts, the rest are for the log.
const MISMATCHES_PER_DISK: usize = 64;

/// One thing wrong, located as precisely as the check allows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub backup_id: String,
    pub disk_id: u32,
    /// The start of the 1 MiB guest range that differs; none for a fault of the whole file.
    pub guest_offset: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backup {} disk {}", self.backup_id, self.disk_id)?;
        if let Some(at) = self.guest_offset {
            write!(f, " guest offset {at}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What one layer's check found: failures, and what could not be checked (not a failure).
#[derive(Debug, Default)]
pub struct LayerReport {
    pub failures: Vec<Failure>,
    pub notes: Vec<String>,
}

/// Every disk of `layer`, whose catalog parent is `parent`.
pub fn check_layer(layer: &Backup, parent: Option<&Backup>, io: qcow2::StorageIo) -> LayerReport {
    let mut report = LayerReport::default();
    for disk in &layer.disks {
        let expected_backing = parent
            .and_then(|p| p.disk(disk.disk_id))
            .map(|d| d.qcow2_path.clone());
        let mut fail = |guest_offset: Option<u64>, what: String| {
            report.failures.push(Failure {
                backup_id: layer.id.clone(),
                disk_id: disk.disk_id,
                guest_offset,
                what,
            })
        };
        check_disk(
            disk,
            expected_backing.as_deref(),
            io,
            &mut fail,
            &mut report.notes,
        );
    }
    report
}

fn check_disk(
    disk: &Disk,
    expected_backing: Option<&Path>,
    io: qcow2::StorageIo,
    fail: &mut dyn FnMut(Option<u64>, String),
    notes: &mut Vec<String>,
) {
    let path = &disk.qcow2_path;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return fail(None, format!("image {} missing: {e}", path.display())),
    };
    if !meta.file_type().is_file() {
        return fail(
            None,
            format!("image {} is not a regular file", path.display()),
        );
    }
    if let Some(size) = disk.image_size.filter(|&s| meta.len() < s) {
        fail(
            None,
            format!(
                "image truncated: {} bytes, {size} recorded at finalise",
                meta.len()
            ),
        );
    }
    if let Err(what) = check_backing(path, expected_backing) {
        fail(None, what);
    }
    check_digests(disk, io, fail, notes);
    match qcow2::check::check(path, false) {
        Ok(r) if r.corruptions > 0 => fail(
            None,
            format!(
                "structural check: {} corruptions ({})",
                r.corruptions,
                r.messages.first().map_or("", String::as_str)
            ),
        ),
        Ok(_) => {}
        Err(e) => fail(None, format!("structural check could not run: {e}")),
    }
}

/// The backing file the image's header names is the catalog parent's image of the same disk.
fn check_backing(path: &Path, expected: Option<&Path>) -> Result<(), String> {
    let opts = qcow2::OpenOptions {
        no_symlinks: true,
        ..qcow2::OpenOptions::default()
    };
    let img = qcow2::Image::open(path, &opts).map_err(|e| format!("image unreadable: {e}"))?;
    let named: Option<PathBuf> = img.header().backing_file.as_ref().map(|name| {
        let name = Path::new(name);
        match path.parent() {
            Some(dir) if name.is_relative() => dir.join(name),
            _ => name.to_owned(),
        }
    });
    let same = match (&named, expected) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || a.canonicalize().ok() == b.canonicalize().ok(),
        _ => false,
    };
    if same {
        return Ok(());
    }
    let show = |p: Option<&Path>| p.map_or("none".to_owned(), |p| p.display().to_string());
    Err(format!(
        "backing file is {}, the catalog's parent image is {}",
        show(named.as_deref()),
        show(expected)
    ))
}

/// The digests file is the one the manifest names, and every range still digests the same.
fn check_digests(
    disk: &Disk,
    io: qcow2::StorageIo,
    fail: &mut dyn FnMut(Option<u64>, String),
    notes: &mut Vec<String>,
) {
    let path = &disk.qcow2_path;
    let Some(expected) = &disk.digests_blake3 else {
        // A backup finalised before verify existed: its structure is checked, its data cannot be.
        notes.push(format!(
            "disk {}: no digests recorded (finalised before verify); structure checked only",
            disk.disk_id
        ));
        return;
    };
    let recorded = match digests::read(path) {
        Ok(Some((Ok(d), hex))) if &hex == expected => d,
        Ok(Some((Ok(_), _))) => {
            return fail(
                None,
                "digests file differs from the manifest's digest of it".into(),
            );
        }
        Ok(Some((Err(e), _))) => return fail(None, format!("digests file unreadable: {e}")),
        Ok(None) => {
            let file = digests::path_of(path);
            return fail(None, format!("digests file {} missing", file.display()));
        }
        Err(e) => return fail(None, e.to_string()),
    };
    let now = match digests::compute(path, io) {
        Ok(d) => d,
        Err(e) => return fail(None, format!("image unreadable: {e}")),
    };
    if now.virtual_size != recorded.virtual_size {
        fail(
            None,
            format!(
                "virtual size {} differs from the recorded {}",
                now.virtual_size, recorded.virtual_size
            ),
        );
    }
    for m in digests::compare(&recorded, &now, MISMATCHES_PER_DISK) {
        fail(Some(m.guest_offset), m.what.to_owned());
    }
}
