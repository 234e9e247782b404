//! Consistency checker, classified the way `qemu-img check` does: it recomputes every cluster's
//! reference count from the header, L1/L2 tables and refcount structures, then compares with the
//! stored refcounts. Stored < computed (or a wrong COPIED bit, a pointer past the end of the file,
//! reserved bits) is a corruption; stored > computed is a leak. Repair rewrites refcounts to the
//! computed values (leaks reclaimed, missing references counted) and then fixes COPIED bits.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, Header, L2Entry};
use crate::storage::{FileStorage, LockMode, Storage, open_regular};

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub leaks_fixed: u64,
    pub corruptions_fixed: u64,
    /// One line per problem found, with offsets.
    pub messages: Vec<String>,
}

impl std::fmt::Display for CheckReport {
    /// The problems, then a summary in `qemu-img check`'s words.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.messages {
            writeln!(f, "{m}")?;
        }
        if self.corruptions == 0 && self.leaks == 0 {
            return writeln!(f, "No errors were found on the image.");
        }
        if self.leaks_fixed + self.corruptions_fixed > 0 {
            writeln!(
                f,
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n",
                self.leaks_fixed, self.corruptions_fixed
            )?;
        }
        let (c, l) = (
            self.corruptions - self.corruptions_fixed,
            self.leaks - self.leaks_fixed,
        );
        if c > 0 {
            writeln!(
                f,
                "{c} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it."
            )?;
        }
        if l > 0 {
            writeln!(
                f,
                "{l} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data."
            )?;
        }
        if c == 0 && l == 0 {
            writeln!(f, "No errors remain on the image.")?;
        }
        Ok(())
    }
}

impl CheckReport {
    /// 0 clean, 3 leaks only, 2 corrupt (as `qemu-img check`).
    pub fn exit_code(&self) -> i32 {
        if self.corruptions > self.corruptions_fixed {
            2
        } else if self.leaks > self.leaks_fixed {
            3
        } else {
            0
        }
    }

    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        self.push(msg);
    }

    fn push(&mut self, msg: String) {
        // Keep the report bounded on badly broken images; the counters stay exact.
        if self.messages.len() < 10_000 {
            self.messages.push(msg);
        }
    }
}

/// Checks the image file at `path`; with `repair`, fixes what can be fixed in place.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    let st = FileStorage::new(open_regular(path, repair, false)?);
    st.lock(if repair {
        LockMode::Write
    } else {
        LockMode::Read
    })
    .map_err(|e| Error::lock(e, path))?;
    check_storage(&st, repair)
}

/// Largest file we check, in clusters (the reference counts live in memory).
const MAX_CHECK_CLUSTERS: u64 = 1 << 30;

/// One pass over an image: the header, the references counted so far, the report.
struct Walk<'a> {
    st: &'a dyn Storage,
    h: Header,
    bits: u32,
    cs: u64,
    ext: bool,
    nb_clusters: u64,
    refs: Vec<u32>,
    report: CheckReport,
}

/// The L1 table as read, and its valid L2 tables as (L1 index, offset).
struct L1Walk {
    l1: Vec<u64>,
    l2_tables: Vec<(usize, u64)>,
    /// Each distinct L2 table and how many L1 entries point at it.
    distinct: BTreeMap<u64, u32>,
}

pub fn check_storage(st: &dyn Storage, repair: bool) -> Result<CheckReport> {
    let mut w = Walk::new(st)?;
    w.reference_fixed_structures();
    let l1 = w.walk_l1()?;
    w.walk_l2_tables(&l1)?;
    let refblocks = w.walk_reftable()?;
    let stored = w.compare_refcounts(&refblocks, repair)?;
    w.check_copied_flags(&l1, &stored, repair)?;
    if repair {
        w.clear_marks()?;
        w.sync()?;
    }
    Ok(w.report)
}

