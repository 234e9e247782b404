//! The integrity data of an image: `disk<N>.digests` beside `disk<N>.qcow2`, written at
//! finalise, rewritten after a merge, compared by a verify.
//!
//! What is digested is what the image itself holds, not its chain: for each 1 MiB range of guest
//! offsets (`GRANULARITY`) in which the image maps anything of its own (a data, compressed or
//! zero cluster; block status without its backing), one BLAKE3 over
//! `n` (u64 LE), then `n` pairs (start within the range, length; u64 LE) naming the runs the image
//! maps, then the guest bytes of those runs as the image reads them (zeros for zero clusters).
//! Ranges it does not map are absent. So a flipped data bit, a changed L2 entry (a run that moved,
//! appeared or vanished) and a truncated file each change a range's digest or the set of ranges,
//! and the guest offset of that range locates it.
//!
//! The file: a 32-byte header (`MAGIC`, version u32, granularity's log2 u32, virtual size u64,
//! range count u64; little endian), then per range its index (u64) and digest (32 bytes), indexes
//! ascending. The manifest holds the BLAKE3 of the whole file per disk, so a changed or swapped
//! digests file is found too.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use qcow2::{ExtentKind, Image, OpenOptions};

use crate::error::{Error, Result};

/// Bytes of guest range per digest: a digest per MiB costs 40 bytes (4 MB per TiB of data) and
/// locates a corruption within a MiB.
pub const GRANULARITY_LOG2: u32 = 20;
pub const GRANULARITY: u64 = 1 << GRANULARITY_LOG2;

const MAGIC: &[u8; 8] = b"SNDIGST\x01";
const VERSION: u32 = 1;
const HEADER: usize = 32;
const ENTRY: usize = 40;

/// Block status is asked this many bytes at a time, so a fragmented image's extent list stays
/// small.
const STATUS_BATCH: u64 = 256 << 20;

/// Ranges read ahead of the hashing thread.
const QUEUE: usize = 8;

pub type Digest = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub virtual_size: u64,
    /// Range index (guest offset / `GRANULARITY`) and its digest, indexes ascending.
    pub ranges: Vec<(u64, Digest)>,
}

/// One difference between the recorded digests and the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub guest_offset: u64,
    pub what: &'static str,
}

/// `disk<N>.digests` beside `disk<N>.qcow2`.
pub fn path_of(image: &Path) -> PathBuf {
    image.with_extension("digests")
}

fn temp_path_of(image: &Path) -> PathBuf {
    image.with_extension("digests.tmp")
}

impl Digests {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.ranges.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&GRANULARITY_LOG2.to_le_bytes());
        out.extend_from_slice(&self.virtual_size.to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u64).to_le_bytes());
        for (index, digest) in &self.ranges {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(digest);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Digests, String> {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a digests file (bad magic or too short)".into());
        }
        if u32_at(8) != VERSION || u32_at(12) != GRANULARITY_LOG2 {
            return Err(format!(
                "digests file version {} granularity 2^{} not understood",
                u32_at(8),
                u32_at(12)
            ));
        }
        let virtual_size = u64_at(16);
        let count = u64_at(24);
        if Some(bytes.len() as u64 - HEADER as u64) != count.checked_mul(ENTRY as u64) {
            return Err(format!(
                "digests file of {} bytes cannot hold {count} ranges",
                bytes.len()
            ));
        }
        let ranges: Vec<(u64, Digest)> = bytes[HEADER..]
            .chunks_exact(ENTRY)
            .map(|e| {
                (
                    u64::from_le_bytes(e[..8].try_into().unwrap()),
                    e[8..].try_into().unwrap(),
                )
            })
            .collect();
        let sorted = ranges.windows(2).all(|w| w[0].0 < w[1].0);
        let inside = ranges
            .last()
            .is_none_or(|(i, _)| i.checked_mul(GRANULARITY).is_some_and(|o| o < virtual_size));
        if !sorted || !inside {
            return Err("digests file ranges out of order or past the image's size".into());
        }
        Ok(Digests {
            virtual_size,
            ranges,
        })
    }
}

