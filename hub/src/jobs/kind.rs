//! The kinds of job and how many of each may run at once.

/// What a job does. The string is the job's `type` in the API and the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// One run of a protection flow: a backup of each VM of its target.
    ProtectionFlow,
    /// Retention applied to one VM's backups in one repository: removals and chain merges.
    Prune,
    /// A verify of backups' chains: digests and structure (see `hub::verify`).
    Verify,
    /// A backup's chain copied into an S3 repository (see `hub::copy`).
    Copy,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::ProtectionFlow,
        JobKind::Prune,
        JobKind::Verify,
        JobKind::Copy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ProtectionFlow => "protection_flow",
            JobKind::Prune => "prune",
            JobKind::Verify => "verify",
            JobKind::Copy => "copy",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Jobs of this kind running at once; the rest wait, `queued`. A flow run mostly waits on the
    /// SNA and its backups (those have their own limit), so many may run side by side.
    pub fn concurrency(self) -> usize {
        match self {
            JobKind::ProtectionFlow => 32,
            // A merge reads and writes an increment's worth of data: two at once keep the
            // disk busy without starving the backups beside them.
            JobKind::Prune => 2,
            // A verify reads whole chains at disk speed: one at a time leaves the disk to the
            // backups and merges beside it.
            JobKind::Verify => 1,
            // A copy reads local disks and waits on the network: two chains at once keep a link
            // busy (each sends parts in parallel) without taking the disk from the backups.
            JobKind::Copy => 2,
        }
    }

    /// Whether a job of this kind interrupted by a stop is started again at the next start
    /// (otherwise it is failed, "hub stopped"). None can yet: a flow run's backups were failed by
    /// the stop too, and the next scheduled run takes them again.
    pub fn resumes(self) -> bool {
        match self {
            JobKind::ProtectionFlow => false,
            // An interrupted merge is finished at start (see prune::merge); the rest of the
            // plan waits for the next prune.
            JobKind::Prune => false,
            // The monitor queues a verify again for what is still due (see verify::due).
            JobKind::Verify => false,
            // The copy rows are failed at start too; copying again checks what reached the
            // bucket and sends only the rest.
            JobKind::Copy => false,
        }
    }
}