impl<'a> Walk<'a> {
    /// Reads and validates the header; refuses what cannot be judged (as qemu-img: exit 1).
    fn new(st: &'a dyn Storage) -> Result<Self> {
        let (h, file_len) = crate::image::read_header(st)?;
        h.validate(file_len)?;
        h.refuse_unknown_incompatible()?;
        let cs = h.cluster_size();
        if h.nb_snapshots != 0 {
            return Err(Error::unsupported(
                "checking images with internal snapshots",
            ));
        }
        if h.autoclear_features & format::AUTOCLEAR_BITMAPS != 0
            && h.extensions.contains(&format::EXT_BITMAPS)
        {
            return Err(Error::unsupported(
                "checking images with persistent bitmaps",
            ));
        }
        let nb_clusters = file_len.div_ceil(cs);
        if nb_clusters > MAX_CHECK_CLUSTERS {
            return Err(Error::unsupported(format!(
                "checking images of {nb_clusters} clusters"
            )));
        }
        Ok(Self {
            st,
            bits: h.cluster_bits,
            cs,
            ext: h.extended_l2(),
            nb_clusters,
            refs: vec![0u32; nb_clusters as usize],
            report: CheckReport::default(),
            h,
        })
    }

    fn l1_bytes(&self) -> u64 {
        u64::from(self.h.l1_size) * 8
    }

    fn reftable_bytes(&self) -> u64 {
        u64::from(self.h.refcount_table_clusters) * self.cs
    }

    /// L2 entries (words) per entry: two with extended L2 (the subcluster bitmap).
    fn l2_step(&self) -> usize {
        if self.ext { 2 } else { 1 }
    }

    fn read(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        self.st
            .read_at(&mut v, off)
            .map_err(|e| Error::io(e, format!("reading {what} at {off}")))?;
        Ok(v)
    }

    fn write(&self, buf: &[u8], off: u64, what: &str) -> Result<()> {
        self.st
            .write_at(buf, off)
            .map_err(|e| Error::io(e, format!("repairing {what} at {off}")))
    }

    fn sync(&self) -> Result<()> {
        self.st.flush().map_err(|e| Error::io(e, "fdatasync"))
    }

    /// Counts one reference to each cluster of `[off, off + len)`; false if any is past the end.
    fn reference(&mut self, off: u64, len: u64, what: &str) -> bool {
        self.reference_n(off, len, what, 1)
    }

    fn reference_n(&mut self, off: u64, len: u64, what: &str, times: u32) -> bool {
        let first = off >> self.bits;
        let last = off
            .checked_add(len.max(1) - 1)
            .map_or(u64::MAX, |end| end >> self.bits);
        if last >= self.nb_clusters {
            self.report.corrupt(format!(
                "ERROR {what} at offset {off:#x} is past the end of the image"
            ));
            return false;
        }
        for c in first..=last {
            self.refs[c as usize] = self.refs[c as usize].saturating_add(times);
        }
        true
    }

    /// The header cluster, the L1 table and the refcount table.
    fn reference_fixed_structures(&mut self) {
        self.reference(0, self.cs, "header");
        let l1_bytes = self.l1_bytes();
        if l1_bytes > 0 {
            self.reference(self.h.l1_table_offset, l1_bytes, "L1 table");
        }
        self.reference(
            self.h.refcount_table_offset,
            self.reftable_bytes(),
            "refcount table",
        );
    }

    /// L1 -> L2: every valid L2 table referenced, and remembered (with the L1 entry carrying its
    /// COPIED bit) for the walk of its entries and the flag check.
    fn walk_l1(&mut self) -> Result<L1Walk> {
        let l1 = format::decode_table(&self.read(
            self.h.l1_table_offset,
            self.l1_bytes(),
            "L1 table",
        )?);
        let mut l2_tables: Vec<(usize, u64)> = Vec::new();
        for (i, &raw) in l1.iter().enumerate() {
            if raw == 0 {
                continue;
            }
            if raw & format::L1_RESERVED != 0 {
                self.report.corrupt(format!(
                    "ERROR L1 entry {i} ({raw:#x}) has reserved bits set"
                ));
                continue;
            }
            let off = raw & format::OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if off % self.cs != 0 {
                self.report.corrupt(format!(
                    "ERROR L2 table offset {off:#x} (L1 entry {i}) is not cluster aligned"
                ));
                continue;
            }
            if self.reference(off, self.cs, "L2 table") {
                l2_tables.push((i, off));
            }
        }
        let mut distinct: BTreeMap<u64, u32> = BTreeMap::new();
        for &(_, off) in &l2_tables {
            *distinct.entry(off).or_default() += 1;
        }
        Ok(L1Walk {
            l1,
            l2_tables,
            distinct,
        })
    }

