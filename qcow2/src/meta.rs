//! Cached metadata of one image: the L1 table, the L2 table cache, the reference counts and
//! allocator ([`crate::refcount`]), and the write-back that puts metadata on disk in the safe order.
//!
//! Invariants (what makes a `kill -9` at any moment leave a consistent file):
//! - The refblock cache never holds a count below the references that exist on disk or in the L2
//!   cache: increments happen before a reference is created, decrements (`pending_free`) only after
//!   the L2/L1 writes removing the reference are durable. So refblocks may be written at any time.
//! - An L2 entry enters the cache only after the data it points to was written (not synced).
//! - [`Meta::writeback`] writes refblocks, syncs (data and refblocks durable), writes refcount-table
//!   entries, syncs, writes L2 tables, syncs, writes L1 entries, syncs.
//! - Freed clusters are never reused while the image is open (allocation only bumps `frontier`).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::TableCache;
use crate::error::{Error, Result};
use crate::format;
use crate::refcount::Refcounts;
use crate::storage::Storage;
use crate::units::{GuestCluster, HostOffset};

/// Fixed facts about an image, derived from its header.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub cluster_size: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// u64 words per L2 entry: 1, or 2 with extended L2.
    pub l2_words: usize,
    pub refcount_order: u32,
    /// Refcounts per refblock.
    pub rb_entries: u64,
    pub virtual_size: u64,
}

impl Geometry {
    pub fn from_header(h: &format::Header) -> Self {
        let cs = h.cluster_size();
        let l2_words = if h.extended_l2() { 2 } else { 1 };
        Self {
            cluster_bits: h.cluster_bits,
            cluster_size: cs,
            l2_entries: cs / (8 * l2_words as u64),
            l2_words,
            refcount_order: h.refcount_order,
            rb_entries: (cs * 8) >> h.refcount_order,
            virtual_size: h.size,
        }
    }

    pub fn l1_index(&self, guest_cluster: GuestCluster) -> usize {
        (guest_cluster.0 / self.l2_entries) as usize
    }

    pub fn l2_index(&self, guest_cluster: GuestCluster) -> usize {
        (guest_cluster.0 % self.l2_entries) as usize
    }
}

/// The image file as metadata sees it: writes that mark the image failed when they fail, syncs,
/// and the file's known length (shared with the data path).
pub(crate) struct MetaFile {
    pub st: Arc<dyn Storage>,
    /// Known length of the file; reads of metadata beyond it are corruption.
    pub file_len: Arc<AtomicU64>,
    /// Set when a metadata write or sync failed: after a failed fdatasync the kernel may have
    /// dropped dirty pages, so nothing more is written or claimed durable.
    failed: RefCell<Option<Error>>,
}

pub struct Meta {
    pub geo: Geometry,
    io: MetaFile,
    pub l1: Vec<u64>,
    l1_offset: u64,
    /// Dirty 512-byte sectors of the L1 table.
    l1_dirty: BTreeSet<u64>,
    /// L2 tables by L1 index, as big-endian-decoded words.
    l2: TableCache<Box<[u64]>>,
    refs: Refcounts,
    /// Guest clusters being freshly allocated by a write whose data is in flight; other
    /// requests touching them wait (so no cluster is ever allocated twice).
    pub inflight: HashSet<u64>,
}

/// Dirty L2 tables that trigger a write-back (the main client never flushes a whole disk).
const MAX_DIRTY_L2: usize = 256;
const MAX_DIRTY_RB: usize = 64;
/// Released clusters waiting for their unlink to be durable (bounds that list's memory).
const MAX_PENDING_FREE: usize = 1 << 20;

impl Meta {
    /// Loads L1 and the refcount table. `header` has been validated against `file_len`.
    pub fn load(
        st: Arc<dyn Storage>,
        h: &format::Header,
        file_len: u64,
        l2_cache_bytes: usize,
        writable: bool,
    ) -> Result<Self> {
        let geo = Geometry::from_header(h);
        let cs = geo.cluster_size;
        let mut raw = vec![0u8; h.l1_size as usize * 8];
        st.read_at(&mut raw, h.l1_table_offset)
            .map_err(|e| Error::io(e, format!("reading L1 table at {}", h.l1_table_offset)))?;
        let l1 = format::decode_table(&raw);
        let io = MetaFile {
            st,
            file_len: Arc::new(AtomicU64::new(file_len)),
            failed: RefCell::new(None),
        };
        let refs = Refcounts::load(&io, h, geo, l2_cache_bytes / 8, writable)?;
        Ok(Meta {
            geo,
            io,
            l1,
            l1_offset: h.l1_table_offset,
            l1_dirty: BTreeSet::new(),
            l2: TableCache::new((l2_cache_bytes / cs as usize).max(16)),
            refs,
            inflight: HashSet::new(),
        })
    }

