//! The one I/O engine every export's image calls run on: a pool of threads sized by the machine,
//! shared by all exports, with a lane per export.
//!
//! Why threads at all: `qcow2` is synchronous, and `tokio::task::spawn_blocking` per request cost
//! a pool lookup and two wake-ups per request (20 K context switches per GiB, the pool's condvar
//! the top Rust symbol in the profile). Here a request costs one queue push and at most one
//! wake-up of a thread that is already waiting, and the call runs on that thread: with direct I/O
//! it submits to the thread's own io_uring ring (`qcow2::storage::uring`), so a request reaches
//! the disk with no further hop or copy.
//!
//! Why one pool: a pool per export made the thread count grow with the disks (1,607 threads with
//! 100 exports open). Threads and rings are now at most [`IoEngine::max_threads`], set by the
//! cores and the queue depth a disk wants, whatever the number of exports.
//!
//! Sharing: each export has a lane with a cap on the calls it runs at once (its queue depth: 16
//! for direct I/O, where each call waits on the device; 4 buffered, where a call is CPU and the
//! page cache). Threads take work from the lanes round-robin, one call per lane per turn, so an
//! export with a deep queue does not push the others' calls back, and since every lane's cap is
//! at most half the pool, a stalled image (a hung device) holds at most its cap of threads while
//! the rest serve everyone else.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads per core: enough to keep a disk's queue full while some threads wait on an image's
/// metadata lock or a flush (a waiting thread costs no CPU).
const THREADS_PER_CORE: usize = 4;
/// At least this many threads whatever the cores: twice the 16 in flight at which fio reached
/// the disk's speed with 2 MiB direct writes (issue 11), so one export's full depth leaves as
/// much again to the others.
const MIN_THREADS: usize = 32;
/// At most this many, however many cores.
const MAX_THREADS: usize = 128;

/// The pool every [`IoLane`] runs on; threads start on demand and stay.
pub struct IoEngine {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    max_threads: usize,
}

#[derive(Default)]
struct State {
    lanes: HashMap<u64, Lane>,
    /// Lanes with queued calls and room under their cap, each at most once, in turn order.
    ready: VecDeque<u64>,
    next_lane: u64,
    threads: usize,
    /// Threads waiting for work that no submitter has claimed yet.
    idle: usize,
    /// Wake-ups handed to idle threads and not yet taken by one.
    claimed: usize,
}

struct Lane {
    jobs: VecDeque<Job>,
    running: usize,
    cap: usize,
    in_ready: bool,
    /// The lane's handle is gone: it goes once its last queued call has run.
    closed: bool,
}

impl Lane {
    fn wants_turn(&self) -> bool {
        !self.in_ready && !self.jobs.is_empty() && self.running < self.cap
    }
}

impl State {
    /// Puts lane `id` in the turn order if it has work it may start.
    fn offer(&mut self, id: u64) -> bool {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return false;
        };
        if !lane.wants_turn() {
            return false;
        }
        lane.in_ready = true;
        self.ready.push_back(id);
        true
    }

    /// The next call to run, from the lane whose turn it is.
    fn take(&mut self) -> Option<(u64, Job)> {
        let id = self.ready.pop_front()?;
        let lane = self.lanes.get_mut(&id).expect("ready lanes exist");
        lane.in_ready = false;
        let job = lane.jobs.pop_front().expect("ready lanes have work");
        lane.running += 1;
        self.offer(id);
        Some((id, job))
    }

    /// Someone must take the work just made ready: an idle thread is woken, or (returned
    /// `true`) the caller starts a new one, counted here.
    fn wake_one(&mut self, shared: &Shared) -> bool {
        if self.idle > 0 {
            self.idle -= 1;
            self.claimed += 1;
            shared.wake.notify_one();
            false
        } else if self.threads < shared.max_threads {
            self.threads += 1;
            true
        } else {
            false
        }
    }

    fn finished(&mut self, id: u64) {
        let lane = self.lanes.get_mut(&id).expect("running lanes exist");
        lane.running -= 1;
        if lane.closed && lane.running == 0 && lane.jobs.is_empty() {
            self.lanes.remove(&id);
        } else {
            self.offer(id);
        }
    }
}

