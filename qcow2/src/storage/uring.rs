//! Positional reads and writes through io_uring, for the direct-I/O backend.
//!
//! One ring per calling thread, created on first use. The image is driven by a handful of I/O
//! threads (hub's `IoWorkers`) that each call [`Storage`](super::Storage) synchronously, so the
//! device's queue depth is the number of those threads times the operations one call puts in
//! flight (a read-modify-write reads its head and tail blocks at once). A ring owned by one
//! submitter thread would give the same depth to synchronous callers, plus a hand-off between
//! threads on every operation and a lock on the submission queue; per-thread rings need neither.
//! Big transfers are not cut into smaller SQEs: the block layer already splits a 2 MiB bio into
//! the device's request size and dispatches the pieces together.
//!
//! Ownership of buffers: [`run`] borrows every buffer of its operations for the whole call and
//! returns only once the kernel has posted a completion for every SQE it pushed, so no buffer is
//! released or reused while the kernel may still touch it. If waiting for completions fails in a
//! way that cannot be retried (the ring itself is broken), the process aborts rather than return
//! while the kernel may still write into memory that is about to be freed.

use std::cell::RefCell;
use std::io;
use std::os::unix::io::RawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Entries of each thread's ring: more than any one call puts in flight.
const RING_ENTRIES: u32 = 8;

/// Kernel workers (`iou-wrk`) each thread's io_uring may start for operations it cannot run
/// inline: bounded work (files) and unbounded (sockets; we have none). They are threads of this
/// process and count against its task limit; without a cap the kernel starts up to one per ring
/// entry for every ring. What gets punted here is mostly a direct write that extends the file,
/// which ext4 runs under the inode lock held exclusive: several workers would only queue on it.
const IOWQ_MAX_WORKERS: [u32; 2] = [1, 1];

/// Largest transfer of one SQE (its length field is 32 bits); a multiple of any alignment.
const MAX_SQE_BYTES: usize = 1 << 30;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// One positional transfer; its buffer is borrowed until [`run`] returns.
pub(super) enum Op<'a> {
    Read { buf: &'a mut [u8], offset: u64 },
    Write { buf: &'a [u8], offset: u64 },
}

impl Op<'_> {
    fn len(&self) -> usize {
        match self {
            Op::Read { buf, .. } => buf.len(),
            Op::Write { buf, .. } => buf.len(),
        }
    }
}

/// Makes sure this thread has a ring (fails where io_uring is unavailable: old kernels, seccomp,
/// `kernel.io_uring_disabled`).
pub(super) fn probe() -> io::Result<()> {
    with_ring(|_| Ok(()))
}

fn with_ring<T>(f: impl FnOnce(&mut IoUring) -> io::Result<T>) -> io::Result<T> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let ring = IoUring::new(RING_ENTRIES)?;
            // Kernels before 5.15 cannot cap them: keep their default rather than lose the ring.
            let mut max = IOWQ_MAX_WORKERS;
            if let Err(e) = ring.submitter().register_iowq_max_workers(&mut max) {
                tracing::debug!(error = %e, "cannot cap io_uring's kernel workers");
            }
            *slot = Some(ring);
        }
        f(slot.as_mut().expect("ring created above"))
    })
}

