//! Chain merge: a backup X with exactly one child Y leaves the chain without copying the disk.
//! Y's own clusters (data and zero clusters) are committed into X's file, which then holds Y's
//! point in time; X's file is then renamed over Y's path, so whatever names Y's path as its
//! backing file (Y's children) reads the same bytes, and no header is rewritten. The cost follows
//! the data Y holds, not the disk's size: Y's L2 tables are walked (block status of Y alone, its
//! backing never opened), and guest-contiguous runs go in reads and writes of up to [`CHUNK`],
//! `WORKERS` of them in flight.
//!
//! Crash safety (a `kill -9` at any moment): until the rename, Y's file is only read, and only
//! guest ranges Y itself maps (data or zero) are written into X, so reading Y through Y -> X -> ...
//! gives the same bytes throughout: every byte X changes is shadowed by Y. X's metadata stays
//! consistent by the image's own write ordering (data -> refblocks -> refcount table -> L2 -> L1,
//! see `meta`): a kill leaves leaked clusters at worst. X is closed (everything durable) before
//! the rename; the rename is atomic and the directory is synced after it. So the recovery rule is:
//! X's file still there -> run the merge again (committing the same clusters again is harmless);
//! X's file gone -> the merge is done.
//!
//! The caller guarantees that Y is X's only child: X's other children would read Y's changes.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::chain;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{AlignedBuf, FileStorage, LockMode, StorageIo, open_regular};
use crate::{ExtentKind, Image, OpenOptions};

/// Largest single read of Y and write into X.
pub const CHUNK: usize = 4 << 20;
/// Chunks in flight at once, each read then written by its own thread: one at a time, the
/// commit waited on each read and each write in turn (0.5-1.1x `qemu-img commit`, which lets
/// the page cache absorb its writes).
const WORKERS: usize = 4;
/// Guest bytes whose block status is asked at once (bounds the extent list's memory).
const WINDOW: u64 = 1 << 30;

/// Told (bytes done, bytes to do) after every chunk; bytes are data plus zeroed bytes.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options for [`merge_into_child`] and [`commit_to_backing`].
#[derive(Clone, Default)]
pub struct MergeOptions {
    /// The backing file (X) and its whole chain must lie inside this directory (symlinks
    /// resolved), else [`ErrorKind::Refused`].
    pub backing_dir: Option<PathBuf>,
    /// No file involved may be a symlink ([`ErrorKind::Refused`]); see [`OpenOptions::no_symlinks`].
    pub no_symlinks: bool,
    pub storage_io: StorageIo,
    /// When set, the child's backing file must be this file ([`ErrorKind::InvalidArgument`]).
    pub expect_parent: Option<PathBuf>,
    pub progress: Option<Progress>,
    /// Checked between chunks: once set the commit stops with [`ErrorKind::Cancelled`], X
    /// consistent and Y untouched (a later merge starts over).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for MergeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOptions")
            .field("backing_dir", &self.backing_dir)
            .field("no_symlinks", &self.no_symlinks)
            .field("storage_io", &self.storage_io)
            .field("expect_parent", &self.expect_parent)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel.is_some())
            .finish()
    }
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// The backing file committed into (canonical: symlinks and `..` resolved).
    pub parent: PathBuf,
    pub child: PathBuf,
    /// Guest bytes of the child's data copied into the parent.
    pub bytes_written: u64,
    /// Guest bytes the child stores as zeros, made to read as zeros in the parent.
    pub zeroed_bytes: u64,
    /// Extents of the child committed (data and zero).
    pub extents: u64,
}

/// Commits `child`'s own clusters into its backing file, then renames the backing file over
/// `child`. On success the backing file's path is gone and `child`'s path holds the merged image.
pub fn merge_into_child(child: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let report = commit_to_backing(child, opts)?;
    replace_child_with_backing(&report.parent, child)?;
    Ok(report)
}

