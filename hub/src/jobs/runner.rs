//! Queueing, running, cancelling and recording jobs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::kind::JobKind;
use crate::catalog::{Catalog, Job, JobEnd, JobFilter, JobLogLine, JobStatus};
use crate::error::{Error, Result};

/// A log line longer than this is cut (the log is for people, and bounded).
const MAX_LINE_BYTES: usize = 2048;
/// Progress reaches the catalog at most this often while a job runs (always at its end); the API
/// reads live figures from memory in between.
const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// How the work ended, as it tells it. A job whose cancel was requested and that did not
/// succeed is recorded `cancelled`.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    /// Done, but not all of it: the operator should read the message (a partial result).
    Warning {
        result: serde_json::Value,
        message: String,
    },
    Failed {
        error: String,
        result: Option<serde_json::Value>,
    },
}

/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<Catalog>,
    /// Jobs queued or running in this process.
    live: Mutex<HashMap<String, Arc<Live>>>,
    limits: HashMap<JobKind, Arc<Semaphore>>,
    tasks: TaskTracker,
    /// Set when the hub stops: the cancels that follow are the stop's, not an operator's.
    stopping: Arc<AtomicBool>,
}

struct Live {
    cancel: CancellationToken,
    done: AtomicU64,
    total: AtomicU64,
    next_seq: AtomicU64,
    persisted: Mutex<Instant>,
}

/// What a job's work sees of its job.
#[derive(Clone)]
pub struct JobContext {
    id: String,
    live: Arc<Live>,
    catalog: Arc<Catalog>,
    stopping: Arc<AtomicBool>,
}

impl JobContext {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn info(&self, message: impl AsRef<str>) {
        self.log("info", message.as_ref());
    }

    pub fn warn(&self, message: impl AsRef<str>) {
        self.log("warn", message.as_ref());
    }

    pub fn error(&self, message: impl AsRef<str>) {
        self.log("error", message.as_ref());
    }

    fn log(&self, level: &str, message: &str) {
        let message = truncate(message, MAX_LINE_BYTES);
        tracing::info!(job_id = %self.id, level, message, "job");
        let seq = self.live.next_seq.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.catalog.append_job_log(&self.id, seq, level, message) {
            tracing::warn!(job_id = %self.id, %err, "job log line not recorded");
        }
    }

    /// Bytes done of bytes to do; kept in memory, written to the catalog now and then.
    pub fn progress(&self, done: u64, total: u64) {
        self.live.done.store(done, Ordering::Relaxed);
        self.live.total.store(total, Ordering::Relaxed);
        let due = {
            let mut last = self.live.persisted.lock();
            let due = last.elapsed() >= PERSIST_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            if let Err(err) = self.catalog.job_progress(&self.id, done, total) {
                tracing::warn!(job_id = %self.id, %err, "job progress not recorded");
            }
        }
    }

    /// Resolves when the job's cancel is requested (or the hub stops).
    pub async fn cancelled(&self) {
        self.live.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.live.cancel.is_cancelled()
    }

    /// Whether the cancel is the hub stopping (work should leave what it started to the stop,
    /// which records it), not an operator's.
    pub fn hub_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Jobs {
    pub fn new(catalog: Arc<Catalog>) -> Jobs {
        let limits = JobKind::ALL
            .into_iter()
            .map(|k| (k, Arc::new(Semaphore::new(k.concurrency()))))
            .collect();
        Jobs {
            inner: Arc::new(Inner {
                catalog,
                live: Mutex::new(HashMap::new()),
                limits,
                tasks: TaskTracker::new(),
                stopping: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// At start: the jobs a previous process left queued or running are failed ("hub stopped")
    /// and returned, so the rooms that made them can settle what hangs on them. (No kind resumes
    /// yet: see [`JobKind::resumes`].)
    pub fn recover(&self) -> Result<Vec<Job>> {
        let catalog = &self.inner.catalog;
        let mut failed = Vec::new();
        for job in catalog.unfinished_jobs()? {
            let resumes = JobKind::parse(&job.kind).is_some_and(JobKind::resumes);
            debug_assert!(!resumes, "a resumable kind needs its resume here");
            let end = JobEnd {
                status: JobStatus::Failed,
                error: Some("hub stopped"),
                result: job.result.as_ref(),
                bytes_done: job.bytes_done,
                bytes_total: job.bytes_total,
            };
            catalog.job_ended(&job.id, OffsetDateTime::now_utc(), &end)?;
            tracing::warn!(job_id = %job.id, kind = %job.kind, "unfinished job failed: hub stopped");
            failed.push(job);
        }
        Ok(failed)
    }

    /// Record a job `queued` and start its work once its kind has a free slot. The work gets a
    /// [`JobContext`] and should watch [`JobContext::cancelled`].
    pub fn submit<F, Fut>(&self, kind: JobKind, target: &str, work: F) -> Result<Job>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let job = Job {
            id: format!("job-{}", uuid::Uuid::new_v4()),
            kind: kind.as_str().to_owned(),
            target: target.to_owned(),
            status: JobStatus::Queued,
            bytes_done: 0,
            bytes_total: 0,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            ended_at: None,
            error: None,
            result: None,
        };
        self.inner.catalog.insert_job(&job)?;
        let live = Arc::new(Live {
            cancel: CancellationToken::new(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            persisted: Mutex::new(Instant::now()),
        });
        self.inner.live.lock().insert(job.id.clone(), live.clone());
        let ctx = JobContext {
            id: job.id.clone(),
            live,
            catalog: self.inner.catalog.clone(),
            stopping: self.inner.stopping.clone(),
        };
        let slot = self.inner.limits[&kind].clone();
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.run(ctx, slot, work).await });
        Ok(job)
    }

    /// The job, with the live progress of one still running.
    pub fn get(&self, id: &str) -> Result<Job> {
        let job = self
            .inner
            .catalog
            .job(id)?
            .ok_or_else(|| Error::NotFound(format!("no job {id}")))?;
        Ok(self.inner.with_live(job))
    }

    /// Waits for the job to end and says how; `None` when `waiter`'s own job is cancelled first
    /// (or the job cannot be read).
    pub async fn wait(&self, id: &str, waiter: &JobContext) -> Option<JobStatus> {
        loop {
            match self.inner.catalog.job(id) {
                Ok(Some(job)) if job.status.is_ended() => return Some(job.status),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = waiter.cancelled() => return None,
            }
        }
    }

    pub fn list(&self, filter: &JobFilter) -> Result<(Vec<Job>, u64)> {
        let (jobs, total) = self.inner.catalog.jobs(filter)?;
        Ok((
            jobs.into_iter().map(|j| self.inner.with_live(j)).collect(),
            total,
        ))
    }

    pub fn log(&self, id: &str) -> Result<Vec<JobLogLine>> {
        self.get(id)?;
        self.inner.catalog.job_log(id)
    }

    /// Ask a queued or running job to stop: a queued one ends `cancelled` at once, a running one
    /// when its work has stopped. An ended job is a conflict.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.get(id)?;
        let live = self.inner.live.lock().get(id).cloned();
        match live {
            Some(live) => {
                tracing::info!(job_id = %id, "job cancel requested");
                live.cancel.cancel();
                Ok(job)
            }
            None => Err(Error::Conflict(format!(
                "job {id} already ended ({})",
                job.status.as_str()
            ))),
        }
    }

    /// Whether the job is queued or running in this process.
    pub fn is_live(&self, id: &str) -> bool {
        self.inner.live.lock().contains_key(id)
    }

    /// Cancel every job and give them `grace` to stop; what is still running then is recorded
    /// failed ("hub stopped"), as the next start would.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let live: Vec<_> = self.inner.live.lock().values().cloned().collect();
        for job in &live {
            job.cancel.cancel();
        }
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown are marked failed");
        }
        let left: Vec<_> = self.inner.live.lock().drain().collect();
        for (id, live) in left {
            self.inner
                .record_end(&id, &live, JobStatus::Failed, Some("hub stopped"), None);
        }
    }
}

