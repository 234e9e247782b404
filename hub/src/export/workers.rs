//! A few threads per export that run image calls, fed by a channel.
//!
//! `tokio::task::spawn_blocking` per request cost a pool lookup and two wake-ups per request
//! (20 K context switches per GiB, the pool's condvar the top Rust symbol in the profile). Here a
//! request costs one send and one wake-up of a thread that is already waiting. The image is
//! `&self`-concurrent (data writes happen outside its metadata lock), so a handful of threads keep
//! that many writes in flight.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use qcow2::Image;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads running image calls for one export; they exit once this is dropped (closing the
/// channel) and the jobs already queued have run.
pub(crate) struct IoWorkers {
    /// `None` when no thread could be started.
    tx: Option<mpsc::Sender<Job>>,
}

/// Why a job did not run.
#[derive(Debug)]
pub(crate) struct WorkersGone;

impl IoWorkers {
    /// Starts `threads` workers (at least one). Falls back to fewer if the OS refuses threads;
    /// with none at all every job runs on tokio's blocking pool instead.
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("image-io-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job: one waiter
                        // blocks in `recv`, the others on the mutex.
                        let job = rx.lock().recv();
                        match job {
                            // A panicking call drops its reply sender: the caller gets an
                            // error and the thread lives on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start an image I/O thread"),
            }
        }
        Self {
            tx: (started > 0).then_some(tx),
        }
    }

    /// Runs `op` on the image on a worker thread. The worker drops its handle on the image before
    /// the result is delivered, so once every caller has its answer the workers hold no image.
    pub async fn run<T, F>(&self, image: &Arc<Image>, op: F) -> Result<T, WorkersGone>
    where
        T: Send + 'static,
        F: FnOnce(&Image) -> T + Send + 'static,
    {
        let image = Arc::clone(image);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let r = op(&image);
            drop(image);
            let _ = done_tx.send(r);
        });
        let sent = match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            // No worker thread could be started: run where tokio would.
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|_| WorkersGone)?;
        }
        done_rx.await.map_err(|_| WorkersGone)
    }
}