/// Writes the image's digests file atomically (mode 0600); the file's BLAKE3 in hex.
pub fn write(image: &Path, digests: &Digests) -> Result<String> {
    let bytes = digests.encode();
    let path = path_of(image);
    crate::sys::datadir::replace_private(&temp_path_of(image), &path, &bytes)
        .map_err(Error::io(format!("writing {}", path.display())))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// The digests file of an image and its BLAKE3 in hex; `Ok(None)` when there is none.
pub fn read(image: &Path) -> Result<Option<(std::result::Result<Digests, String>, String)>> {
    let path = path_of(image);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((
            Digests::decode(&bytes),
            blake3::hash(&bytes).to_hex().to_string(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
    }
}

/// The digests of every range the image maps. Blocking: one read of the image's own data.
pub fn compute(image: &Path, io: qcow2::StorageIo) -> Result<Digests> {
    compute_some(image, io, &|_| true)
}

/// The digests of the ranges the image maps whose index `wanted` accepts (the others are not
/// read). Blocking.
pub fn compute_some(
    image: &Path,
    io: qcow2::StorageIo,
    wanted: &(dyn Fn(u64) -> bool + Sync),
) -> Result<Digests> {
    let opts = OpenOptions {
        // Its own clusters only: what falls through to a backing file is that file's business.
        open_backing: false,
        no_symlinks: true,
        storage_io: io,
        ..OpenOptions::default()
    };
    let img = Image::open(image, &opts).map_err(Error::image(image))?;
    let virtual_size = img.virtual_size();
    let (tx, rx) = mpsc::sync_channel::<Range>(QUEUE);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    // Reading and hashing overlap: the image is read on this thread while another hashes.
    let ranges = std::thread::scope(|s| {
        let hasher = s.spawn(move || hash_ranges(rx, back_tx));
        let read = read_ranges(&img, wanted, &tx, &back_rx);
        drop(tx);
        let hashed = hasher.join().expect("the hashing thread does not panic");
        read.map(|()| hashed)
    })
    .map_err(Error::image(image))?;
    Ok(Digests {
        virtual_size,
        ranges,
    })
}

/// One range's own runs (start within the range, length) and their bytes, back to back.
struct Range {
    index: u64,
    runs: Vec<(u64, u64)>,
    data: Vec<u8>,
}

fn hash_ranges(rx: mpsc::Receiver<Range>, back: mpsc::Sender<Vec<u8>>) -> Vec<(u64, Digest)> {
    let mut out = Vec::new();
    for r in rx {
        out.push((r.index, digest_of(&r.runs, &r.data)));
        let _ = back.send(r.data);
    }
    out
}

/// The digest of one range, as the module's comment defines it.
pub fn digest_of(runs: &[(u64, u64)], data: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(runs.len() as u64).to_le_bytes());
    for (start, len) in runs {
        h.update(&start.to_le_bytes());
        h.update(&len.to_le_bytes());
    }
    h.update(data);
    *h.finalize().as_bytes()
}

fn read_ranges(
    img: &Image,
    wanted: &(dyn Fn(u64) -> bool + Sync),
    tx: &mpsc::SyncSender<Range>,
    back: &mpsc::Receiver<Vec<u8>>,
) -> qcow2::Result<()> {
    let size = img.virtual_size();
    let mut batch = 0;
    while batch < size {
        let len = STATUS_BATCH.min(size - batch);
        let own: Vec<(u64, u64)> = img
            .block_status(batch, len)?
            .into_iter()
            .filter(|e| e.depth == 1 && e.kind != ExtentKind::Unallocated)
            .map(|e| (e.offset, e.offset + e.length))
            .collect();
        let mut at = 0;
        for index in batch / GRANULARITY..(batch + len).div_ceil(GRANULARITY) {
            let (start, end) = (index * GRANULARITY, ((index + 1) * GRANULARITY).min(size));
            while at < own.len() && own[at].1 <= start {
                at += 1;
            }
            let runs: Vec<(u64, u64)> = own[at..]
                .iter()
                .take_while(|(s, _)| *s < end)
                .map(|&(s, e)| (s.max(start) - start, e.min(end) - s.max(start)))
                .collect();
            if runs.is_empty() || !wanted(index) {
                continue;
            }
            let mut data = back.try_recv().unwrap_or_default();
            data.resize(runs.iter().map(|r| r.1).sum::<u64>() as usize, 0);
            let mut filled = 0;
            for (s, l) in &runs {
                img.read_at(start + s, &mut data[filled..filled + *l as usize])?;
                filled += *l as usize;
            }
            if tx.send(Range { index, runs, data }).is_err() {
                return Ok(());
            }
        }
        batch += len;
    }
    Ok(())
}

/// After `image`'s own clusters were merged into the image below it and that file renamed over
/// `image` (`qcow2::merge`): `image`'s digests file rewritten for the merged image; its BLAKE3.
/// A range `image` did not map holds what the image below held, so it keeps that image's digest
/// (read from `below`'s digests file, still in place); a range it mapped is read again. Without
/// both files, everything is read again. Run again after a crash, it reads again what the
/// rewritten file lists: slower, never wrong.
pub fn rewrite_merged(below: &Path, image: &Path, io: qcow2::StorageIo) -> Result<String> {
    let recorded = |p: &Path| -> Result<Option<Digests>> {
        Ok(match read(p)? {
            Some((Ok(d), _)) => Some(d),
            _ => None,
        })
    };
    let merged = match (recorded(below)?, recorded(image)?) {
        (Some(lower), Some(upper)) => {
            let touched: std::collections::HashSet<u64> =
                upper.ranges.iter().map(|r| r.0).collect();
            let mut fresh = compute_some(image, io, &|i| touched.contains(&i))?;
            fresh
                .ranges
                .extend(lower.ranges.into_iter().filter(|r| !touched.contains(&r.0)));
            fresh.ranges.sort_unstable_by_key(|r| r.0);
            fresh
        }
        _ => compute(image, io)?,
    };
    write(image, &merged)
}

/// Every range where `recorded` and `now` differ, ascending, at most `limit`.
pub fn compare(recorded: &Digests, now: &Digests, limit: usize) -> Vec<Mismatch> {
    let (a, b) = (&recorded.ranges, &now.ranges);
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while out.len() < limit && (i < a.len() || j < b.len()) {
        let (index, what) = if j == b.len() || (i < a.len() && a[i].0 < b[j].0) {
            i += 1;
            (
                a[i - 1].0,
                "range recorded but no longer mapped by the image",
            )
        } else if i == a.len() || b[j].0 < a[i].0 {
            j += 1;
            (b[j - 1].0, "range mapped by the image but not recorded")
        } else {
            i += 1;
            j += 1;
            if a[i - 1].1 == b[j - 1].1 {
                continue;
            }
            (a[i - 1].0, "data differs from its digest")
        };
        out.push(Mismatch {
            guest_offset: index * GRANULARITY,
            what,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ranges: &[(u64, u8)]) -> Digests {
        Digests {
            virtual_size: 64 * GRANULARITY,
            ranges: ranges.iter().map(|&(i, b)| (i, [b; 32])).collect(),
        }
    }

    #[test]
    fn encodes_and_refuses_bad_files() {
        let x = d(&[(0, 1), (3, 2), (63, 3)]);
        let bytes = x.encode();
        assert_eq!(Digests::decode(&bytes).unwrap(), x);
        assert!(Digests::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Digests::decode(b"short").is_err());
        let mut wrong = bytes.clone();
        wrong[0] ^= 1;
        assert!(Digests::decode(&wrong).is_err());
        let unsorted = d(&[(3, 1), (2, 1)]).encode();
        assert!(Digests::decode(&unsorted).is_err());
        assert!(Digests::decode(&d(&[(64, 1)]).encode()).is_err());
    }

    #[test]
    fn compare_locates_each_difference() {
        let a = d(&[(0, 1), (2, 2), (5, 3)]);
        let b = d(&[(0, 1), (2, 9), (4, 3)]);
        let m = compare(&a, &b, 10);
        let offsets: Vec<u64> = m.iter().map(|m| m.guest_offset / GRANULARITY).collect();
        assert_eq!(offsets, [2, 4, 5]);
        assert_eq!(compare(&a, &a, 10), []);
        assert_eq!(compare(&a, &b, 1).len(), 1);
    }

    #[test]
    fn runs_are_part_of_the_digest() {
        // The same bytes mapped at another place in the range are another range.
        assert_ne!(digest_of(&[(0, 4)], b"abcd"), digest_of(&[(4, 4)], b"abcd"));
        assert_ne!(
            digest_of(&[(0, 2), (2, 2)], b"abcd"),
            digest_of(&[(0, 4)], b"abcd")
        );
    }
}
