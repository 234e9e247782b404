//! Reference counts and the allocator: the refcount table, the refblocks (in a
//! [`TableCache`]), the allocation frontier, preallocation ahead of it, and the releases waiting
//! for their unlinking to be durable.
//!
//! Invariant (what lets refblocks reach the file at any moment): a cached refcount is never below
//! the references that exist on disk or in the L2 cache. Increments happen before a reference is
//! created (`alloc`), decrements only after the L2/L1 writes removing the reference are durable
//! (`release`, then [`Refcounts::apply_releases`] after the write-back). Freed clusters are never
//! reused while the image is open: allocation only moves the frontier forward.
//!
//! The file itself ([`MetaFile`]: writes, syncs, the known length, the failed state) belongs to
//! [`crate::meta::Meta`], which passes it to every call that touches the disk.

use std::collections::{BTreeSet, HashSet};

use crate::cache::TableCache;
use crate::error::{Error, Result};
use crate::format::{self, MAX_REFTABLE_BYTES};
use crate::meta::{Geometry, MetaFile};
use crate::units::HostOffset;

/// Smallest stretch worth a reservation (and a thread).
const MIN_RESERVE: u64 = 4 << 20;

pub(crate) struct Refcounts {
    geo: Geometry,
    table: Vec<u64>,
    table_offset: u64,
    /// Dirty 512-byte sectors of the refcount table.
    table_dirty: BTreeSet<u64>,
    /// Refblocks by refcount-table index, as on disk.
    blocks: TableCache<Box<[u8]>>,
    /// First cluster never handed out; everything from here on is free.
    pub frontier: u64,
    /// The file is reserved (fallocated) up to here.
    prealloc_end: u64,
    /// The reservation running on its own thread (at most one): the end it reserves up to, and
    /// the thread, which returns whether it succeeded.
    reserving: Option<(u64, crate::background::Pending<bool>)>,
    /// Largest stretch reserved at once ([`crate::Storage::reserve_step`]).
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
    growing: bool,
}

impl Refcounts {
    /// Loads the refcount table; for a writable image also finds the frontier.
    pub fn load(
        io: &MetaFile,
        h: &format::Header,
        geo: Geometry,
        cache_bytes: usize,
        writable: bool,
    ) -> Result<Self> {
        let cs = geo.cluster_size;
        let rt_len = (u64::from(h.refcount_table_clusters) * cs) as usize;
        let mut raw = vec![0u8; rt_len];
        io.st
            .read_at(&mut raw, h.refcount_table_offset)
            .map_err(|e| {
                Error::io(
                    e,
                    format!("reading refcount table at {}", h.refcount_table_offset),
                )
            })?;
        let table = format::decode_table(&raw);
        let file_len = io.len();
        let mut r = Refcounts {
            geo,
            table,
            table_offset: h.refcount_table_offset,
            table_dirty: BTreeSet::new(),
            blocks: TableCache::new((cache_bytes / cs as usize).max(16)),
            frontier: 0,
            prealloc_end: file_len,
            reserving: None,
            reserve_step: io.st.reserve_step(),
            usable_end: 0,
            prealloc_off: !io.st.reserve_pays(),
            len_at_open: file_len,
            pending_free: Vec::new(),
            growing: false,
        };
        if writable {
            r.frontier = r.find_frontier(io)?;
            r.prealloc_end = file_len.max(r.frontier * cs);
            let data = geo.virtual_size.div_ceil(cs);
            let l2 = data.div_ceil(geo.l2_entries);
            let refblocks = (r.frontier + data + l2).div_ceil(geo.rb_entries) + 1;
            r.usable_end = (r.frontier + data + l2 + refblocks) * cs;
        }
        Ok(r)
    }

    /// Queues the clusters an old L2 entry held, to be released after the next L2/L1 write-back.
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

    /// Releases queued before now: their unlinking from L2/L1 is durable.
    pub fn apply_releases(&mut self, io: &MetaFile) -> Result<()> {
        let frees = std::mem::take(&mut self.pending_free);
        for c in frees {
            let rc = self.get(io, c)?;
            if rc == 0 {
                tracing::warn!(
                    cluster = c,
                    "released a cluster whose refcount is already 0"
                );
                continue;
            }
            self.set(io, c, rc - 1)?;
        }
        Ok(())
    }

    /// Writes the dirty sectors of the refcount table and syncs, if any.
    pub fn write_table(&mut self, io: &MetaFile) -> Result<()> {
        if self.table_dirty.is_empty() {
            return Ok(());
        }
        let sectors = std::mem::take(&mut self.table_dirty);
        io.write_sectors(&self.table, self.table_offset, &sectors, "refcount table")?;
        io.sync()
    }

    pub fn dirty_blocks(&self) -> usize {
        self.blocks.dirty_count()
    }

    pub fn pending_releases(&self) -> usize {
        self.pending_free.len()
    }

    pub fn has_pending(&self) -> bool {
        self.blocks.dirty_count() > 0
            || !self.table_dirty.is_empty()
            || !self.pending_free.is_empty()
    }

