//! A few threads shared by every open image for work that runs beside the requests: today the
//! preallocation ahead of the allocation frontier (`refcount::Refcounts::reserve_ahead`).
//!
//! A thread per reservation made the process's thread count grow with the number of images being
//! written at once (a hub writing 200 disks). Reservations are best effort and short (an
//! `fallocate` of up to 256 MiB), so two threads serve them all; one that waits in the queue only
//! means that writes grow the file themselves for a while.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

/// Threads serving every image's background work.
const THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The outcome of a job handed to [`spawn`], once it has run.
pub(crate) struct Pending<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    /// The answer, and whether the job is over (answered or panicked).
    state: Mutex<(Option<T>, bool)>,
    done: Condvar,
}

impl<T> Pending<T> {
    pub fn is_finished(&self) -> bool {
        self.slot.state.lock().1
    }

    /// Waits for the job; `None` if it panicked.
    pub fn join(self) -> Option<T> {
        let mut state = self.slot.state.lock();
        while !state.1 {
            self.slot.done.wait(&mut state);
        }
        state.0.take()
    }
}

/// The job's end of a [`Pending`]: dropped when the job has answered or panicked, and wakes the
/// waiter either way.
struct Answer<T>(Arc<Slot<T>>);

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        self.0.state.lock().1 = true;
        self.0.done.notify_all();
    }
}

/// Runs `f` on one of the shared threads; `None` when no thread could ever be started.
pub(crate) fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<Pending<T>> {
    let tx = pool()?;
    let slot = Arc::new(Slot {
        state: Mutex::new((None, false)),
        done: Condvar::new(),
    });
    let answer = Answer(Arc::clone(&slot));
    let job: Job = Box::new(move || {
        let out = f();
        answer.0.state.lock().0 = Some(out);
        drop(answer);
    });
    tx.lock().send(job).ok()?;
    Some(Pending { slot })
}

/// The queue of the shared threads, started at first use.
fn pool() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static POOL: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..THREADS {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("qcow2-bg-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        let Ok(job) = job else { return };
                        // A panicking job drops its slot unanswered: `join` sees `None`.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then(|| Mutex::new(tx))
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_answer_and_a_panicking_one_answers_none() {
        let pending: Vec<_> = (0..10u32).map(|i| spawn(move || i * i).unwrap()).collect();
        let got: Vec<_> = pending.into_iter().map(Pending::join).collect();
        assert_eq!(got, (0..10u32).map(|i| Some(i * i)).collect::<Vec<_>>());
        let boom = spawn(|| -> u32 { panic!("background job panicked") }).unwrap();
        assert_eq!(boom.join(), None);
        // The threads survive it.
        assert_eq!(spawn(|| 5).unwrap().join(), Some(5));
    }
}
