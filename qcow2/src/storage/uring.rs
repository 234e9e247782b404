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

use io_uring::{IoUring, opcode, types};

/// Entries of each thread's ring: more than any one call puts in flight.
const RING_ENTRIES: u32 = 8;

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
            *slot = Some(IoUring::new(RING_ENTRIES)?);
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
        let mut done = vec![0usize; ops.len()];
        // Ops that need (another) SQE: not finished, not failed, not at the end of the file.
        let mut want: Vec<bool> = ops.iter().map(|op| op.len() > 0).collect();
        let mut error: Option<io::Error> = None;
        loop {
            let mut in_flight = 0usize;
            for (i, op) in ops.iter_mut().enumerate() {
                if !want[i] || error.is_some() {
                    continue;
                }
                let at = done[i];
                let n = (op.len() - at).min(MAX_SQE_BYTES) as u32;
                let entry = match op {
                    Op::Read { buf, offset } => {
                        opcode::Read::new(types::Fd(fd), buf[at..].as_mut_ptr(), n)
                            .offset(*offset + at as u64)
                            .build()
                    }
                    Op::Write { buf, offset } => {
                        opcode::Write::new(types::Fd(fd), buf[at..].as_ptr(), n)
                            .offset(*offset + at as u64)
                            .build()
                    }
                }
                .user_data(i as u64);
                // SAFETY: the SQE points into `ops[i]`'s buffer, which is borrowed (mutably for
                // reads) for the whole of `run`; `run` does not return before the completion of
                // this SQE has been reaped below (or the process aborts), so the buffer outlives
                // the kernel's use of it. The ring has room: at most `ops.len()` SQEs are pushed
                // per round and every earlier one was consumed by `submit_and_wait`.
                let pushed = unsafe { ring.submission().push(&entry) };
                if pushed.is_err() {
                    abort_in_flight("io_uring submission queue full");
                }
                want[i] = false;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
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
                    let res = cqe.result();
                    if res < 0 {
                        let e = io::Error::from_raw_os_error(-res);
                        if matches!(-res, libc::EINTR | libc::EAGAIN) {
                            want[i] = true;
                        } else if error.is_none() {
                            error = Some(e);
                        }
                        continue;
                    }
                    let n = res as usize;
                    done[i] += n;
                    match &ops[i] {
                        Op::Write { .. } if n == 0 => {
                            if error.is_none() {
                                error = Some(io::Error::from(io::ErrorKind::WriteZero));
                            }
                        }
                        // End of file: the read stops short.
                        Op::Read { .. } if n == 0 => {}
                        op => want[i] = done[i] < op.len(),
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    })
}

/// Called only while SQEs may be in flight: returning would hand their buffers back to the caller
/// while the kernel may still write into them.
fn abort_in_flight(what: &str) -> ! {
    tracing::error!(what, "io_uring failed with operations in flight; aborting");
    eprintln!("qcow2 direct I/O: {what} with operations in flight; aborting");
    std::process::abort()
}