/// Runs all `ops` on `fd` with every one of them in flight at once and waits for all. A short
/// transfer is continued from where it stopped; a read that reaches the end of the file stops
/// there. Returns the bytes each op transferred (writes always all of theirs), or the first error
/// once nothing is in flight any more.
pub(super) fn run(fd: RawFd, ops: &mut [Op<'_>]) -> io::Result<Vec<usize>> {
    assert!(
        ops.len() <= RING_ENTRIES as usize,
        "more ops than ring entries"
    );
    with_ring(|ring| {
        let mut progress = Progress::new(ops);
        loop {
            let in_flight = submit(ring, fd, ops, &mut progress);
            if in_flight == 0 {
                break;
            }
            reap(ring, in_flight, ops, &mut progress);
        }
        progress.finish()
    })
}

/// Where [`run`]'s ops stand between rounds of submissions.
struct Progress {
    /// Bytes each op has transferred so far.
    done: Vec<usize>,
    /// Ops that need (another) SQE: not finished, not failed, not at the end of the file.
    want: Vec<bool>,
    /// The error `run` returns; once set, nothing more is submitted.
    error: Option<io::Error>,
}

impl Progress {
    fn new(ops: &[Op<'_>]) -> Self {
        Self {
            done: vec![0; ops.len()],
            want: ops.iter().map(|op| op.len() > 0).collect(),
            error: None,
        }
    }

    /// Records the completion of op `i`'s SQE: `res` is the bytes transferred or `-errno`.
    fn complete(&mut self, i: usize, op: &Op<'_>, res: i32) {
        if res < 0 {
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                self.want[i] = true;
            } else {
                self.fail(io::Error::from_raw_os_error(-res));
            }
            return;
        }
        let n = res as usize;
        self.done[i] += n;
        match op {
            Op::Write { .. } if n == 0 => self.fail(io::Error::from(io::ErrorKind::WriteZero)),
            // End of file: the read stops short.
            Op::Read { .. } if n == 0 => {}
            op => self.want[i] = self.done[i] < op.len(),
        }
    }

    /// Later errors are dropped: `run` reports the first.
    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn finish(self) -> io::Result<Vec<usize>> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.done),
        }
    }
}

/// Pushes one SQE for every op that wants one, none once an error is recorded, and returns how
/// many it pushed. Only for [`run`], which reaps every one of them before it pushes more or
/// returns.
fn submit(ring: &mut IoUring, fd: RawFd, ops: &mut [Op<'_>], progress: &mut Progress) -> usize {
    if progress.error.is_some() {
        return 0;
    }
    let mut in_flight = 0usize;
    for (i, op) in ops.iter_mut().enumerate() {
        if !progress.want[i] {
            continue;
        }
        let entry = sqe(fd, op, progress.done[i]).user_data(i as u64);
        // SAFETY: the SQE points into `ops[i]`'s buffer, which `run` borrows (mutably for reads)
        // for the whole of its call; `run` does not return before the completion of this SQE has
        // been reaped by `reap` (or the process aborts), so the buffer outlives the kernel's use
        // of it. The ring has room: at most `ops.len()` SQEs are pushed per round and every
        // earlier one was consumed by `submit_and_wait` in `reap`.
        let pushed = unsafe { ring.submission().push(&entry) };
        if pushed.is_err() {
            abort_in_flight("io_uring submission queue full");
        }
        progress.want[i] = false;
        in_flight += 1;
    }
    in_flight
}

/// The SQE that continues `op` from its byte `at`, for at most [`MAX_SQE_BYTES`].
fn sqe(fd: RawFd, op: &mut Op<'_>, at: usize) -> squeue::Entry {
    let n = (op.len() - at).min(MAX_SQE_BYTES) as u32;
    match op {
        Op::Read { buf, offset } => opcode::Read::new(types::Fd(fd), buf[at..].as_mut_ptr(), n)
            .offset(*offset + at as u64)
            .build(),
        Op::Write { buf, offset } => opcode::Write::new(types::Fd(fd), buf[at..].as_ptr(), n)
            .offset(*offset + at as u64)
            .build(),
    }
}

/// Submits what [`submit`] pushed and waits until all `in_flight` SQEs have completed, recording
/// each completion in `progress`. Aborts if waiting fails for good rather than return with SQEs
/// in flight.
fn reap(ring: &mut IoUring, in_flight: usize, ops: &[Op<'_>], progress: &mut Progress) {
    let mut reaped = 0usize;
    while reaped < in_flight {
        match ring.submit_and_wait(in_flight - reaped) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(_) => abort_in_flight("waiting for io_uring completions failed"),
        }
        for cqe in ring.completion() {
            reaped += 1;
            let i = cqe.user_data() as usize;
            progress.complete(i, &ops[i], cqe.result());
        }
    }
}

/// Called only while SQEs may be in flight: returning would hand their buffers back to the caller
/// while the kernel may still write into them.
fn abort_in_flight(what: &str) -> ! {
    tracing::error!(what, "io_uring failed with operations in flight; aborting");
    eprintln!("qcow2 direct I/O: {what} with operations in flight; aborting");
    std::process::abort()
}