impl IoEngine {
    /// The process's engine, sized for this machine.
    pub fn global() -> &'static IoEngine {
        static ENGINE: OnceLock<IoEngine> = OnceLock::new();
        ENGINE.get_or_init(|| IoEngine::new(Self::threads_for(crate::sys::threads::cores())))
    }

    /// Threads for a machine of `cores` cores.
    pub fn threads_for(cores: usize) -> usize {
        (cores * THREADS_PER_CORE).clamp(MIN_THREADS, MAX_THREADS)
    }

    pub fn new(max_threads: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                max_threads: max_threads.max(2),
            }),
        }
    }

    /// Most threads (and io_uring rings) the engine will run.
    pub fn max_threads(&self) -> usize {
        self.shared.max_threads
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.shared.state.lock().threads
    }

    /// A lane running at most `depth` calls at once, capped at half the pool.
    pub fn lane(&self, depth: usize) -> IoLane {
        let cap = depth.clamp(1, (self.shared.max_threads / 2).max(1));
        let mut st = self.shared.state.lock();
        let id = st.next_lane;
        st.next_lane += 1;
        st.lanes.insert(
            id,
            Lane {
                jobs: VecDeque::new(),
                running: 0,
                cap,
                in_ready: false,
                closed: false,
            },
        );
        IoLane {
            shared: Arc::clone(&self.shared),
            id,
        }
    }
}

/// One export's share of the engine. Dropping it lets the calls already queued run, then the
/// lane goes.
pub struct IoLane {
    shared: Arc<Shared>,
    id: u64,
}

/// Why a call did not run.
#[derive(Debug)]
pub struct EngineGone;

impl IoLane {
    /// Queues `op` now, to run on an engine thread; the future gives its result. Where no
    /// engine thread can be started at all, `op` runs on tokio's blocking pool instead.
    pub fn run<T, F>(&self, op: F) -> impl Future<Output = Result<T, EngineGone>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done_tx.send(op());
        });
        let fallback = self.submit(job).err();
        async move {
            if let Some(job) = fallback {
                tokio::task::spawn_blocking(job)
                    .await
                    .map_err(|_| EngineGone)?;
            }
            // A panicking call drops its sender: the caller gets an error, the thread lives on.
            done_rx.await.map_err(|_| EngineGone)
        }
    }

    /// Queues `job`; gives it back when the engine has no thread and cannot start one.
    fn submit(&self, job: Job) -> Result<(), Job> {
        let spawn = {
            let mut st = self.shared.state.lock();
            st.lanes
                .get_mut(&self.id)
                .expect("a lane lives while its handle does")
                .jobs
                .push_back(job);
            // Over its cap or already in turn: a thread takes it when the lane's turn comes
            // (threads that find more work waiting wake the next one).
            st.offer(self.id) && st.wake_one(&self.shared)
        };
        if spawn && !start_thread(&self.shared) {
            let mut st = self.shared.state.lock();
            if st.threads == 0 {
                // Nothing will ever run this lane's queue: hand one call back to the caller
                // (calls are independent, so any of the lane's will do).
                let lane = st.lanes.get_mut(&self.id).expect("lane exists");
                let job = lane.jobs.pop_back().expect("just queued");
                if lane.jobs.is_empty() && lane.in_ready {
                    lane.in_ready = false;
                    st.ready.retain(|l| *l != self.id);
                }
                return Err(job);
            }
        }
        Ok(())
    }
}

impl Drop for IoLane {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        let lane = st.lanes.get_mut(&self.id).expect("lane exists");
        if lane.running == 0 && lane.jobs.is_empty() {
            st.lanes.remove(&self.id);
        } else {
            lane.closed = true;
        }
    }
}

/// Starts a thread already counted in `threads`; on failure uncounts it.
fn start_thread(shared: &Arc<Shared>) -> bool {
    let n = shared.state.lock().threads;
    let worker_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("image-io-{n}"))
        .spawn(move || worker(&worker_shared));
    match spawned {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start an image I/O thread");
            shared.state.lock().threads -= 1;
            false
        }
    }
}

fn worker(shared: &Arc<Shared>) {
    let mut st = shared.state.lock();
    loop {
        let Some((lane, job)) = st.take() else {
            st.idle += 1;
            loop {
                shared.wake.wait(&mut st);
                if st.claimed > 0 {
                    st.claimed -= 1;
                    break;
                }
            }
            continue;
        };
        // More runnable work than this thread: pass it on before running ours.
        let spawn = !st.ready.is_empty() && st.wake_one(shared);
        drop(st);
        if spawn {
            start_thread(shared);
        }
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
        st = shared.state.lock();
        st.finished(lane);
    }
}

#[cfg(test)]
mod tests;