/// Commits `child`'s own clusters (data and zero clusters) into its backing file, which then
/// reads as `child` does; `child` is not changed. Idempotent. Refused when the backing file is
/// locked by another opener ([`ErrorKind::Busy`]), is not a qcow2 file, has another virtual size
/// ([`ErrorKind::Unsupported`]: grow it first with `qemu-img resize`, which changes nothing `child`
/// reads), lies on another filesystem, or names its own backing file relative to its directory
/// in a way that would mean another file at `child`'s path.
pub fn commit_to_backing(child: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let pair = Pair::open(child, opts)?;
    let mut report = MergeReport {
        parent: pair.parent_path.clone(),
        child: child.to_path_buf(),
        bytes_written: 0,
        zeroed_bytes: 0,
        extents: 0,
    };
    let committed = pair.commit(opts, &mut report);
    let Pair {
        child: y,
        parent: x,
        ..
    } = pair;
    drop(y);
    match committed {
        // Everything durable before the caller may rename.
        Ok(()) => x.close()?,
        // Dropping writes back what is consistent; the error is the one worth reporting.
        Err(e) => {
            drop(x);
            return Err(e);
        }
    }
    tracing::info!(
        child = %child.display(),
        parent = %report.parent.display(),
        bytes = report.bytes_written,
        zeroed = report.zeroed_bytes,
        "committed into the backing file"
    );
    Ok(report)
}

/// Renames `parent` (the committed backing file) over `child` and syncs the directories. Refused
/// when `child`'s backing file is not `parent` ([`ErrorKind::InvalidArgument`]) or either is
/// in use by another opener ([`ErrorKind::Busy`]); a missing `parent` is an [`ErrorKind::Io`]
/// error (by the recovery rule, the merge was already done).
pub fn replace_child_with_backing(parent: &Path, child: &Path) -> Result<()> {
    // First, so a second call after a finished merge says the parent is gone.
    let from = canonical(parent)?;
    // Held across the rename: nobody writes the child, nor opens the parent, meanwhile.
    let y = Image::open(
        child,
        &OpenOptions {
            storage_io: StorageIo::Buffered,
            ..OpenOptions::default()
        },
    )?;
    let named = backing_of(&y, child)?;
    if canonical(&named)? != from {
        return Err(Error::invalid_argument(format!(
            "{} has backing file {}, not {}",
            child.display(),
            named.display(),
            parent.display()
        )));
    }
    let x = FileStorage::new(open_regular(&from, true, false)?);
    x.lock(LockMode::Write)
        .map_err(|e| Error::lock(e, parent))?;
    x.file()
        .sync_data()
        .map_err(|e| Error::io(e, format!("syncing {}", parent.display())))?;
    let to = canonical(child)?;
    std::fs::rename(&from, &to).map_err(|e| {
        Error::io(
            e,
            format!("renaming {} over {}", from.display(), to.display()),
        )
    })?;
    sync_dir(&to)?;
    if from.parent() != to.parent() {
        sync_dir(&from)?;
    }
    drop(x);
    // The child's old file is unlinked now, and its last close frees its blocks: 130-170 ms for
    // 400 MiB on ext4 mounted with `discard` (benches/RESULTS.md, "Chain merge"). Nothing waits
    // for that, so it happens off the caller's path.
    std::thread::spawn(move || drop(y));
    tracing::info!(parent = %from.display(), child = %to.display(), "backing file renamed over the child");
    Ok(())
}

/// The child, open read-only without its backing chain (so it takes no lock on the parent), and
/// the parent, open writable with its own chain.
struct Pair {
    child: Image,
    parent: Image,
    parent_path: PathBuf,
}

