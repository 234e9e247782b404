//! Storage that fails: an I/O error at any point leaves an image qemu-img accepts (leaks at
//! most), everything flushed before the error reads back, and after a failed metadata write or
//! sync the image refuses further changes instead of claiming durability.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::*;
use qcow2::{Image, MemStorage, OpenOptions, Storage};

/// Fails the n-th write or flush (once), passes everything else to memory.
struct Faulty {
    inner: MemStorage,
    countdown: AtomicI64,
}

impl Faulty {
    fn tick(&self) -> io::Result<()> {
        if self.countdown.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

impl Storage for Faulty {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.tick()?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.tick()?;
        self.inner.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
}

const SLOT: u64 = 20_000;

#[test]
fn io_errors_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4u64 << 20;
    let cluster = 4096;
    let mut fail_points = 0;
    for fail_at in 0..120i64 {
        let mem = MemStorage::new(Vec::new());
        Image::create_storage(&mem, size, cluster).unwrap();
        let st = Arc::new(Faulty {
            inner: mem,
            countdown: AtomicI64::new(i64::MAX),
        });
        let opts = OpenOptions {
            writable: true,
            l2_cache_bytes: 0,
            ..Default::default()
        };
        let img = Image::open_storage(st.clone(), &opts).unwrap();
        st.countdown.store(fail_at, Ordering::SeqCst);
        let mut flushed_slots = 0u64;
        let mut failed = false;
        // Each slot is written once (slots are unaligned, so neighbours share clusters).
        for slot in 0..size / SLOT {
            let data = vec![slot as u8 + 1; SLOT as usize];
            if img.write_at(slot * SLOT, &data).is_err() {
                failed = true;
                break;
            }
            if slot % 5 == 4 {
                match img.flush() {
                    Ok(()) => flushed_slots = slot + 1,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if !failed {
            continue;
        }
        fail_points += 1;
        // Once a metadata write failed, no later flush may claim success for new writes.
        let later = img
            .write_at(size - SLOT, &vec![0xee; SLOT as usize])
            .and_then(|()| img.flush());
        drop(img);
        let bytes = st.inner.to_vec();
        let path = dir.path().join(format!("f{fail_at}.qcow2"));
        std::fs::write(&path, &bytes).unwrap();
        let (code, text) = qemu_img(&["check", path.to_str().unwrap()]);
        assert!(code == 0 || code == 3, "fail at {fail_at}: {text}");
        let ours = qcow2::check::check(&path, false).unwrap();
        assert_eq!(ours.exit_code(), code, "fail at {fail_at}: {ours}");
        let raw = to_raw(&path);
        for slot in 0..flushed_slots {
            let r = &raw[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize];
            assert!(
                r.iter().all(|&b| b == slot as u8 + 1),
                "fail at {fail_at}: flushed slot {slot} lost"
            );
        }
        if later.is_ok() {
            let r = &raw[(size - SLOT) as usize..];
            assert!(
                r.iter().all(|&b| b == 0xee),
                "fail at {fail_at}: flush succeeded but data missing"
            );
        }
    }
    assert!(fail_points > 50, "only {fail_points} failure points hit");
}