    /// One past the highest cluster with a nonzero refcount.
    fn find_frontier(&mut self, io: &MetaFile) -> Result<u64> {
        // A hostile table may point many entries at one block: scan each block once.
        let mut seen = HashSet::new();
        for idx in (0..self.table.len()).rev() {
            let raw = self.table[idx];
            if raw == 0 || !seen.insert(raw) {
                continue;
            }
            if let Some((last, _)) = self.scan_block(io, idx as u64)? {
                return Ok(idx as u64 * self.geo.rb_entries + last + 1);
            }
        }
        Err(Error::corrupt("refcount table counts no cluster at all"))
    }

    /// The highest nonzero entry of a refblock and how many are nonzero (None if all are 0).
    fn scan_block(&mut self, io: &MetaFile, rbi: u64) -> Result<Option<(u64, u64)>> {
        if !self.load_block(io, rbi)? {
            return Ok(None);
        }
        let order = self.geo.refcount_order;
        let data = self.blocks.peek(rbi).expect("loaded above");
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

    fn load_block(&mut self, io: &MetaFile, rbi: u64) -> Result<bool> {
        if self.blocks.get(rbi).is_some() {
            return Ok(true);
        }
        let Some(&raw) = self.table.get(rbi as usize) else {
            return Ok(false);
        };
        let Some(off) = format::decode_reftable(raw, rbi)? else {
            return Ok(false);
        };
        let cs = self.geo.cluster_size;
        if off % cs != 0 || off < cs || off.checked_add(cs).is_none_or(|e| e > io.len()) {
            return Err(Error::corrupt(format!(
                "refcount block at offset {off} (refcount table index {rbi}) is unaligned, \
                 overlaps the header or lies past the end of the file"
            )));
        }
        self.make_room(io)?;
        let mut data = vec![0u8; cs as usize].into_boxed_slice();
        io.st
            .read_at(&mut data, off)
            .map_err(|e| Error::io(e, format!("reading refcount block at {off}")))?;
        self.blocks.insert(rbi, data, false);
        Ok(true)
    }

    /// Refblocks may be written at any time (they never count less than the references), so a
    /// full cache of dirty ones is written out alone before one is evicted.
    fn make_room(&mut self, io: &MetaFile) -> Result<()> {
        if !self.blocks.is_full() {
            return Ok(());
        }
        if self.blocks.all_dirty() {
            self.write_blocks(io)?;
        }
        self.blocks.evict_clean();
        Ok(())
    }

    pub fn get(&mut self, io: &MetaFile, cluster: u64) -> Result<u64> {
        let rbi = cluster / self.geo.rb_entries;
        if !self.load_block(io, rbi)? {
            return Ok(0);
        }
        let i = (cluster % self.geo.rb_entries) as usize;
        let data = self.blocks.peek(rbi).expect("loaded above");
        Ok(format::refcount_get(data, self.geo.refcount_order, i))
    }

    fn set(&mut self, io: &MetaFile, cluster: u64, val: u64) -> Result<()> {
        let rbi = cluster / self.geo.rb_entries;
        if !self.load_block(io, rbi)? {
            return Err(Error::corrupt(format!(
                "no refcount block covers cluster {cluster}"
            )));
        }
        let i = (cluster % self.geo.rb_entries) as usize;
        let order = self.geo.refcount_order;
        let data = self.blocks.get_dirty(rbi).expect("loaded above");
        format::refcount_set(data, order, i, val);
        Ok(())
    }

    /// Hands out `n` contiguous fresh clusters (refcount 1) and returns the host offset.
    pub fn alloc(&mut self, io: &MetaFile, n: u64) -> Result<HostOffset> {
        io.check_failed()?;
        let rbe = self.geo.rb_entries;
        loop {
            let start = self.frontier;
            let end = start + n;
            let missing = (start / rbe..=(end - 1) / rbe)
                .find(|&rbi| self.table.get(rbi as usize).is_none_or(|&r| r == 0));
            match missing {
                None => break,
                Some(rbi) if rbi as usize >= self.table.len() => self.grow_table(io, end)?,
                Some(rbi) => self.new_block(io, rbi)?,
            }
        }
        let start = self.frontier;
        let end = start + n;
        for c in start..end {
            self.set(io, c, 1)?;
        }
        self.frontier = end;
        Ok(HostOffset(start << self.geo.cluster_bits))
    }

    /// Places a new refblock for refcount-table index `rbi` at the frontier. The cluster there is
    /// covered either by this very block or by one that exists (`alloc` checks in order).
    fn new_block(&mut self, io: &MetaFile, rbi: u64) -> Result<()> {
        let c = self.frontier;
        let cs = self.geo.cluster_size;
        self.make_room(io)?;
        self.blocks
            .insert(rbi, vec![0u8; cs as usize].into_boxed_slice(), true);
        self.table[rbi as usize] = c * cs;
        self.table_dirty.insert(rbi * 8 / 512);
        self.set(io, c, 1)?;
        self.frontier = c + 1;
        Ok(())
    }

    /// Moves the refcount table to a bigger one that covers `need_clusters` with room to spare:
    /// the new table (and refblocks it needs) are written and synced, then the header switches
    /// in one sector, then the old table is released.
    fn grow_table(&mut self, io: &MetaFile, need_clusters: u64) -> Result<()> {
        if self.growing {
            return Err(Error::new(
                crate::ErrorKind::NoSpace,
                "refcount table cannot grow enough",
            ));
        }
        let cs = self.geo.cluster_size;
        let per_cluster = cs / 8;
        let old_len = self.table.len() as u64;
        let want = (need_clusters + 64 + need_clusters / 8).div_ceil(self.geo.rb_entries) + 1;
        let new_len = (old_len * 2).max(want).div_ceil(per_cluster) * per_cluster;
        if new_len * 8 > MAX_REFTABLE_BYTES {
            return Err(Error::new(
                crate::ErrorKind::NoSpace,
                format!("refcount table would exceed {MAX_REFTABLE_BYTES} bytes"),
            ));
        }
        let new_clusters = new_len / per_cluster;
        self.growing = true;
        self.table.resize(new_len as usize, 0);
        let res = self.alloc(io, new_clusters);
        self.growing = false;
        let HostOffset(host) = res?;
        self.write_blocks(io)?;
        io.write(&format::encode_table(&self.table), host, "refcount table")?;
        io.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&host.to_be_bytes());
        hdr[8..].copy_from_slice(&(new_clusters as u32).to_be_bytes());
        // Offset and cluster count are adjacent: one write switches both.
        let at = format::hdr::REFCOUNT_TABLE_OFFSET as u64;
        io.write(&hdr, at, "header (refcount table pointer)")?;
        io.sync()?;
        let old = self.table_offset >> self.geo.cluster_bits;
        let old_clusters = old_len / per_cluster;
        self.table_offset = host;
        self.table_dirty.clear();
        for c in old..old + old_clusters {
            let rc = self.get(io, c)?;
            self.set(io, c, rc.saturating_sub(1))?;
        }
        tracing::debug!(host, new_clusters, "refcount table moved");
        Ok(())
    }

