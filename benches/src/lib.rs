//! Benchmark support: the throughput harness lives in `src/bin/throughput.rs`.
