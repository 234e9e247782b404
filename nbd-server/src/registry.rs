//! Named exports, their live figures, and which connections are attached to each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::{Export, ExportStats};

/// One export as the server holds it.
pub(crate) struct ExportEntry {
    pub name: String,
    pub export: Arc<dyn Export>,
    /// Cancelled when a removal's grace period is over (or the server's): connections close and
    /// their unfinished requests are answered with ESHUTDOWN.
    pub hard_stop: CancellationToken,
    /// Holds one token per attached connection, so removal can wait for them.
    pub connections: TaskTracker,
    state: Mutex<AttachState>,
    connections_now: AtomicUsize,
    total_connections: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    /// Nanoseconds since the epoch; 0 = never.
    last_activity_ns: AtomicU64,
}

struct AttachState {
    removed: bool,
    /// Connections that have not yet started to leave (decides who flushes last).
    active: usize,
}

/// Why a connection could not attach to an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachError {
    Removed,
    TooManyConnections,
}

impl ExportEntry {
    pub fn new(name: &str, export: Arc<dyn Export>, hard_stop: CancellationToken) -> Self {
        Self {
            name: name.to_owned(),
            export,
            hard_stop,
            connections: TaskTracker::new(),
            state: Mutex::new(AttachState {
                removed: false,
                active: 0,
            }),
            connections_now: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            last_activity_ns: AtomicU64::new(0),
        }
    }

    /// Attaches one more connection, unless the export is being removed or full.
    pub fn attach(self: &Arc<Self>, max: usize) -> Result<Attachment, AttachError> {
        let mut st = self.state.lock();
        if st.removed {
            return Err(AttachError::Removed);
        }
        if st.active >= max {
            return Err(AttachError::TooManyConnections);
        }
        st.active += 1;
        let token = self.connections.token();
        drop(st);
        self.connections_now.fetch_add(1, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Ok(Attachment {
            entry: Arc::clone(self),
            token: Some(token),
            left: false,
        })
    }

    /// Refuses attachments from now on; returns false if already marked.
    pub fn mark_removed(&self) -> bool {
        let mut st = self.state.lock();
        !std::mem::replace(&mut st.removed, true)
    }

    pub fn touch(&self) {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            .max(1);
        self.last_activity_ns.store(ns, Ordering::Relaxed);
    }

    pub fn add_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ExportStats {
        let ns = self.last_activity_ns.load(Ordering::Relaxed);
        ExportStats {
            connections: self.connections_now.load(Ordering::Relaxed),
            total_connections: self.total_connections.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            last_activity: (ns != 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns)),
        }
    }
}

/// A connection's claim on an export. Counted in the stats until dropped.
pub(crate) struct Attachment {
    entry: Arc<ExportEntry>,
    token: Option<TaskTrackerToken>,
    left: bool,
}

impl Attachment {
    pub fn entry(&self) -> &Arc<ExportEntry> {
        &self.entry
    }

    /// Starts leaving; true if this was the last active connection (which then flushes).
    pub fn leave(&mut self) -> bool {
        if self.left {
            return false;
        }
        self.left = true;
        let mut st = self.entry.state.lock();
        st.active -= 1;
        st.active == 0
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.leave();
        self.entry.connections_now.fetch_sub(1, Ordering::Relaxed);
        self.entry.touch();
        drop(self.token.take());
    }
}

/// The exports of one server, by name.
#[derive(Default)]
pub(crate) struct Registry {
    map: RwLock<HashMap<String, Arc<ExportEntry>>>,
}

impl Registry {
    /// Inserts unless the name is taken.
    pub fn insert(&self, entry: Arc<ExportEntry>) -> bool {
        let mut map = self.map.write();
        if map.contains_key(&entry.name) {
            return false;
        }
        map.insert(entry.name.clone(), entry);
        true
    }

    pub fn get(&self, name: &str) -> Option<Arc<ExportEntry>> {
        self.map.read().get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ExportEntry>> {
        self.map.write().remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn all(&self) -> Vec<Arc<ExportEntry>> {
        self.map.read().values().cloned().collect()
    }
}
