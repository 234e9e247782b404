//! Hand-made hostile images: every lie gives an error with a kind, never a panic or a read
//! outside the file. (Findings of the `qcow2_image` fuzz target are replayed here too.)

use std::sync::Arc;

use qcow2::{ErrorKind, Image, MemStorage, OpenOptions, Storage};

const CS: usize = 65536;

/// A valid 1 GiB image in memory with guest cluster 0 allocated.
fn base() -> Vec<u8> {
    image_bytes(1 << 30)
}

/// The bytes of a valid image of `size` in memory with guest cluster 0 allocated.
fn image_bytes(size: u64) -> Vec<u8> {
    let st = MemStorage::new(Vec::new());
    Image::create_storage(&st, size, CS as u32).unwrap();
    let st: Arc<dyn Storage> = Arc::new(st);
    let img = Image::open_storage(
        st.clone(),
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    img.write_at(0, &[1u8; 4096]).unwrap();
    img.close().unwrap();
    let mut v = vec![0u8; st.len().unwrap() as usize];
    st.read_at(&mut v, 0).unwrap();
    v
}

fn be64(v: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(v[at..at + 8].try_into().unwrap())
}

fn put64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_be_bytes());
}

fn open(v: &[u8]) -> qcow2::Result<Image> {
    Image::open_storage(
        Arc::new(MemStorage::new(v.to_vec())),
        &OpenOptions::default(),
    )
}

fn read_err(v: &[u8], off: u64) -> qcow2::Error {
    let img = open(v).unwrap();
    img.read_at(off, &mut [0u8; 4096]).unwrap_err()
}

#[test]
fn valid_base_reads() {
    let v = base();
    let img = open(&v).unwrap();
    let mut b = [0u8; 4096];
    img.read_at(0, &mut b).unwrap();
    assert_eq!(b, [1u8; 4096]);
    qcow2::fuzz_one(&v);
}

#[test]
fn lies_in_tables() {
    let v = base();
    let l1 = be64(&v, 40) as usize;
    let l2 = (be64(&v, l1) & 0x00ff_ffff_ffff_fe00) as usize;

    // L2 table past the end of the file.
    let mut x = v.clone();
    put64(&mut x, l1, (1 << 40) | (1 << 63));
    let e = read_err(&x, 0);
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message.contains("1099511627776"), "{e}");
    qcow2::fuzz_one(&x);

    // L2 table not cluster aligned; reserved bits in L1.
    put64(&mut x, l1, (1 << 63) | 0x200);
    assert_eq!(read_err(&x, 0).kind(), ErrorKind::Corrupt);
    put64(&mut x, l1, (l2 as u64) | 1);
    assert_eq!(read_err(&x, 0).kind(), ErrorKind::Corrupt);
    qcow2::fuzz_one(&x);

    // Data cluster past the end; unaligned; reserved bits.
    for bad in [
        (1u64 << 63) | (1 << 40),
        (1 << 63) | 0x10200,
        (1 << 63) | 0x10000 | 0x20,
    ] {
        let mut x = v.clone();
        put64(&mut x, l2, bad);
        assert_eq!(read_err(&x, 0).kind(), ErrorKind::Corrupt, "{bad:#x}");
        qcow2::fuzz_one(&x);
    }

    // Compressed cluster whose stream runs past the end of the file / holds garbage.
    let mut x = v.clone();
    put64(
        &mut x,
        l2,
        (1 << 62) | (255u64 << 54) | (v.len() as u64 - 100),
    );
    assert_eq!(read_err(&x, 0).kind(), ErrorKind::Corrupt);
    qcow2::fuzz_one(&x);

    // Refcount table entry pointing at the header: writable open refuses.
    let mut x = v.clone();
    let rt = be64(&v, 48) as usize;
    put64(&mut x, rt, 0);
    let st: Arc<dyn Storage> = Arc::new(MemStorage::new(x.clone()));
    let e = Image::open_storage(
        st,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    qcow2::fuzz_one(&x);
}

#[test]
fn lies_in_header() {
    let v = base();
    // Absurd virtual size with a tiny L1.
    let mut x = v.clone();
    put64(&mut x, 24, 1 << 60);
    assert_eq!(open(&x).err().unwrap().kind(), ErrorKind::Corrupt);
    // L1 size beyond any limit.
    let mut x = v.clone();
    x[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        open(&x).err().unwrap().kind(),
        ErrorKind::Corrupt | ErrorKind::Unsupported
    ));
    // Refcount table overlapping the L1 table.
    let mut x = v.clone();
    let l1 = be64(&v, 40);
    put64(&mut x, 48, l1);
    let e = open(&x).err().unwrap();
    assert!(e.message.contains("overlaps"), "{e}");
    // Truncated in the middle of the tables.
    let e = open(&v[..CS + 100]).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    // Encryption, external data file, unknown features.
    for (at, val) in [(32usize, 1u32), (76, 4), (72, 0x100)] {
        let mut x = v.clone();
        x[at..at + 4].copy_from_slice(&val.to_be_bytes());
        assert_eq!(
            open(&x).err().unwrap().kind(),
            ErrorKind::Unsupported,
            "field at {at}"
        );
        qcow2::fuzz_one(&x);
    }
    for cut in [0, 10, 30, 103, 200, CS, CS * 3 + 7] {
        qcow2::fuzz_one(&v[..cut.min(v.len())]);
    }
}

#[test]
fn tables_pointing_many_entries_at_one_block() {
    // A 1 TiB image: 2048 L1 entries, all pointing at the one L2 table; every refcount-table
    // entry pointing at the one refblock. Opening, reading, checking must stay cheap.
    let mut v = image_bytes(1 << 40);
    let l1 = be64(&v, 40) as usize;
    let l1_size = u32::from_be_bytes(v[36..40].try_into().unwrap()) as usize;
    let first = be64(&v, l1);
    for i in 0..l1_size {
        put64(&mut v, l1 + i * 8, first);
    }
    let rt = be64(&v, 48) as usize;
    let rb = be64(&v, rt);
    for i in 0..CS / 8 {
        put64(&mut v, rt + i * 8, rb);
    }
    let img = open(&v).unwrap();
    let mut b = [0u8; 4096];
    img.read_at(1 << 39, &mut b).unwrap();
    assert_eq!(b, [1u8; 4096]);
    let r = qcow2::check::check_storage(&MemStorage::new(v.clone()), false).unwrap();
    assert_eq!(r.exit_code(), 2, "{r}");
    qcow2::fuzz_one(&v);
}

#[test]
fn refblock_offset_at_the_top_of_the_address_space() {
    // Fuzz finding crash-9bbc9b43: a refcount-table entry near 2^64 overflowed the checker.
    let mut v = base();
    let rt = be64(&v, 48) as usize;
    put64(&mut v, rt + 8, 0xffff_ffff_ffff_fe00);
    let r = qcow2::check::check_storage(&MemStorage::new(v.clone()), false).unwrap();
    assert_eq!(r.exit_code(), 2, "{r}");
    qcow2::fuzz_one(&v);
}

#[test]
fn fuzz_findings_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_findings");
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        qcow2::fuzz_one(&data);
    }
}