    /// The file's known length, shared with the data path.
    pub fn shared_file_len(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.io.file_len)
    }

    /// First cluster never handed out.
    pub fn frontier(&self) -> u64 {
        self.refs.frontier
    }

    /// Length of the file when opened.
    pub fn len_at_open(&self) -> u64 {
        self.refs.len_at_open
    }

    /// Hands out `n` contiguous fresh clusters (refcount 1).
    pub fn alloc(&mut self, n: u64) -> Result<HostOffset> {
        self.refs.alloc(&self.io, n)
    }

    /// See [`Refcounts::reserve_ahead`].
    pub fn reserve_ahead(&mut self) {
        self.refs.reserve_ahead(&self.io);
    }

    /// See [`Refcounts::finish_reservation`].
    pub fn finish_reservation(&mut self, wait: bool) {
        self.refs.finish_reservation(&self.io, wait);
    }

    /// Host bytes of clusters with a nonzero refcount.
    pub fn allocated_bytes(&mut self) -> Result<u64> {
        self.refs.allocated_bytes(&self.io)
    }

    /// Queues the clusters an old entry held, to be released after the next L2/L1 write-back.
    pub fn release(&mut self, old: format::L2Entry) {
        self.refs.release(old);
    }

    pub fn file_len(&self) -> u64 {
        self.io.len()
    }

    // ---- L2 tables ----

    /// The L2 table offset for L1 index `idx`, if any.
    pub fn l2_offset(&self, idx: usize) -> Result<Option<u64>> {
        let raw = *self.l1.get(idx).ok_or_else(|| {
            Error::corrupt(format!("guest offset beyond the L1 table (index {idx})"))
        })?;
        format::decode_l1(raw, idx as u64)
    }

    /// Whether the L1 entry says the L2 table is ours alone (COPIED).
    pub fn l2_owned(&self, idx: usize) -> bool {
        self.l1.get(idx).is_some_and(|r| r & format::COPIED != 0)
    }

    /// Loads the L2 table of L1 index `idx` into the cache. Returns false if there is none.
    fn load_l2(&mut self, idx: usize) -> Result<bool> {
        if self.l2.get(idx as u64).is_some() {
            return Ok(true);
        }
        let Some(off) = self.l2_offset(idx)? else {
            return Ok(false);
        };
        let cs = self.geo.cluster_size;
        if off % cs != 0 || off.checked_add(cs).is_none_or(|end| end > self.file_len()) {
            return Err(Error::corrupt(format!(
                "L2 table at offset {off} (L1 index {idx}) is unaligned or past the end of the file"
            )));
        }
        if off < cs {
            return Err(Error::corrupt(format!(
                "L2 table of L1 index {idx} overlaps the header"
            )));
        }
        self.make_room_l2()?;
        let mut raw = vec![0u8; cs as usize];
        self.io
            .st
            .read_at(&mut raw, off)
            .map_err(|e| Error::io(e, format!("reading L2 table at {off}")))?;
        let words = format::decode_table(&raw).into_boxed_slice();
        self.l2.insert(idx as u64, words, false);
        Ok(true)
    }

    /// A full cache of dirty tables is written back (in the safe order) before one is evicted.
    fn make_room_l2(&mut self) -> Result<()> {
        if !self.l2.is_full() {
            return Ok(());
        }
        if self.l2.all_dirty() {
            self.writeback()?;
        }
        self.l2.evict_clean();
        Ok(())
    }

    /// The raw words of the entry for `guest_cluster` (second word 0 for standard L2), or None
    /// if the cluster has no L2 table.
    pub fn l2_entry(&mut self, guest_cluster: GuestCluster) -> Result<Option<(u64, u64)>> {
        let idx = self.geo.l1_index(guest_cluster);
        let w = self.geo.l2_words;
        let i = self.geo.l2_index(guest_cluster) * w;
        // Hot path (the table is cached): one lookup.
        if let Some(words) = self.l2.get(idx as u64) {
            return Ok(Some((words[i], if w == 2 { words[i + 1] } else { 0 })));
        }
        if !self.load_l2(idx)? {
            return Ok(None);
        }
        let words = self.l2.peek(idx as u64).expect("loaded above");
        Ok(Some((words[i], if w == 2 { words[i + 1] } else { 0 })))
    }

    /// Makes sure an L2 table exists for `guest_cluster` (allocating a zeroed one).
    pub fn ensure_l2(&mut self, guest_cluster: GuestCluster) -> Result<()> {
        let idx = self.geo.l1_index(guest_cluster);
        if self.load_l2(idx)? {
            if !self.l2_owned(idx) {
                return Err(Error::corrupt(format!(
                    "L2 table of L1 index {idx} is shared (no COPIED bit); snapshots are not supported"
                )));
            }
            return Ok(());
        }
        let host = self.alloc(1)?;
        self.make_room_l2()?;
        let n = self.geo.l2_entries as usize * self.geo.l2_words;
        self.l2
            .insert(idx as u64, vec![0u64; n].into_boxed_slice(), true);
        self.l1[idx] = host.0 | format::COPIED;
        self.l1_dirty.insert(idx as u64 * 8 / 512);
        Ok(())
    }

    /// Sets a standard entry; the table must be loaded (by `ensure_l2` or `l2_entry` in the same
    /// critical section).
    pub fn set_l2(&mut self, guest_cluster: GuestCluster, raw: u64) {
        let idx = self.geo.l1_index(guest_cluster);
        let i = self.geo.l2_index(guest_cluster) * self.geo.l2_words;
        let words = self
            .l2
            .get_dirty(idx as u64)
            .expect("L2 table loaded by the caller");
        words[i] = raw;
    }

    // ---- write-back ----

    /// No more changes from now on; the first cause is kept and named by every refusal.
    pub fn mark_failed(&self, cause: &Error) {
        self.io.mark_failed(cause);
    }

    /// Puts all dirty metadata on disk in the safe order, syncing between steps, then applies the
    /// releases whose unlinking is now durable. Also makes all completed data writes durable.
    pub fn writeback(&mut self) -> Result<()> {
        let io = &self.io;
        io.check_failed()?;
        self.refs.write_blocks(io)?;
        io.sync()?;
        self.refs.write_table(io)?;
        if self.l2.dirty_count() > 0 {
            for idx in self.l2.dirty_keys() {
                let off = self.l1[idx as usize] & format::OFFSET_MASK;
                let words = self.l2.peek(idx).expect("dirty tables are cached");
                io.write(&format::encode_table(words), off, "L2 table")?;
                self.l2.mark_clean(idx);
            }
            io.sync()?;
        }
        if !self.l1_dirty.is_empty() {
            let sectors = std::mem::take(&mut self.l1_dirty);
            io.write_sectors(&self.l1, self.l1_offset, &sectors, "L1 table")?;
            io.sync()?;
        }
        self.refs.apply_releases(io)
    }

    /// Writes back when too much metadata is dirty.
    pub fn maybe_writeback(&mut self) -> Result<()> {
        if self.l2.dirty_count() > MAX_DIRTY_L2.min(self.l2.cap() / 2)
            || self.refs.pending_releases() > MAX_PENDING_FREE
        {
            self.writeback()?;
        } else if self.refs.dirty_blocks() > MAX_DIRTY_RB {
            // Refblocks never count less than the references, so they may go out alone, unsynced.
            self.io.check_failed()?;
            self.refs.write_blocks(&self.io)?;
        }
        Ok(())
    }

    pub fn has_pending(&self) -> bool {
        self.l2.dirty_count() > 0 || !self.l1_dirty.is_empty() || self.refs.has_pending()
    }
}

