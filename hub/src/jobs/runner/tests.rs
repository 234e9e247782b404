//! The runner against a real catalog in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{JobContext, Jobs, Outcome};
use crate::catalog::{Catalog, Job, JobFilter, JobStatus};
use crate::error::Error;
use crate::jobs::JobKind;

const KIND: JobKind = JobKind::ProtectionFlow;

fn jobs() -> (tempfile::TempDir, Jobs) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
    (dir, Jobs::new(Arc::new(catalog)))
}

/// Waits until the job has ended, as recorded.
async fn ended(jobs: &Jobs, id: &str) -> Job {
    for _ in 0..500 {
        let job = jobs.get(id).unwrap();
        if job.status.is_ended() && !jobs.is_live(id) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not end");
}

async fn until_running(jobs: &Jobs, id: &str) {
    for _ in 0..500 {
        if jobs.get(id).unwrap().status == JobStatus::Running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not start");
}

/// Work that runs until it is cancelled, then says so.
async fn until_cancelled(ctx: JobContext) -> Outcome {
    ctx.cancelled().await;
    Outcome::Failed {
        error: "stopped".into(),
        result: None,
    }
}

#[tokio::test]
async fn a_job_runs_and_its_end_is_recorded_with_its_log() {
    let (_dir, jobs) = jobs();
    let job = jobs
        .submit(KIND, "flow-1", |ctx| async move {
            ctx.info("working");
            ctx.progress(5, 10);
            Outcome::Succeeded(json!({"backups": 3}))
        })
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let done = ended(&jobs, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"backups": 3})));
    assert_eq!((done.bytes_done, done.bytes_total), (5, 10));
    assert!(done.started_at.is_some() && done.ended_at >= done.started_at);
    assert_eq!(
        (done.kind.as_str(), done.target.as_str()),
        ("protection_flow", "flow-1")
    );
    let log: Vec<String> = jobs
        .log(&job.id)
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(log, ["started", "working", "ended succeeded"]);
}

#[tokio::test]
async fn warnings_failures_and_panics_end_as_such() {
    let (_dir, jobs) = jobs();
    let warn = jobs
        .submit(KIND, "t", |_| async {
            Outcome::Warning {
                result: json!({"failed": 1}),
                message: "1 of 3 backups failed".into(),
            }
        })
        .unwrap();
    let fail = jobs
        .submit(KIND, "t", |_| async {
            Outcome::Failed {
                error: "SNA unreachable".into(),
                result: None,
            }
        })
        .unwrap();
    let panic = jobs.submit(KIND, "t", |_| async { panic!("bug") }).unwrap();
    let warn = ended(&jobs, &warn.id).await;
    assert_eq!(warn.status, JobStatus::Warning);
    assert_eq!(warn.error.as_deref(), Some("1 of 3 backups failed"));
    let fail = ended(&jobs, &fail.id).await;
    assert_eq!(
        (fail.status, fail.error.as_deref()),
        (JobStatus::Failed, Some("SNA unreachable"))
    );
    let panic = ended(&jobs, &panic.id).await;
    assert_eq!(panic.status, JobStatus::Failed);
    assert_eq!(panic.error.as_deref(), Some("internal: the job panicked"));
}

#[tokio::test]
async fn a_running_job_is_cancelled_and_an_ended_one_cannot_be() {
    let (_dir, jobs) = jobs();
    let job = jobs.submit(KIND, "t", until_cancelled).unwrap();
    until_running(&jobs, &job.id).await;
    jobs.cancel(&job.id).unwrap();
    let done = ended(&jobs, &job.id).await;
    assert_eq!(done.status, JobStatus::Cancelled);
    assert_eq!(done.error.as_deref(), Some("cancelled: stopped"));
    assert!(matches!(jobs.cancel(&job.id), Err(Error::Conflict(_))));
    assert!(matches!(jobs.cancel("job-none"), Err(Error::NotFound(_))));
}

/// The mechanism behind every kind's limit, with a limit of 1: the second job waits `queued`
/// and, cancelled there, never runs.
#[tokio::test]
async fn past_the_kinds_limit_jobs_queue_and_a_queued_one_cancels_without_running() {
    let (_dir, jobs) = jobs();
    let slots = jobs.inner.limits[&KIND].clone();
    let held = slots
        .clone()
        .acquire_many_owned(KIND.concurrency() as u32 - 1)
        .await
        .unwrap();
    let first = jobs.submit(KIND, "t", until_cancelled).unwrap();
    until_running(&jobs, &first.id).await;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let second = jobs
        .submit(KIND, "t", move |_| async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Outcome::Succeeded(json!({}))
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(jobs.get(&second.id).unwrap().status, JobStatus::Queued);
    jobs.cancel(&second.id).unwrap();
    let second = ended(&jobs, &second.id).await;
    assert_eq!(second.status, JobStatus::Cancelled);
    assert!(second.started_at.is_none());
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    jobs.cancel(&first.id).unwrap();
    ended(&jobs, &first.id).await;
    drop(held);
}

#[tokio::test]
async fn the_log_keeps_the_newest_lines_and_cuts_long_ones() {
    let (_dir, jobs) = jobs();
    let job = jobs
        .submit(KIND, "t", |ctx| async move {
            for i in 0..600 {
                ctx.info(format!("line {i}"));
            }
            ctx.warn("é".repeat(5000));
            Outcome::Succeeded(json!({}))
        })
        .unwrap();
    ended(&jobs, &job.id).await;
    let log = jobs.log(&job.id).unwrap();
    assert_eq!(log.len() as u64, crate::catalog::jobs::MAX_LOG_LINES);
    assert_eq!(log.last().unwrap().message, "ended succeeded");
    let long = &log[log.len() - 2];
    assert_eq!((long.level.as_str(), long.message.len()), ("warn", 2048));
    assert!(log.iter().all(|l| l.message != "line 0"));
}

#[tokio::test]
async fn a_restart_fails_what_was_running_and_shutdown_what_will_not_stop() {
    let (dir, jobs) = jobs();
    let stubborn = jobs
        .submit(KIND, "t", |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Outcome::Succeeded(json!({}))
        })
        .unwrap();
    until_running(&jobs, &stubborn.id).await;
    jobs.shutdown(Duration::from_millis(100)).await;
    let after = jobs.get(&stubborn.id).unwrap();
    assert_eq!(
        (after.status, after.error.as_deref()),
        (JobStatus::Failed, Some("hub stopped"))
    );

    // A job the catalog says is running, from a process that died.
    let catalog = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
    let mut orphan = after.clone();
    orphan.id = "job-orphan".into();
    orphan.status = JobStatus::Running;
    catalog.insert_job(&orphan).unwrap();
    let again = Jobs::new(Arc::new(catalog));
    let failed = again.recover().unwrap();
    assert_eq!(
        failed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["job-orphan"]
    );
    let orphan = again.get("job-orphan").unwrap();
    assert_eq!(
        (orphan.status, orphan.error.as_deref()),
        (JobStatus::Failed, Some("hub stopped"))
    );
    let (all, total) = again.list(&JobFilter::default()).unwrap();
    assert_eq!((all.len(), total), (2, 2));
    let filter = JobFilter {
        status: Some(JobStatus::Running),
        ..JobFilter::default()
    };
    assert_eq!(again.list(&filter).unwrap().1, 0);
}