impl Pair {
    fn open(child: &Path, opts: &MergeOptions) -> Result<Pair> {
        let y = Image::open(
            child,
            &OpenOptions {
                no_symlinks: opts.no_symlinks,
                storage_io: opts.storage_io,
                ..OpenOptions::default()
            },
        )?;
        let named = backing_of(&y, child)?;
        let parent_path = check_parent(child, &named, opts)?;
        // By the name the child gives, so `no_symlinks` judges that name.
        let x = Image::open(
            &named,
            &OpenOptions {
                writable: true,
                open_backing: true,
                backing_dir: opts.backing_dir.clone(),
                no_symlinks: opts.no_symlinks,
                storage_io: opts.storage_io,
                ..OpenOptions::default()
            },
        )?;
        if x.virtual_size() != y.virtual_size() {
            return Err(Error::unsupported(format!(
                "{} is {} bytes, its backing file {} is {} bytes: merging images of different \
                 sizes is not supported (grow the backing file first: qemu-img resize)",
                child.display(),
                y.virtual_size(),
                parent_path.display(),
                x.virtual_size()
            )));
        }
        check_backing_name_moves(&x, &parent_path, child)?;
        Ok(Pair {
            child: y,
            parent: x,
            parent_path,
        })
    }

    /// Walks the child's own extents window by window and commits each data or zero extent.
    fn commit(&self, opts: &MergeOptions, report: &mut MergeReport) -> Result<()> {
        let size = self.child.virtual_size();
        let work = Work {
            opts,
            done: Mutex::new(0),
            total: self.own_bytes()?,
        };
        let mut start = 0;
        while start < size {
            let len = WINDOW.min(size - start);
            let jobs = self.plan(start, len, report)?;
            self.run(&jobs, &work)?;
            start += len;
        }
        Ok(())
    }