    /// Starts reserving (fallocate) the next stretch of the file on a shared background thread
    /// (`background`) when the frontier came within half a step of the reserved end and no
    /// reservation is running, so no request waits for it (`fallocate` of 256 MiB takes ~55 ms on tmpfs). Steps grow with
    /// the image up to [`crate::Storage::reserve_step`], stop at what the image can use and take
    /// at most an eighth of the space still free ([`crate::Storage::free_bytes`]). Reserving
    /// is only an optimisation: data and metadata writes past the end grow the file themselves,
    /// and nothing references a cluster before its bytes were written.
    pub fn reserve_ahead(&mut self, io: &MetaFile) {
        self.finish_reservation(io, false);
        if self.reserving.is_some() || self.prealloc_off {
            return;
        }
        let cs = self.geo.cluster_size;
        let need = self.frontier * cs;
        let step = (need / 4).clamp(MIN_RESERVE, self.reserve_step.max(MIN_RESERVE));
        if need + step / 2 <= self.prealloc_end {
            return;
        }
        // At most an eighth of what is still free: other images being written and the catalog
        // share the disk, and reserved space only comes back at close. Near a full disk this
        // stops reserving, and writes grow the file by what they need.
        let step = io.st.free_bytes().map_or(step, |free| step.min(free / 8));
        if step < MIN_RESERVE {
            return;
        }
        let start = self.prealloc_end.max(need);
        let end = (need + step).min(self.usable_end).div_ceil(cs) * cs;
        if end <= start {
            return;
        }
        let st = io.st.clone();
        let spawned = crate::background::spawn(move || match st.allocate(start, end - start) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(start, end, error = %e, "preallocation failed; not trying again");
                false
            }
        });
        match spawned {
            Some(pending) => self.reserving = Some((end, pending)),
            None => self.prealloc_off = true,
        }
    }

    /// Takes in the outcome of a finished reservation; with `wait`, waits for a running one
    /// (before the tail is trimmed at close: a late `fallocate` would grow the file again).
    pub fn finish_reservation(&mut self, io: &MetaFile, wait: bool) {
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
            io.bump_len(end);
        } else {
            self.prealloc_off = true;
        }
    }

    /// Writes every dirty refblock (unsynced: refblocks may reach the file at any time).
    pub fn write_blocks(&mut self, io: &MetaFile) -> Result<()> {
        for rbi in self.blocks.dirty_keys() {
            let off = self.table[rbi as usize] & format::REFT_OFFSET_MASK;
            let data = self.blocks.peek(rbi).expect("dirty tables are cached");
            io.write(data, off, "refcount block")?;
            self.blocks.mark_clean(rbi);
        }
        Ok(())
    }

    /// Host bytes of clusters with a nonzero refcount.
    pub fn allocated_bytes(&mut self, io: &MetaFile) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut n = 0u64;
        for rbi in 0..self.table.len() {
            let raw = self.table[rbi];
            if raw == 0 || !seen.insert(raw) {
                continue;
            }
            if let Some((_, count)) = self.scan_block(io, rbi as u64)? {
                n += count;
            }
        }
        Ok(n * self.geo.cluster_size)
    }
}
