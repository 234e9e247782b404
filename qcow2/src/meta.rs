//! Cached metadata of one image: L1 table, L2 table cache, refcount table and refblock cache, the
//! cluster allocator, and the write-back that puts metadata on disk in the safe order.
//!
//! Invariants (what makes a `kill -9` at any moment leave a consistent file):
//! - The refblock cache never holds a count below the references that exist on disk or in the L2
//!   cache: increments happen before a reference is created, decrements (`pending_free`) only after
//!   the L2/L1 writes removing the reference are durable. So refblocks may be written at any time.
//! - An L2 entry enters the cache only after the data it points to was written (not synced).
//! - [`Meta::writeback`] writes refblocks, syncs (data and refblocks durable), writes refcount-table
//!   entries, syncs, writes L2 tables, syncs, writes L1 entries, syncs.
//! - Freed clusters are never reused while the image is open (allocation only bumps `frontier`).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::TableCache;
use crate::error::{Error, Result};
use crate::format::{self, MAX_REFTABLE_BYTES};
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

pub struct Meta {
    pub geo: Geometry,
    st: Arc<dyn Storage>,
    /// Known length of the file; reads of metadata beyond it are corruption.
    pub file_len: Arc<AtomicU64>,
    pub l1: Vec<u64>,
    l1_offset: u64,
    /// Dirty 512-byte sectors of the L1 table.
    l1_dirty: BTreeSet<u64>,
    /// L2 tables by L1 index, as big-endian-decoded words.
    l2: TableCache<Box<[u64]>>,
    reftable: Vec<u64>,
    reftable_offset: u64,
    reftable_dirty: BTreeSet<u64>,
    /// Refblocks by refcount-table index, as on disk.
    rb: TableCache<Box<[u8]>>,
    /// First cluster never handed out; everything from here on is free.
    pub frontier: u64,
    /// The file is reserved (fallocated) up to here.
    prealloc_end: u64,
    /// The reservation running on its own thread (at most one): the end it reserves up to, and
    /// the thread, which returns whether it succeeded.
    reserving: Option<(u64, std::thread::JoinHandle<bool>)>,
    /// Largest stretch reserved at once ([`Storage::reserve_step`]).
    reserve_step: u64,
    /// Reservations never reach past this: the file this image needs with every guest cluster
    /// allocated once (data, L2 tables, refblocks) on top of what it held when opened.
    usable_end: u64,
    /// Reservation failed once (e.g. ENOSPC): stop trying; writes grow the file themselves.
    prealloc_off: bool,
    /// Length of the file when opened; `close` trims only what we preallocated beyond it.
    pub len_at_open: u64,
    /// Host clusters whose reference went away in the cache; decremented after the next L2/L1
    /// write-back made that durable.
    pending_free: Vec<u64>,
    growing_reftable: bool,
    /// Guest clusters being freshly allocated by a write whose data is in flight; other
    /// requests touching them wait (so no cluster is ever allocated twice).
    pub inflight: HashSet<u64>,
    /// Set when a metadata write or sync failed: after a failed fdatasync the kernel may have
    /// dropped dirty pages, so nothing more is written or claimed durable.
    failed: std::cell::RefCell<Option<Error>>,
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
        let l1: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect();
        let rt_len = (u64::from(h.refcount_table_clusters) * cs) as usize;
        let mut raw = vec![0u8; rt_len];
        st.read_at(&mut raw, h.refcount_table_offset).map_err(|e| {
            Error::io(
                e,
                format!("reading refcount table at {}", h.refcount_table_offset),
            )
        })?;
        let reftable: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect();
        let table_bytes = cs as usize;
        let l2_cap = (l2_cache_bytes / table_bytes).max(16);
        let rb_cap = (l2_cache_bytes / 8 / table_bytes).max(16);
        let prealloc_off = !st.reserve_pays();
        let reserve_step = st.reserve_step();
        let mut m = Meta {
            geo,
            st,
            file_len: Arc::new(AtomicU64::new(file_len)),
            l1,
            l1_offset: h.l1_table_offset,
            l1_dirty: BTreeSet::new(),
            l2: TableCache::new(l2_cap),
            reftable,
            reftable_offset: h.refcount_table_offset,
            reftable_dirty: BTreeSet::new(),
            rb: TableCache::new(rb_cap),
            frontier: 0,
            prealloc_end: file_len,
            reserving: None,
            reserve_step,
            usable_end: 0,
            prealloc_off,
            len_at_open: file_len,
            pending_free: Vec::new(),
            growing_reftable: false,
            inflight: HashSet::new(),
            failed: std::cell::RefCell::new(None),
        };
        if writable {
            m.frontier = m.find_frontier()?;
            m.prealloc_end = file_len.max(m.frontier * cs);
            let data = geo.virtual_size.div_ceil(cs);
            let l2 = data.div_ceil(geo.l2_entries);
            let refblocks = (m.frontier + data + l2).div_ceil(geo.rb_entries) + 1;
            m.usable_end = (m.frontier + data + l2 + refblocks) * cs;
        }
        Ok(m)
    }

    pub fn file_len(&self) -> u64 {
        self.file_len.load(Ordering::Relaxed)
    }

    fn bump_file_len(&self, end: u64) {
        self.file_len.fetch_max(end, Ordering::Relaxed);
    }

    /// One past the highest cluster with a nonzero refcount.
    fn find_frontier(&mut self) -> Result<u64> {
        // A hostile table may point many entries at one block: scan each block once.
        let mut seen = HashSet::new();
        for idx in (0..self.reftable.len()).rev() {
            let raw = self.reftable[idx];
            if raw == 0 || !seen.insert(raw) {
                continue;
            }
            if let Some((last, _)) = self.scan_refblock(idx as u64)? {
                return Ok(idx as u64 * self.geo.rb_entries + last + 1);
            }
        }
        Err(Error::corrupt("refcount table counts no cluster at all"))
    }

    /// The highest nonzero entry of a refblock and how many are nonzero (None if all are 0).
    fn scan_refblock(&mut self, rbi: u64) -> Result<Option<(u64, u64)>> {
        if !self.load_rb(rbi)? {
            return Ok(None);
        }
        let order = self.geo.refcount_order;
        let data = self.rb.peek(rbi).expect("loaded above");
        // Whole bytes first: entries of 8+ bits are byte-aligned; smaller ones share bytes.
        let Some(last_byte) = data.iter().rposition(|&b| b != 0) else {
            return Ok(None);
        };
        let per_byte_bits = 8u64;
        let first_entry = (last_byte as u64 * per_byte_bits) >> order;
        let end_entry = (((last_byte as u64 + 1) * per_byte_bits) >> order).max(first_entry + 1);
        let last = (first_entry..end_entry)
            .rev()
            .find(|&i| format::refcount_get(data, order, i as usize) != 0)
            .unwrap_or(first_entry);
        let count = if order >= 3 {
            let w = 1usize << (order - 3);
            data.chunks_exact(w)
                .filter(|c| c.iter().any(|&b| b != 0))
                .count() as u64
        } else {
            (0..self.geo.rb_entries as usize)
                .filter(|&i| format::refcount_get(data, order, i) != 0)
                .count() as u64
        };
        Ok(Some((last, count)))
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
        self.st
            .read_at(&mut raw, off)
            .map_err(|e| Error::io(e, format!("reading L2 table at {off}")))?;
        let words: Box<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect();
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

    /// Queues the clusters an old entry held, to be released after the next L2/L1 write-back.
    pub fn release(&mut self, old: format::L2Entry) {
        match old {
            format::L2Entry::Normal { host, .. }
            | format::L2Entry::Zero {
                prealloc: Some(host),
            } => {
                self.pending_free.push(host >> self.geo.cluster_bits);
            }
            format::L2Entry::Compressed { host, sectors } => {
                let (a, b) = format::compressed_clusters(host, sectors, self.geo.cluster_bits);
                self.pending_free.extend(a..=b);
            }
            _ => {}
        }
    }

    // ---- refcounts ----

    fn load_rb(&mut self, rbi: u64) -> Result<bool> {
        if self.rb.get(rbi).is_some() {
            return Ok(true);
        }
        let Some(&raw) = self.reftable.get(rbi as usize) else {
            return Ok(false);
        };
        let Some(off) = format::decode_reftable(raw, rbi)? else {
            return Ok(false);
        };
        let cs = self.geo.cluster_size;
        if off % cs != 0 || off < cs || off.checked_add(cs).is_none_or(|e| e > self.file_len()) {
            return Err(Error::corrupt(format!(
                "refcount block at offset {off} (refcount table index {rbi}) is unaligned, \
                 overlaps the header or lies past the end of the file"
            )));
        }
        self.make_room_rb()?;
        let mut data = vec![0u8; cs as usize].into_boxed_slice();
        self.st
            .read_at(&mut data, off)
            .map_err(|e| Error::io(e, format!("reading refcount block at {off}")))?;
        self.rb.insert(rbi, data, false);
        Ok(true)
    }

    /// Refblocks may be written at any time (they never count less than the references), so a
    /// full cache of dirty ones is written out alone before one is evicted.
    fn make_room_rb(&mut self) -> Result<()> {
        if !self.rb.is_full() {
            return Ok(());
        }
        if self.rb.all_dirty() {
            self.write_refblocks()?;
        }
        self.rb.evict_clean();
        Ok(())
    }

    pub fn refcount(&mut self, cluster: u64) -> Result<u64> {
        let rbi = cluster / self.geo.rb_entries;
        if !self.load_rb(rbi)? {
            return Ok(0);
        }
        let i = (cluster % self.geo.rb_entries) as usize;
        let data = self.rb.peek(rbi).expect("loaded above");
        Ok(format::refcount_get(data, self.geo.refcount_order, i))
    }

    fn set_refcount(&mut self, cluster: u64, val: u64) -> Result<()> {
        let rbi = cluster / self.geo.rb_entries;
        if !self.load_rb(rbi)? {
            return Err(Error::corrupt(format!(
                "no refcount block covers cluster {cluster}"
            )));
        }
        let i = (cluster % self.geo.rb_entries) as usize;
        let order = self.geo.refcount_order;
        let data = self.rb.get_dirty(rbi).expect("loaded above");
        format::refcount_set(data, order, i, val);
        Ok(())
    }

    /// Hands out `n` contiguous fresh clusters (refcount 1) and returns the host offset.
    pub fn alloc(&mut self, n: u64) -> Result<HostOffset> {
        self.check_failed()?;
        let rbe = self.geo.rb_entries;
        loop {
            let start = self.frontier;
            let end = start + n;
            let missing = (start / rbe..=(end - 1) / rbe)
                .find(|&rbi| self.reftable.get(rbi as usize).is_none_or(|&r| r == 0));
            match missing {
                None => break,
                Some(rbi) if rbi as usize >= self.reftable.len() => self.grow_reftable(end)?,
                Some(rbi) => self.new_refblock(rbi)?,
            }
        }
        let start = self.frontier;
        let end = start + n;
        for c in start..end {
            self.set_refcount(c, 1)?;
        }
        self.frontier = end;
        Ok(HostOffset(start << self.geo.cluster_bits))
    }

    /// Places a new refblock for refcount-table index `rbi` at the frontier. The cluster there is
    /// covered either by this very block or by one that exists (`alloc` checks in order).
    fn new_refblock(&mut self, rbi: u64) -> Result<()> {
        let c = self.frontier;
        let cs = self.geo.cluster_size;
        self.make_room_rb()?;
        self.rb
            .insert(rbi, vec![0u8; cs as usize].into_boxed_slice(), true);
        self.reftable[rbi as usize] = c * cs;
        self.reftable_dirty.insert(rbi * 8 / 512);
        self.set_refcount(c, 1)?;
        self.frontier = c + 1;
        Ok(())
    }

    /// Moves the refcount table to a bigger one that covers `need_clusters` with room to spare:
    /// the new table (and refblocks it needs) are written and synced, then the header switches
    /// in one sector, then the old table is released.
    fn grow_reftable(&mut self, need_clusters: u64) -> Result<()> {
        if self.growing_reftable {
            return Err(Error::new(
                crate::ErrorKind::NoSpace,
                "refcount table cannot grow enough",
            ));
        }
        let cs = self.geo.cluster_size;
        let per_cluster = cs / 8;
        let old_len = self.reftable.len() as u64;
        let want = (need_clusters + 64 + need_clusters / 8).div_ceil(self.geo.rb_entries) + 1;
        let new_len = (old_len * 2).max(want).div_ceil(per_cluster) * per_cluster;
        if new_len * 8 > MAX_REFTABLE_BYTES {
            return Err(Error::new(
                crate::ErrorKind::NoSpace,
                format!("refcount table would exceed {MAX_REFTABLE_BYTES} bytes"),
            ));
        }
        let new_clusters = new_len / per_cluster;
        self.growing_reftable = true;
        self.reftable.resize(new_len as usize, 0);
        let res = self.alloc(new_clusters);
        self.growing_reftable = false;
        let HostOffset(host) = res?;
        self.write_refblocks()?;
        let mut raw = Vec::with_capacity(new_len as usize * 8);
        for e in &self.reftable {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.write(&raw, host, "refcount table")?;
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&host.to_be_bytes());
        hdr[8..].copy_from_slice(&(new_clusters as u32).to_be_bytes());
        // Offset and cluster count are adjacent: one write switches both.
        let at = format::hdr::REFCOUNT_TABLE_OFFSET as u64;
        self.write(&hdr, at, "header (refcount table pointer)")?;
        self.sync()?;
        let old = self.reftable_offset >> self.geo.cluster_bits;
        let old_clusters = old_len / per_cluster;
        self.reftable_offset = host;
        self.reftable_dirty.clear();
        for c in old..old + old_clusters {
            let rc = self.refcount(c)?;
            self.set_refcount(c, rc.saturating_sub(1))?;
        }
        tracing::debug!(host, new_clusters, "refcount table moved");
        Ok(())
    }

    /// Starts reserving (fallocate) the next stretch of the file on its own thread when the
    /// frontier came within half a step of the reserved end and no reservation is running, so
    /// no request waits for it (`fallocate` of 256 MiB takes ~55 ms on tmpfs). Steps grow with
    /// the image up to [`Storage::reserve_step`] and stop at what the image can use. Reserving
    /// is only an optimisation: data and metadata writes past the end grow the file themselves,
    /// and nothing references a cluster before its bytes were written.
    pub fn reserve_ahead(&mut self) {
        self.finish_reservation(false);
        if self.reserving.is_some() || self.prealloc_off {
            return;
        }
        let cs = self.geo.cluster_size;
        let need = self.frontier * cs;
        let step = (need / 4).clamp(4 << 20, self.reserve_step.max(4 << 20));
        if need + step / 2 <= self.prealloc_end {
            return;
        }
        let start = self.prealloc_end.max(need);
        let end = (need + step).min(self.usable_end).div_ceil(cs) * cs;
        if end <= start {
            return;
        }
        let st = self.st.clone();
        let spawned = std::thread::Builder::new()
            .name("qcow2-reserve".into())
            .spawn(move || match st.allocate(start, end - start) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(start, end, error = %e, "preallocation failed; not trying again");
                    false
                }
            });
        match spawned {
            Ok(handle) => self.reserving = Some((end, handle)),
            Err(_) => self.prealloc_off = true,
        }
    }

    /// Takes in the outcome of a finished reservation; with `wait`, waits for a running one
    /// (before the tail is trimmed at close: a late `fallocate` would grow the file again).
    pub fn finish_reservation(&mut self, wait: bool) {
        if !self
            .reserving
            .as_ref()
            .is_some_and(|(_, h)| wait || h.is_finished())
        {
            return;
        }
        let Some((end, handle)) = self.reserving.take() else {
            return;
        };
        if handle.join().unwrap_or(false) {
            self.prealloc_end = self.prealloc_end.max(end);
            self.bump_file_len(end);
        } else {
            self.prealloc_off = true;
        }
    }

    // ---- write-back ----

    fn write(&self, buf: &[u8], off: u64, what: &str) -> Result<()> {
        self.st.write_at(buf, off).map_err(|e| {
            let err = Error::io(e, format!("writing {what} at {off}"));
            self.mark_failed(&err);
            err
        })?;
        self.bump_file_len(off + buf.len() as u64);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.st.flush().map_err(|e| {
            let err = Error::io(e, "fdatasync");
            self.mark_failed(&err);
            err
        })
    }

    /// No more changes from now on; the first cause is kept and named by every refusal.
    pub fn mark_failed(&self, cause: &Error) {
        let mut failed = self.failed.borrow_mut();
        if failed.is_none() {
            *failed = Some(Error::new(cause.kind, &cause.message));
        }
    }

    fn check_failed(&self) -> Result<()> {
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

    fn write_refblocks(&mut self) -> Result<bool> {
        if self.rb.dirty_count() == 0 {
            return Ok(false);
        }
        for rbi in self.rb.dirty_keys() {
            let off = self.reftable[rbi as usize] & format::REFT_OFFSET_MASK;
            let data = self.rb.peek(rbi).expect("dirty tables are cached");
            self.write(data, off, "refcount block")?;
            self.rb.mark_clean(rbi);
        }
        Ok(true)
    }

    fn write_sectors(
        &self,
        table: &[u64],
        base: u64,
        sectors: &BTreeSet<u64>,
        what: &str,
    ) -> Result<()> {
        let mut buf = [0u8; 512];
        for &s in sectors {
            let first = (s * 64) as usize;
            let last = (first + 64).min(table.len());
            let n = (last - first) * 8;
            for (i, e) in table[first..last].iter().enumerate() {
                buf[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.write(&buf[..n], base + s * 512, what)?;
        }
        Ok(())
    }

    /// Puts all dirty metadata on disk in the safe order, syncing between steps, then applies the
    /// releases whose unlinking is now durable. Also makes all completed data writes durable.
    pub fn writeback(&mut self) -> Result<()> {
        self.check_failed()?;
        self.write_refblocks()?;
        self.sync()?;
        if !self.reftable_dirty.is_empty() {
            let sectors = std::mem::take(&mut self.reftable_dirty);
            self.write_sectors(
                &self.reftable,
                self.reftable_offset,
                &sectors,
                "refcount table",
            )?;
            self.sync()?;
        }
        if self.l2.dirty_count() > 0 {
            let mut buf = vec![0u8; self.geo.cluster_size as usize];
            for idx in self.l2.dirty_keys() {
                let off = self.l1[idx as usize] & format::OFFSET_MASK;
                let words = self.l2.peek(idx).expect("dirty tables are cached");
                for (i, w) in words.iter().enumerate() {
                    buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
                }
                self.write(&buf, off, "L2 table")?;
                self.l2.mark_clean(idx);
            }
            self.sync()?;
        }
        if !self.l1_dirty.is_empty() {
            let sectors = std::mem::take(&mut self.l1_dirty);
            self.write_sectors(&self.l1, self.l1_offset, &sectors, "L1 table")?;
            self.sync()?;
        }
        let frees = std::mem::take(&mut self.pending_free);
        for c in frees {
            let rc = self.refcount(c)?;
            if rc == 0 {
                tracing::warn!(
                    cluster = c,
                    "released a cluster whose refcount is already 0"
                );
                continue;
            }
            self.set_refcount(c, rc - 1)?;
        }
        Ok(())
    }

    /// Writes back when too much metadata is dirty.
    pub fn maybe_writeback(&mut self) -> Result<()> {
        if self.l2.dirty_count() > MAX_DIRTY_L2.min(self.l2.cap() / 2)
            || self.pending_free.len() > MAX_PENDING_FREE
        {
            self.writeback()?;
        } else if self.rb.dirty_count() > MAX_DIRTY_RB {
            // Refblocks never count less than the references, so they may go out alone, unsynced.
            self.check_failed()?;
            self.write_refblocks()?;
        }
        Ok(())
    }

    pub fn has_pending(&self) -> bool {
        self.rb.dirty_count() > 0
            || self.l2.dirty_count() > 0
            || !self.l1_dirty.is_empty()
            || !self.reftable_dirty.is_empty()
            || !self.pending_free.is_empty()
    }

    /// Host bytes of clusters with a nonzero refcount.
    pub fn allocated_bytes(&mut self) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut n = 0u64;
        for rbi in 0..self.reftable.len() {
            let raw = self.reftable[rbi];
            if raw == 0 || !seen.insert(raw) {
                continue;
            }
            if let Some((_, count)) = self.scan_refblock(rbi as u64)? {
                n += count;
            }
        }
        Ok(n * self.geo.cluster_size)
    }
}
