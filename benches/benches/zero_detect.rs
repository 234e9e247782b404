//! Is a WRITE payload all zeroes? Strategies from `benches::zero` on 32 MiB (SNA's write size) and
//! 256 KiB (nbdcopy's) buffers: all zero (the whole buffer is read), and random data (first byte
//! non-zero: early exit).

use std::hint::black_box;

use benches::zero::STRATEGIES;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::RngCore as _;

fn zero_detect(c: &mut Criterion) {
    for (label, size) in [("256K", 256usize << 10), ("32M", 32 << 20)] {
        let zeros = vec![0u8; size];
        let mut data = vec![0u8; size];
        rand::rng().fill_bytes(&mut data);
        data[0] |= 1;
        let mut g = c.benchmark_group(format!("zero_detect/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        for (name, f) in STRATEGIES {
            g.bench_with_input(BenchmarkId::new(*name, "zeros"), &zeros, |b, buf| {
                b.iter(|| f(black_box(buf)))
            });
            g.bench_with_input(BenchmarkId::new(*name, "data"), &data, |b, buf| {
                b.iter(|| f(black_box(buf)))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = zero_detect
}
criterion_main!(benches);