impl MetaFile {
    pub fn len(&self) -> u64 {
        self.file_len.load(Ordering::Relaxed)
    }

    pub fn bump_len(&self, end: u64) {
        self.file_len.fetch_max(end, Ordering::Relaxed);
    }

    pub fn write(&self, buf: &[u8], off: u64, what: &str) -> Result<()> {
        self.st.write_at(buf, off).map_err(|e| {
            let err = Error::io(e, format!("writing {what} at {off}"));
            self.mark_failed(&err);
            err
        })?;
        self.bump_len(off + buf.len() as u64);
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.st.flush().map_err(|e| {
            let err = Error::io(e, "fdatasync");
            self.mark_failed(&err);
            err
        })
    }

    fn mark_failed(&self, cause: &Error) {
        let mut failed = self.failed.borrow_mut();
        if failed.is_none() {
            *failed = Some(Error::new(cause.kind, &cause.message));
        }
    }

    pub fn check_failed(&self) -> Result<()> {
        if let Some(cause) = &*self.failed.borrow() {
            return Err(Error::new(
                cause.kind,
                format!(
                    "the image accepts no more changes since an earlier metadata write or sync failed: {}",
                    cause.message
                ),
            ));
        }
        Ok(())
    }

    /// Writes the 512-byte sectors `sectors` of `table` (big-endian words) at `base`.
    pub fn write_sectors(
        &self,
        table: &[u64],
        base: u64,
        sectors: &BTreeSet<u64>,
        what: &str,
    ) -> Result<()> {
        for &s in sectors {
            let first = (s * 64) as usize;
            let last = (first + 64).min(table.len());
            self.write(
                &format::encode_table(&table[first..last]),
                base + s * 512,
                what,
            )?;
        }
        Ok(())
    }
}