impl Inner {
    async fn run<F, Fut>(self: Arc<Self>, ctx: JobContext, slot: Arc<Semaphore>, work: F)
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let permit = tokio::select! {
            biased;
            _ = ctx.live.cancel.cancelled() => None,
            permit = slot.acquire_owned() => permit.ok(),
        };
        let Some(_permit) = permit else {
            ctx.info("cancelled while queued");
            self.finish(&ctx, JobStatus::Cancelled, Some("cancelled"), None);
            return;
        };
        if let Err(err) = self.catalog.job_started(&ctx.id, OffsetDateTime::now_utc()) {
            tracing::warn!(job_id = %ctx.id, %err, "job start not recorded");
        }
        ctx.info("started");
        // Its own task, so a panic in the work ends the job failed instead of leaving it running.
        let outcome = match tokio::spawn(work(ctx.clone())).await {
            Ok(outcome) => outcome,
            Err(err) => Outcome::Failed {
                error: if err.is_panic() {
                    "internal: the job panicked".to_owned()
                } else {
                    "internal: the job was aborted".to_owned()
                },
                result: None,
            },
        };
        let cancelled = ctx.is_cancelled();
        let (status, error, result) = match outcome {
            Outcome::Succeeded(result) => (JobStatus::Succeeded, None, Some(result)),
            Outcome::Warning { result, .. } if cancelled => (
                JobStatus::Cancelled,
                Some("cancelled".to_owned()),
                Some(result),
            ),
            Outcome::Warning { result, message } => {
                (JobStatus::Warning, Some(message), Some(result))
            }
            Outcome::Failed { error, result } if cancelled => (
                JobStatus::Cancelled,
                Some(format!("cancelled: {error}")),
                result,
            ),
            Outcome::Failed { error, result } => (JobStatus::Failed, Some(error), result),
        };
        ctx.info(format!(
            "ended {}{}",
            status.as_str(),
            error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        self.finish(&ctx, status, error.as_deref(), result.as_ref());
    }

    fn finish(
        &self,
        ctx: &JobContext,
        status: JobStatus,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) {
        // Out of the live set first: after a shutdown gave up on it, it is recorded already.
        if self.live.lock().remove(&ctx.id).is_some() {
            self.record_end(&ctx.id, &ctx.live, status, error, result);
        }
    }

    fn record_end(
        &self,
        id: &str,
        live: &Live,
        status: JobStatus,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) {
        let end = JobEnd {
            status,
            error,
            result,
            bytes_done: live.done.load(Ordering::Relaxed),
            bytes_total: live.total.load(Ordering::Relaxed),
        };
        if let Err(err) = self.catalog.job_ended(id, OffsetDateTime::now_utc(), &end) {
            // Left `running` in the catalog: the next start records it failed.
            tracing::error!(job_id = %id, %err, "job end not recorded");
        }
    }

    fn with_live(&self, mut job: Job) -> Job {
        if let Some(live) = self.live.lock().get(&job.id) {
            job.bytes_done = live.done.load(Ordering::Relaxed);
            job.bytes_total = live.total.load(Ordering::Relaxed);
        }
        job
    }
}

#[cfg(test)]
mod tests;
