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
    let st = FileStorage::new(open_regular(path, repair)?);
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

struct Walk<'a> {
    st: &'a dyn Storage,
    h: Header,
    bits: u32,
    nb_clusters: u64,
    refs: Vec<u32>,
    report: CheckReport,
}

impl Walk<'_> {
    fn read(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        self.st
            .read_at(&mut v, off)
            .map_err(|e| Error::io(e, format!("reading {what} at {off}")))?;
        Ok(v)
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

    fn words(raw: &[u8]) -> Vec<u64> {
        raw.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect()
    }
}

pub fn check_storage(st: &dyn Storage, repair: bool) -> Result<CheckReport> {
    let (h, file_len) = crate::image::read_header(st)?;
    h.validate(file_len)?;
    // What the image means is unknown, so its consistency cannot be judged (qemu-img: exit 1).
    h.refuse_unknown_incompatible()?;
    let cs = h.cluster_size();
    if h.nb_snapshots != 0 {
        return Err(Error::unsupported(
            "checking images with internal snapshots",
        ));
    }
    if h.autoclear_features & 1 != 0 && h.extensions.contains(&format::EXT_BITMAPS) {
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
    let bits = h.cluster_bits;
    let ext = h.extended_l2();
    let mut w = Walk {
        st,
        bits,
        nb_clusters,
        refs: vec![0u32; nb_clusters as usize],
        report: CheckReport::default(),
        h,
    };
    w.reference(0, cs, "header");
    let l1_bytes = u64::from(w.h.l1_size) * 8;
    if l1_bytes > 0 {
        w.reference(w.h.l1_table_offset, l1_bytes, "L1 table");
    }
    let rt_bytes = u64::from(w.h.refcount_table_clusters) * cs;
    w.reference(w.h.refcount_table_offset, rt_bytes, "refcount table");

    // L1 -> L2 -> data. Remember where entries that carry a COPIED bit live, for the flag check.
    let l1 = Walk::words(&w.read(w.h.l1_table_offset, l1_bytes, "L1 table")?);
    let mut l2_tables: Vec<(usize, u64)> = Vec::new();
    for (i, &raw) in l1.iter().enumerate() {
        if raw == 0 {
            continue;
        }
        if raw & format::L1_RESERVED != 0 {
            w.report.corrupt(format!(
                "ERROR L1 entry {i} ({raw:#x}) has reserved bits set"
            ));
            continue;
        }
        let off = raw & format::OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if off % cs != 0 {
            w.report.corrupt(format!(
                "ERROR L2 table offset {off:#x} (L1 entry {i}) is not cluster aligned"
            ));
            continue;
        }
        if w.reference(off, cs, "L2 table") {
            l2_tables.push((i, off));
        }
    }
    // A table referenced from several L1 entries is walked once, its references counted for each.
    let mut distinct: BTreeMap<u64, u32> = BTreeMap::new();
    for &(_, off) in &l2_tables {
        *distinct.entry(off).or_default() += 1;
    }
    for (&off, &times) in &distinct {
        let i = l2_tables.iter().find(|t| t.1 == off).map_or(0, |t| t.0);
        let table = Walk::words(&w.read(off, cs, "L2 table")?);
        let step = if ext { 2 } else { 1 };
        for (j, e) in table.chunks_exact(step).enumerate() {
            let guest = ((i as u64 * (cs / 8 / step as u64)) + j as u64) << bits;
            match L2Entry::decode(e[0], bits, ext) {
                Err(s) => w.report.corrupt(format!(
                    "ERROR guest offset {guest:#x} (L2 table {off:#x}): {s}"
                )),
                Ok(L2Entry::Compressed { host, sectors }) => {
                    if ext && e[1] != 0 {
                        w.report.corrupt(format!(
                            "ERROR compressed cluster at guest {guest:#x} has subcluster bits"
                        ));
                    }
                    let start = host & !511;
                    w.reference_n(start, sectors * 512, "compressed cluster", times);
                }
                Ok(L2Entry::Normal { host, .. })
                | Ok(L2Entry::Zero {
                    prealloc: Some(host),
                }) => {
                    if ext && (e[1] as u32) & ((e[1] >> 32) as u32) != 0 {
                        w.report.corrupt(format!(
                            "ERROR guest {guest:#x}: subcluster both allocated and zero"
                        ));
                    }
                    w.reference_n(host, cs, "data cluster", times);
                }
                Ok(_) => {
                    if ext && (e[1] as u32) != 0 {
                        w.report.corrupt(format!(
                            "ERROR guest {guest:#x}: allocated subclusters without a cluster"
                        ));
                    }
                }
            }
        }
    }

    // Refcount structures.
    let reftable = Walk::words(&w.read(w.h.refcount_table_offset, rt_bytes, "refcount table")?);
    let mut refblocks: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, &raw) in reftable.iter().enumerate() {
        match format::decode_reftable(raw, i as u64) {
            Err(e) => w.report.corrupt(format!("ERROR {}", e.message)),
            Ok(None) => {}
            Ok(Some(off)) if off % cs != 0 => {
                w.report.corrupt(format!(
                    "ERROR refcount block {i} at {off:#x} is not cluster aligned"
                ));
            }
            Ok(Some(off)) => {
                if w.reference(off, cs, "refcount block") {
                    refblocks.insert(i as u64, off);
                }
            }
        }
    }

    // Compare stored refcounts with what we counted.
    let order = w.h.refcount_order;
    let rb_entries = (cs * 8) >> order;
    let max = format::refcount_max(order);
    let mut fixed_blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stored: Vec<u64> = Vec::with_capacity(nb_clusters as usize);
    let mut block: Option<(u64, Vec<u8>)> = None;
    for c in 0..nb_clusters {
        let rbi = c / rb_entries;
        let idx = (c % rb_entries) as usize;
        if block.as_ref().is_none_or(|(b, _)| *b != rbi) {
            if let Some((b, data)) = block.take()
                && fixed_blocks.contains_key(&b)
            {
                fixed_blocks.insert(b, data);
            }
            block = match refblocks.get(&rbi) {
                Some(&off) => Some((rbi, w.read(off, cs, "refcount block")?)),
                None => None,
            };
        }
        let have = block
            .as_ref()
            .map_or(0, |(_, d)| format::refcount_get(d, order, idx));
        let want = u64::from(w.refs[c as usize]);
        let mut now = have;
        if have != want {
            let off = c << bits;
            if have < want {
                w.report.corrupt(format!(
                    "ERROR cluster {c} (offset {off:#x}) refcount={have} reference={want}"
                ));
            } else {
                w.report.leaks += 1;
                w.report.push(format!(
                    "Leaked cluster {c} (offset {off:#x}) refcount={have} reference={want}"
                ));
            }
            if repair && want <= max {
                if let Some((b, data)) = block.as_mut() {
                    format::refcount_set(data, order, idx, want);
                    fixed_blocks.insert(*b, Vec::new());
                    now = want;
                    if have < want {
                        w.report.corruptions_fixed += 1;
                    } else {
                        w.report.leaks_fixed += 1;
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
            let off = refblocks[b];
            st.write_at(data, off)
                .map_err(|e| Error::io(e, format!("repairing refcount block at {off}")))?;
        }
        st.flush().map_err(|e| Error::io(e, "fdatasync"))?;
    }

    // COPIED bits: set exactly when the refcount is 1.
    let rc = |off: u64| stored.get((off >> bits) as usize).copied().unwrap_or(0);
    let mut l1_fixed = l1.clone();
    for &(i, off) in &l2_tables {
        let want_copied = rc(off) == 1;
        if (l1[i] & format::COPIED != 0) != want_copied {
            w.report.corrupt(format!(
                "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={:#x} refcount={}",
                l1[i],
                rc(off)
            ));
            if repair {
                l1_fixed[i] ^= format::COPIED;
                w.report.corruptions_fixed += 1;
            }
        }
    }
    for &off in distinct.keys() {
        let raw = w.read(off, cs, "L2 table")?;
        let mut table = Walk::words(&raw);
        let step = if ext { 2 } else { 1 };
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
            if (host >> bits) >= nb_clusters {
                continue;
            }
            let want_copied = rc(host) == 1;
            if (e & format::COPIED != 0) != want_copied {
                w.report.corrupt(format!(
                    "ERROR OFLAG_COPIED data cluster: l2_entry={e:#x} (L2 table {off:#x}) refcount={}",
                    rc(host)
                ));
                if repair {
                    table[j] ^= format::COPIED;
                    dirty = true;
                    w.report.corruptions_fixed += 1;
                }
            }
        }
        if dirty {
            let bytes: Vec<u8> = table.iter().flat_map(|x| x.to_be_bytes()).collect();
            st.write_at(&bytes, off)
                .map_err(|e| Error::io(e, format!("repairing L2 table at {off}")))?;
        }
    }
    if repair && l1_fixed != l1 {
        st.flush().map_err(|e| Error::io(e, "fdatasync"))?;
        let bytes: Vec<u8> = l1_fixed.iter().flat_map(|x| x.to_be_bytes()).collect();
        st.write_at(&bytes, w.h.l1_table_offset)
            .map_err(|e| Error::io(e, "repairing L1 table"))?;
    }
    let marks = w.h.incompatible_features & (format::INCOMPAT_DIRTY | format::INCOMPAT_CORRUPT);
    if repair && marks != 0 && w.report.corruptions == w.report.corruptions_fixed {
        // Refcounts are right again: the dirty / corrupt marks can go (as qemu-img check -r all).
        st.flush().map_err(|e| Error::io(e, "fdatasync"))?;
        let bits = w.h.incompatible_features & !marks;
        st.write_at(
            &bits.to_be_bytes(),
            format::hdr::INCOMPATIBLE_FEATURES as u64,
        )
        .map_err(|e| Error::io(e, "clearing dirty/corrupt bits"))?;
        w.report
            .push("Cleared the dirty/corrupt bits in the header".into());
    }
    if repair {
        st.flush().map_err(|e| Error::io(e, "fdatasync"))?;
    }
    Ok(w.report)
}
