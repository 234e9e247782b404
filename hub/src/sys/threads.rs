//! How many threads the hub runs, bounded by the machine and never by the number of exports,
//! backups or VMs. The bound, for `cores` cores:
//!
//! - tokio's workers: `cores` (at most [`MAX_WORKERS`]);
//! - tokio's blocking pool (image open and close, digests at finalise, verify and merge jobs,
//!   discovery filing): at most [`BLOCKING_THREADS`], where tokio's default is 512;
//! - the image I/O engine (`export::engine`): its `threads_for(cores)`, passed in here because
//!   the engine is the export room's, and as many again for the kernel's io_uring workers
//!   (`iou-wrk`, threads of this process too), capped at one per engine thread's ring
//!   (`qcow2::storage::uring`);
//! - [`FIXED_THREADS`]: the main thread, `qcow2`'s two shared background threads (preallocation),
//!   the merge workers of the two prune jobs that may run at once (4 each, and one that drops the
//!   merged-away image), and room to spare.
//!
//! `deploy/sendense-hub.service` sets `TasksMax=` from this (a test checks it).

/// Most tokio worker threads; beyond this many cores the NBD connections are not what is short.
pub const MAX_WORKERS: usize = 64;
/// Most threads of tokio's blocking pool. Everything run there is bounded work (an image opened
/// or closed, a layer digested or verified); 200 backups finishing at once queue here instead of
/// starting 200 threads.
pub const BLOCKING_THREADS: usize = 32;
/// Threads outside the runtime and the I/O engine.
pub const FIXED_THREADS: usize = 16;

/// tokio workers on a machine of `cores` cores.
pub fn workers(cores: usize) -> usize {
    cores.clamp(1, MAX_WORKERS)
}

/// Most threads the hub runs on `cores` cores when its I/O engine runs `io_threads`.
pub fn bound(cores: usize, io_threads: usize) -> usize {
    workers(cores) + BLOCKING_THREADS + 2 * io_threads + FIXED_THREADS
}

/// This machine's cores, as the runtime and the engine count them.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