    /// L2 -> data: the clusters every entry points at. A table referenced from several L1
    /// entries is walked once, its references counted for each.
    fn walk_l2_tables(&mut self, walk: &L1Walk) -> Result<()> {
        let (cs, bits, ext, step) = (self.cs, self.bits, self.ext, self.l2_step());
        for (&off, &times) in &walk.distinct {
            let i = walk
                .l2_tables
                .iter()
                .find(|t| t.1 == off)
                .map_or(0, |t| t.0);
            let table = format::decode_table(&self.read(off, cs, "L2 table")?);
            for (j, e) in table.chunks_exact(step).enumerate() {
                let guest = ((i as u64 * (cs / 8 / step as u64)) + j as u64) << bits;
                match L2Entry::decode(e[0], bits, ext) {
                    Err(s) => self.report.corrupt(format!(
                        "ERROR guest offset {guest:#x} (L2 table {off:#x}): {s}"
                    )),
                    Ok(L2Entry::Compressed { host, sectors }) => {
                        if ext && e[1] != 0 {
                            self.report.corrupt(format!(
                                "ERROR compressed cluster at guest {guest:#x} has subcluster bits"
                            ));
                        }
                        let start = host & !511;
                        self.reference_n(start, sectors * 512, "compressed cluster", times);
                    }
                    Ok(L2Entry::Normal { host, .. })
                    | Ok(L2Entry::Zero {
                        prealloc: Some(host),
                    }) => {
                        if ext && (e[1] as u32) & ((e[1] >> 32) as u32) != 0 {
                            self.report.corrupt(format!(
                                "ERROR guest {guest:#x}: subcluster both allocated and zero"
                            ));
                        }
                        self.reference_n(host, cs, "data cluster", times);
                    }
                    Ok(_) => {
                        if ext && (e[1] as u32) != 0 {
                            self.report.corrupt(format!(
                                "ERROR guest {guest:#x}: allocated subclusters without a cluster"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The refcount table and its blocks: referenced, and returned by refcount-table index.
    fn walk_reftable(&mut self) -> Result<BTreeMap<u64, u64>> {
        let reftable = format::decode_table(&self.read(
            self.h.refcount_table_offset,
            self.reftable_bytes(),
            "refcount table",
        )?);
        let mut refblocks: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, &raw) in reftable.iter().enumerate() {
            match format::decode_reftable(raw, i as u64) {
                Err(e) => self.report.corrupt(format!("ERROR {}", e.message)),
                Ok(None) => {}
                Ok(Some(off)) if off % self.cs != 0 => {
                    self.report.corrupt(format!(
                        "ERROR refcount block {i} at {off:#x} is not cluster aligned"
                    ));
                }
                Ok(Some(off)) => {
                    if self.reference(off, self.cs, "refcount block") {
                        refblocks.insert(i as u64, off);
                    }
                }
            }
        }
        Ok(refblocks)
    }

    /// Compares stored refcounts with what was counted; with `repair`, rewrites the refcount
    /// blocks that differ. Returns every cluster's refcount as it is now on disk.
    fn compare_refcounts(
        &mut self,
        refblocks: &BTreeMap<u64, u64>,
        repair: bool,
    ) -> Result<Vec<u64>> {
        let (cs, bits) = (self.cs, self.bits);
        let order = self.h.refcount_order;
        let rb_entries = (cs * 8) >> order;
        let max = format::refcount_max(order);
        let mut fixed_blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut stored: Vec<u64> = Vec::with_capacity(self.nb_clusters as usize);
        let mut block: Option<(u64, Vec<u8>)> = None;
        for c in 0..self.nb_clusters {
            let rbi = c / rb_entries;
            let idx = (c % rb_entries) as usize;
            if block.as_ref().is_none_or(|(b, _)| *b != rbi) {
                if let Some((b, data)) = block.take()
                    && fixed_blocks.contains_key(&b)
                {
                    fixed_blocks.insert(b, data);
                }
                block = match refblocks.get(&rbi) {
                    Some(&off) => Some((rbi, self.read(off, cs, "refcount block")?)),
                    None => None,
                };
            }
            let have = block
                .as_ref()
                .map_or(0, |(_, d)| format::refcount_get(d, order, idx));
            let want = u64::from(self.refs[c as usize]);
            let mut now = have;
            if have != want {
                let off = c << bits;
                if have < want {
                    self.report.corrupt(format!(
                        "ERROR cluster {c} (offset {off:#x}) refcount={have} reference={want}"
                    ));
                } else {
                    self.report.leaks += 1;
                    self.report.push(format!(
                        "Leaked cluster {c} (offset {off:#x}) refcount={have} reference={want}"
                    ));
                }
                if repair && want <= max {
                    if let Some((b, data)) = block.as_mut() {
                        format::refcount_set(data, order, idx, want);
                        fixed_blocks.insert(*b, Vec::new());
                        now = want;
                        if have < want {
                            self.report.corruptions_fixed += 1;
                        } else {
                            self.report.leaks_fixed += 1;
                        }
                    }
                }
            }
            stored.push(now);
        }
        if let Some((b, data)) = block.take()
            && fixed_blocks.contains_key(&b)
        {
            fixed_blocks.insert(b, data);
        }
        if repair && !fixed_blocks.is_empty() {
            for (b, data) in &fixed_blocks {
                self.write(data, refblocks[b], "refcount block")?;
            }
            self.sync()?;
        }
        Ok(stored)
    }

    /// COPIED bits, in L1 and L2 entries: set exactly when the refcount is 1. With `repair`, the
    /// L2 tables are fixed first and the L1 table after a sync, so an L1 entry never claims
    /// exclusive ownership before the table below it agrees.
    fn check_copied_flags(&mut self, walk: &L1Walk, stored: &[u64], repair: bool) -> Result<()> {
        let (cs, bits, ext, step) = (self.cs, self.bits, self.ext, self.l2_step());
        let rc = |off: u64| stored.get((off >> bits) as usize).copied().unwrap_or(0);
        let l1 = &walk.l1;
        let mut l1_fixed = l1.clone();
        for &(i, off) in &walk.l2_tables {
            let want_copied = rc(off) == 1;
            if (l1[i] & format::COPIED != 0) != want_copied {
                self.report.corrupt(format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={:#x} refcount={}",
                    l1[i],
                    rc(off)
                ));
                if repair {
                    l1_fixed[i] ^= format::COPIED;
                    self.report.corruptions_fixed += 1;
                }
            }
        }
        for &off in walk.distinct.keys() {
            let mut table = format::decode_table(&self.read(off, cs, "L2 table")?);
            let mut dirty = false;
            for j in (0..table.len()).step_by(step) {
                let e = table[j];
                let host = match L2Entry::decode(e, bits, ext) {
                    Ok(L2Entry::Normal { host, .. })
                    | Ok(L2Entry::Zero {
                        prealloc: Some(host),
                    }) => host,
                    _ => continue,
                };
                if (host >> bits) >= self.nb_clusters {
                    continue;
                }
                let want_copied = rc(host) == 1;
                if (e & format::COPIED != 0) != want_copied {
                    self.report.corrupt(format!(
                        "ERROR OFLAG_COPIED data cluster: l2_entry={e:#x} (L2 table {off:#x}) refcount={}",
                        rc(host)
                    ));
                    if repair {
                        table[j] ^= format::COPIED;
                        dirty = true;
                        self.report.corruptions_fixed += 1;
                    }
                }
            }
            if dirty {
                self.write(&format::encode_table(&table), off, "L2 table")?;
            }
        }
        if repair && l1_fixed != *l1 {
            self.sync()?;
            self.write(
                &format::encode_table(&l1_fixed),
                self.h.l1_table_offset,
                "L1 table",
            )?;
        }
        Ok(())
    }

    /// Once refcounts are right again, the dirty and corrupt marks go (as `qemu-img check -r
    /// all`).
    fn clear_marks(&mut self) -> Result<()> {
        let marks =
            self.h.incompatible_features & (format::INCOMPAT_DIRTY | format::INCOMPAT_CORRUPT);
        if marks == 0 || self.report.corruptions != self.report.corruptions_fixed {
            return Ok(());
        }
        self.sync()?;
        let features = self.h.incompatible_features & !marks;
        self.st
            .write_at(
                &features.to_be_bytes(),
                format::hdr::INCOMPATIBLE_FEATURES as u64,
            )
            .map_err(|e| Error::io(e, "clearing dirty/corrupt bits"))?;
        self.report
            .push("Cleared the dirty/corrupt bits in the header".into());
        Ok(())
    }
}
