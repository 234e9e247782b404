//! The entry point of the `qcow2` fuzz target in `fuzz/` (kept here so it is built and its
//! findings replayed by the crate's tests, as `nbd-server` does).

use std::sync::Arc;

use crate::{Image, MemStorage, OpenOptions, Storage, check};

/// One fuzz case: open `data` as an image held in memory (read-only, then writable), read,
/// query block status, check and write. Errors are fine; panics, hangs and huge allocations are
/// bugs. Shared by the cargo-fuzz target and the unit tests that replay its findings.
pub fn fuzz_one(data: &[u8]) {
    let ro = OpenOptions {
        l2_cache_bytes: 1 << 20,
        ..Default::default()
    };
    let st: Arc<dyn Storage> = Arc::new(MemStorage::with_max_len(data.to_vec(), 64 << 20));
    if let Ok(img) = Image::open_storage(st, &ro) {
        let size = img.virtual_size();
        let n = size.min(256 << 10) as usize;
        let mut buf = vec![0u8; n];
        let _ = img.read_at(0, &mut buf);
        let tail = size.min(4096);
        let _ = img.read_at(size - tail, &mut buf[..tail as usize]);
        let _ = img.block_status(0, size.min(64 << 20));
        let _ = img.info_chain();
    }
    let _ = check::check_storage(&MemStorage::new(data.to_vec()), false);
    let _ = check::check_storage(&MemStorage::with_max_len(data.to_vec(), 64 << 20), true);
    let rw = OpenOptions {
        writable: true,
        ..ro
    };
    let st: Arc<dyn Storage> = Arc::new(MemStorage::with_max_len(data.to_vec(), 64 << 20));
    if let Ok(img) = Image::open_storage(st, &rw) {
        let size = img.virtual_size();
        let len = size.min(70_000);
        let _ = img.write_at(
            size / 3 / 512 * 512,
            &vec![0x5a; len.min(size - size / 3 / 512 * 512) as usize],
        );
        let _ = img.write_zeroes(0, size.min(1 << 20), true);
        let _ = img.discard(0, size.min(3 << 20));
        let _ = img.flush();
        let mut buf = vec![0u8; size.min(128 << 10) as usize];
        let _ = img.read_at(0, &mut buf);
        let _ = img.close();
    }
}
