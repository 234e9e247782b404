//! The direct-I/O backend on its own: aligned and unaligned reads and writes against an in-memory
//! model, reads past the end, and concurrent unaligned writes into shared blocks (no update lost).

mod common;

use std::sync::Arc;

use common::*;
use qcow2::{DirectStorage, FileStorage, MemStorage, Storage, StorageIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn open(dir: &std::path::Path, name: &str) -> DirectStorage {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .unwrap();
    DirectStorage::new(FileStorage::new(f))
        .map_err(|(e, _)| e)
        .unwrap()
}

#[test]
fn random_io_matches_the_model() {
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let st = open(dir.path(), "a");
    let align = st.alignment();
    eprintln!("direct-I/O alignment here: {align:?}");
    assert!(align.mem.is_power_of_two() && align.offset.is_power_of_two());
    let model = MemStorage::new(Vec::new());
    let mut rng = StdRng::seed_from_u64(11);
    const SPAN: u64 = 1 << 20;
    for round in 0..400 {
        let len = match rng.random_range(0..3) {
            0 => rng.random_range(1..=700usize),
            1 => 4096 * rng.random_range(1..=16usize),
            _ => rng.random_range(1..=200_000usize),
        };
        let off = if rng.random_bool(0.4) {
            rng.random_range(0..SPAN) / 4096 * 4096
        } else {
            rng.random_range(0..SPAN)
        };
        // Misaligned buffers too: start the slice at a random byte of a bigger buffer.
        let skew = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(1..64)
        };
        if rng.random_bool(0.6) {
            let mut data = qcow2::storage::AlignedBuf::zeroed(len + skew, 4096);
            rng.fill(&mut data[..]);
            st.write_at(&data[skew..], off).unwrap();
            model.write_at(&data[skew..], off).unwrap();
        } else {
            let mut got = qcow2::storage::AlignedBuf::zeroed(len + skew, 4096);
            let mut want = vec![0u8; len];
            let (a, b) = (
                st.read_at(&mut got[skew..], off),
                model.read_at(&mut want, off),
            );
            match b {
                Ok(()) => {
                    a.unwrap_or_else(|e| panic!("round {round}: read {off}+{len}: {e}"));
                    assert!(got[skew..] == want[..], "round {round}: read {off}+{len}");
                }
                // The direct file may have grown to a block boundary; the model has not.
                Err(_) if st.len().unwrap() >= off + len as u64 => {}
                Err(_) => assert_eq!(
                    a.unwrap_err().kind(),
                    std::io::ErrorKind::UnexpectedEof,
                    "round {round}"
                ),
            }
        }
    }
    st.flush().unwrap();
    let m = model.to_vec();
    let file = std::fs::read(dir.path().join("a")).unwrap();
    assert!(file.len() >= m.len() && file.len() < m.len() + align.offset as usize);
    assert!(file[..m.len()] == m[..], "file differs from the model");
    assert!(file[m.len()..].iter().all(|&b| b == 0));
}

#[test]
fn reads_past_the_end_fail() {
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let st = open(dir.path(), "a");
    st.write_at(&[7u8; 8192], 0).unwrap();
    let mut b = [0u8; 100];
    st.read_at(&mut b[..92], 8100).unwrap();
    assert!(b[..92].iter().all(|&x| x == 7));
    let e = st.read_at(&mut b, 8150).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    let mut big = qcow2::storage::AlignedBuf::zeroed(16384, 4096);
    let e = st.read_at(&mut big, 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

/// Eight threads write interleaved 8-byte pieces of the same blocks over and over; a
/// read-modify-write that was not serialised would put an older copy of a neighbour's piece back.
#[test]
fn concurrent_unaligned_writes_into_one_block_lose_nothing() {
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let st = Arc::new(open(dir.path(), "a"));
    const THREADS: u64 = 8;
    const BLOCKS: u64 = 4;
    const ROUNDS: u64 = 30;
    st.write_at(&vec![0u8; (BLOCKS * 4096) as usize], 0)
        .unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let st = st.clone();
            std::thread::spawn(move || {
                for r in 1..=ROUNDS {
                    for piece in (t..BLOCKS * 512).step_by(THREADS as usize) {
                        st.write_at(&(t << 32 | r).to_le_bytes(), piece * 8)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut all = vec![0u8; (BLOCKS * 4096) as usize];
    st.read_at(&mut all, 0).unwrap();
    for (piece, c) in all.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(c.try_into().unwrap());
        let t = piece as u64 % THREADS;
        assert_eq!(v, t << 32 | ROUNDS, "piece {piece}");
    }
}

/// A direct write the kernel refuses is an error to the caller, not retried through the page
/// cache: here the file descriptor is read-only, so every write fails with EBADF.
#[test]
fn a_failed_direct_write_is_an_error_not_a_fallback() {
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let path = dir.path().join("a.qcow2");
    qcow2::Image::create(
        &path,
        &qcow2::CreateOptions {
            size: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let ro = std::fs::File::open(&path).unwrap();
    let st: Arc<dyn Storage> = Arc::new(
        DirectStorage::new(FileStorage::new(ro))
            .map_err(|(e, _)| e)
            .unwrap(),
    );
    let img = qcow2::Image::open_storage(
        st.clone(),
        &qcow2::OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (off, len) in [(0u64, 1usize << 20), (777, 5000)] {
        let e = img.write_at(off, &vec![1u8; len]).unwrap_err();
        assert_eq!(e.kind(), qcow2::ErrorKind::Io, "{e}");
    }
    let e = st.write_at(&[1u8; 512], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    drop(img);
    assert!(std::fs::read(&path).unwrap() == before, "the file changed");
}
