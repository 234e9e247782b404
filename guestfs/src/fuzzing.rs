//! The entry point of the `guest_disk` fuzz target in `fuzz/` (kept here so it is built, and
//! its findings replayed, by the crate's tests).

use std::sync::Arc;

use crate::fs::{EntryKind, probe};
use crate::lvm::{logical_volumes, open_logical_volume};
use crate::partition::detect;
use crate::source::{ReadAt, Slice};

/// One fuzz case: `data` as a whole disk and as one volume (and the LVs of any LVM2 PV among
/// them); every volume probed, its root and
/// the directories below listed (a few), its files stat'ed and read in part. Errors are fine;
/// panics, hangs and huge allocations are bugs.
pub fn fuzz_one(data: &[u8]) {
    let disk: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let mut volumes: Vec<Arc<dyn ReadAt>> = vec![disk.clone()];
    if let Ok(parts) = detect(&*disk) {
        for p in parts.into_iter().take(8) {
            if let Ok(s) = Slice::new(disk.clone(), p.start, p.len) {
                volumes.push(Arc::new(s));
            }
        }
    }
    // A PV's logical volumes are volumes too.
    for pv in volumes.clone() {
        if let Ok(lvs) = logical_volumes(pv.clone()) {
            for lv in lvs.into_iter().take(8) {
                if let Ok(v) = open_logical_volume(pv.clone(), &lv.name) {
                    volumes.push(v);
                }
            }
        }
    }
    for v in volumes {
        let Ok(fs) = probe(v) else { continue };
        let _ = fs.info();
        let mut todo = vec!["/".to_owned()];
        let mut budget = 64;
        while let Some(dir) = todo.pop() {
            let Ok(listing) = fs.list_limited(&dir, 64) else {
                continue;
            };
            for e in listing.entries {
                budget -= 1;
                if budget == 0 {
                    return;
                }
                let _ = fs.stat(&e.path);
                match e.kind {
                    EntryKind::Directory => todo.push(e.path),
                    EntryKind::File | EntryKind::Symlink => {
                        if let Ok(mut f) = fs.open(&e.path) {
                            let mut buf = [0u8; 4096];
                            let _ = f.read(&mut buf);
                            let _ = f.seek(f.size() / 2);
                            let _ = f.read(&mut buf);
                        }
                    }
                    EntryKind::Other => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_inputs_do_not_panic() {
        for len in [0usize, 1, 511, 512, 1024, 2048, 4096, 70_000] {
            super::fuzz_one(&vec![0u8; len]);
            super::fuzz_one(&vec![0xFFu8; len]);
        }
        // An MBR signature on nothing, and an ext superblock magic on nothing.
        let mut d = vec![0u8; 70_000];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[1024 + 56] = 0x53;
        d[1024 + 57] = 0xEF;
        super::fuzz_one(&d);
    }
}
