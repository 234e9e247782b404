//! The QCOW2 engine against a raw file on the same filesystem, in the same run: sequential 2 MiB
//! writes into a fresh image (allocation), the same writes over allocated clusters (overwrite),
//! all-zero payloads, the fresh writes from 4 threads at once, random 4 KiB reads with warm L2
//! tables.
//!
//! Files go to `$BENCH_DIR`, default /dev/shm (tmpfs, like the throughput harness), else the temp
//! dir: tmpfs measures the engine, not the disk.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qcow2::{CreateOptions, Image, OpenOptions};
use rand::{Rng as _, RngCore as _, SeedableRng as _};

const TOTAL: u64 = 256 << 20;
const WRITE: usize = 2 << 20;
const READ: usize = 4096;
const READS: usize = 4096;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
    tempfile::tempdir_in(base).expect("bench dir")
}

fn fresh_image(path: &Path) -> Image {
    let _ = std::fs::remove_file(path);
    Image::create(
        path,
        &CreateOptions {
            size: TOTAL,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Image::open(
        path,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

fn fresh_raw(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn write_all_image(img: &Image, data: &[u8]) {
    for off in (0..TOTAL).step_by(WRITE) {
        img.write_at(off, data).unwrap();
    }
    img.flush().unwrap();
}

fn write_all_raw(f: &File, data: &[u8]) {
    for off in (0..TOTAL).step_by(WRITE) {
        f.write_all_at(data, off).unwrap();
    }
    f.sync_data().unwrap();
}

/// The same writes from `THREADS` threads at once (thread t writes every t-th chunk): allocation
/// under contention, as with several NBD connections.
const THREADS: u64 = 4;

/// Calls `write` for every chunk offset, from `THREADS` threads.
fn in_threads(write: impl Fn(u64) + Sync) {
    let write = &write;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for off in (t * WRITE as u64..TOTAL).step_by(WRITE * THREADS as usize) {
                    write(off);
                }
            });
        }
    });
}

fn write_all_image_mt(img: &Image, data: &[u8]) {
    in_threads(|off| img.write_at(off, data).unwrap());
    img.flush().unwrap();
}

fn write_all_raw_mt(f: &File, data: &[u8]) {
    in_threads(|off| f.write_all_at(data, off).unwrap());
    f.sync_data().unwrap();
}

fn sequential(c: &mut Criterion) {
    let dir = bench_dir();
    let img_path = dir.path().join("a.qcow2");
    let raw_path = dir.path().join("a.raw");
    let mut data = vec![0u8; WRITE];
    rand::rng().fill_bytes(&mut data);

    let mut g = c.benchmark_group("qcow2_alloc/sequential_2M_writes");
    g.throughput(Throughput::Bytes(TOTAL));
    g.sample_size(10);
    g.bench_function("qcow2_fresh", |b| {
        b.iter_batched(
            || fresh_image(&img_path),
            |img| {
                write_all_image(&img, &data);
                img
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_fresh", |b| {
        b.iter_batched(
            || fresh_raw(&raw_path),
            |f| {
                write_all_raw(&f, &data);
                f
            },
            BatchSize::PerIteration,
        )
    });
    // All-zero payloads (nbdcopy and the SNA client send some): stored as zero clusters.
    let zeros = vec![0u8; WRITE];
    g.bench_function("qcow2_fresh_zeros", |b| {
        b.iter_batched(
            || fresh_image(&img_path),
            |img| {
                write_all_image(&img, &zeros);
                img
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_fresh_zeros", |b| {
        b.iter_batched(
            || fresh_raw(&raw_path),
            |f| {
                write_all_raw(&f, &zeros);
                f
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("qcow2_fresh_4threads", |b| {
        b.iter_batched(
            || fresh_image(&img_path),
            |img| {
                write_all_image_mt(&img, &data);
                img
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_fresh_4threads", |b| {
        b.iter_batched(
            || fresh_raw(&raw_path),
            |f| {
                write_all_raw_mt(&f, &data);
                f
            },
            BatchSize::PerIteration,
        )
    });
    let img = fresh_image(&img_path);
    write_all_image(&img, &data);
    g.bench_function("qcow2_overwrite", |b| {
        b.iter(|| write_all_image(&img, &data))
    });
    let raw = fresh_raw(&raw_path);
    write_all_raw(&raw, &data);
    g.bench_function("raw_overwrite", |b| b.iter(|| write_all_raw(&raw, &data)));
    g.finish();

    // Random 4 KiB reads over the written images; one pass first so every L2 table is cached.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let offsets: Vec<u64> = (0..READS)
        .map(|_| rng.random_range(0..TOTAL / READ as u64) * READ as u64)
        .collect();
    let mut buf = vec![0u8; READ];
    for &o in &offsets {
        img.read_at(o, &mut buf).unwrap();
    }
    let mut g = c.benchmark_group("qcow2_alloc/random_4K_reads_warm");
    g.throughput(Throughput::Bytes((READ * READS) as u64));
    g.bench_function("qcow2", |b| {
        b.iter(|| {
            for &o in &offsets {
                img.read_at(o, &mut buf).unwrap();
            }
            black_box(&buf);
        })
    });
    g.bench_function("raw", |b| {
        b.iter(|| {
            for &o in &offsets {
                raw.read_exact_at(&mut buf, o).unwrap();
            }
            black_box(&buf);
        })
    });
    g.finish();
    img.close().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = sequential
}
criterion_main!(benches);