    /// The jobs for the child's own extents in `[start, start + len)`: data cut into pieces of
    /// at most [`CHUNK`], zero extents whole (they change metadata only).
    fn plan(&self, start: u64, len: u64, report: &mut MergeReport) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        for e in self.child.block_status(start, len)? {
            let end = e.offset + e.length;
            match e.kind {
                ExtentKind::Data => {
                    let mut pos = e.offset;
                    while pos < end {
                        let n = (end - pos).min(CHUNK as u64);
                        jobs.push(Job::Copy {
                            offset: pos,
                            len: n,
                        });
                        pos += n;
                    }
                    report.bytes_written += e.length;
                }
                ExtentKind::Zero => {
                    jobs.push(Job::Zero {
                        offset: e.offset,
                        len: e.length,
                    });
                    report.zeroed_bytes += e.length;
                }
                ExtentKind::Unallocated => continue,
            }
            report.extents += 1;
        }
        Ok(jobs)
    }

    /// Carries the jobs out on [`WORKERS`] threads, each with its own buffer; the first error
    /// (or a cancel) stops them all.
    fn run(&self, jobs: &[Job], work: &Work) -> Result<()> {
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let align = self.child.io_alignment().max(self.parent.io_alignment());
        std::thread::scope(|s| {
            for _ in 0..WORKERS.min(jobs.len()) {
                s.spawn(|| {
                    // Zeroed once; `read_at` overwrites every byte it is given.
                    let mut buf = AlignedBuf::zeroed(CHUNK, align);
                    while failed.lock().is_none() {
                        let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let done = work.check_cancel().and_then(|()| self.job(job, &mut buf));
                        match done {
                            Ok(bytes) => work.advance(bytes),
                            Err(e) => {
                                failed.lock().get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        failed.into_inner().map_or(Ok(()), Err)
    }

    /// One job; returns the guest bytes it covered.
    fn job(&self, job: &Job, buf: &mut [u8]) -> Result<u64> {
        match *job {
            Job::Copy { offset, len } => {
                let buf = &mut buf[..len as usize];
                self.child.read_at(offset, buf)?;
                self.parent.write_at(offset, buf)?;
                Ok(len)
            }
            Job::Zero { offset, len } => {
                // Unmapped where the parent allows it: space freed, reads as zeros.
                self.parent.write_zeroes(offset, len, true)?;
                Ok(len)
            }
        }
    }

    /// Guest bytes the child maps itself (data or zero): the work to do, for progress.
    fn own_bytes(&self) -> Result<u64> {
        let size = self.child.virtual_size();
        let mut total = 0;
        let mut start = 0;
        while start < size {
            let len = WINDOW.min(size - start);
            total += self
                .child
                .block_status(start, len)?
                .iter()
                .filter(|e| e.kind != ExtentKind::Unallocated)
                .map(|e| e.length)
                .sum::<u64>();
            start += len;
        }
        Ok(total)
    }
}

/// A piece of the commit, planned from the child's extents.
enum Job {
    /// Child data copied into the parent.
    Copy { offset: u64, len: u64 },
    /// Made to read as zeros in the parent.
    Zero { offset: u64, len: u64 },
}

/// The commit's progress, and the caller's hooks to hear of it and to stop it.
struct Work<'a> {
    opts: &'a MergeOptions,
    /// Under a lock so the caller hears a count that only grows, from whichever thread.
    done: Mutex<u64>,
    total: u64,
}

impl Work<'_> {
    fn check_cancel(&self) -> Result<()> {
        match &self.opts.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::new(
                ErrorKind::Cancelled,
                "merge cancelled; the child is unchanged, run the merge again to finish it",
            )),
            _ => Ok(()),
        }
    }

    fn advance(&self, bytes: u64) {
        let mut done = self.done.lock();
        *done += bytes;
        if let Some(progress) = &self.opts.progress {
            progress(*done, self.total);
        }
    }
}

/// The backing file `image` (opened from `path`) names, resolved against its directory; it must
/// be a qcow2 image.
fn backing_of(image: &Image, path: &Path) -> Result<PathBuf> {
    let header = image.header();
    let Some(name) = &header.backing_file else {
        return Err(Error::invalid_argument(format!(
            "{} has no backing file: there is nothing to merge it into",
            path.display()
        )));
    };
    if let Some(format) = header.backing_format.as_deref()
        && format != "qcow2"
    {
        return Err(Error::unsupported(format!(
            "{}'s backing file {name:?} is {format}, not qcow2",
            path.display()
        )));
    }
    Ok(chain::resolve_backing(path, name))
}

/// Refusals before the parent is opened for writing: the parent the caller expects, inside
/// `backing_dir`, not the child itself, on the child's filesystem (rename cannot cross one).
/// Returns the parent's canonical path.
fn check_parent(child: &Path, parent: &Path, opts: &MergeOptions) -> Result<PathBuf> {
    if let Some(dir) = &opts.backing_dir {
        chain::check_within(parent, dir)?;
    }
    let parent_canon = canonical(parent)?;
    if let Some(expected) = &opts.expect_parent
        && canonical(expected)? != parent_canon
    {
        return Err(Error::invalid_argument(format!(
            "{} has backing file {}, not {}",
            child.display(),
            parent.display(),
            expected.display()
        )));
    }
    let child_canon = canonical(child)?;
    if child_canon == parent_canon {
        return Err(Error::corrupt(format!(
            "{} names itself as its backing file",
            child.display()
        )));
    }
    let dev = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| Error::io(e, format!("stat {}", p.display())))
    };
    let child_dir = child_canon.parent().unwrap_or(Path::new("/"));
    if dev(&parent_canon)? != dev(child_dir)? {
        return Err(Error::unsupported(format!(
            "{} and {} are on different filesystems: the backing file cannot be renamed over the child",
            parent.display(),
            child.display()
        )));
    }
    Ok(parent_canon)
}

/// A backing name the parent stores relative to its directory must name the same file from the
/// child's directory, where the parent's file will live after the rename.
fn check_backing_name_moves(parent: &Image, parent_path: &Path, child: &Path) -> Result<()> {
    let Some(name) = &parent.header().backing_file else {
        return Ok(());
    };
    if Path::new(name).is_absolute() {
        return Ok(());
    }
    let now = canonical(&chain::resolve_backing(parent_path, name))?;
    let after = chain::resolve_backing(child, name).canonicalize().ok();
    if after.as_ref() != Some(&now) {
        return Err(Error::unsupported(format!(
            "{} names its backing file {name:?} relative to its directory; at {} that name \
             would not be {}",
            parent_path.display(),
            child.display(),
            now.display()
        )));
    }
    Ok(())
}

fn canonical(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .map_err(|e| Error::io(e, format!("resolving {}", path.display())))
}

/// Makes a rename in the directory holding `path` durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(e, format!("syncing directory {}", dir.display())))
}
