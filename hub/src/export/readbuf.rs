//! Buffers for READ replies, reused across requests and exports.
//!
//! A fresh buffer per READ cost more than the read itself: `vec![0; len]` of 256 KiB or more is a
//! new mapping, so every 4 KiB page faulted in and was zeroed, then unmapped after the reply was
//! sent (page faults, `clear_page` and `memset` together ~23% of the server's CPU reading a 4 GiB
//! image with nbdcopy). A buffer here goes back to the pool when the last `Bytes` of the reply is
//! dropped, after the connection wrote it, and keeps its initialised length, so reads of one size
//! neither fault nor zero once warm.
//!
//! The reply starts at the export's I/O alignment, so a direct-I/O image reads into it without a
//! bounce copy. Hub has no unsafe code, so a buffer is over-allocated by the alignment and the
//! reply starts at its first aligned byte; the allocation never moves while pooled, so that offset
//! stays valid for every later read with the same alignment.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::Bytes;
use parking_lot::Mutex;
use qcow2::storage::AlignedBuf;

/// Idle bytes kept for reuse at most, over all exports. Replies in flight are bounded by the NBD
/// server's payload budget, not by this; a steady stream of reads keeps few buffers idle, as each
/// one returned is taken by the next read.
const MAX_IDLE_BYTES: usize = 32 << 20;
/// Smaller buffers are cheap to allocate: not kept.
const MIN_KEPT: usize = 64 << 10;

static POOL: LazyLock<Mutex<Vec<Vec<u8>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// A buffer of exactly `len` initialised bytes whose first byte is at an address aligned to
/// `align` (a power of two; 1 for none). Contents unspecified: the caller overwrites them.
pub(crate) fn take(len: usize, align: usize) -> AlignedBuf {
    let align = align.max(1);
    let reused = if len >= MIN_KEPT {
        let mut pool = POOL.lock();
        // The smallest that fits, so large buffers stay for large reads.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| AlignedBuf::fits(b, len, align))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    } else {
        None
    };
    // Only bytes never initialised before are zeroed (all of a new buffer, none of a reused one
    // that served a read at least this long); a shorter read keeps the longer initialised length.
    AlignedBuf::reuse(reused.unwrap_or_default(), len, align)
}

/// Freezes `buf` into the reply's bytes; the buffer returns to the pool when they are dropped.
pub(crate) fn reply(buf: AlignedBuf) -> Bytes {
    let (vec, range) = buf.into_parts();
    if vec.capacity() < MIN_KEPT {
        return Bytes::from(vec).slice(range);
    }
    Bytes::from_owner(Pooled { vec, range })
}

/// A reply's bytes, `range` of `vec`; `vec` goes back to the pool when the reply is dropped.
struct Pooled {
    vec: Vec<u8>,
    range: Range<usize>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.vec[self.range.clone()]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.vec);
        let mut pool = POOL.lock();
        let idle: usize = pool.iter().map(Vec::capacity).sum();
        if idle + buf.capacity() <= MAX_IDLE_BYTES {
            pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reply_gives_its_buffer_to_the_next_read() {
        // Other tests may use the pool at the same time: only ask for a size nobody else does.
        let len = (256 << 10) + 4096 * 7;
        let mut buf = take(len, 1);
        assert_eq!(buf.len(), len);
        buf.fill(0xab);
        let ptr = buf.as_ptr();
        let bytes = reply(buf);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(clone[len - 1], 0xab, "still referenced: not reused yet");
        drop(clone);
        let again = take(len - 4096, 1);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), len - 4096);
        reply(again);
    }

    #[test]
    fn small_buffers_are_not_kept() {
        let b = reply(take(4096, 1));
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn replies_start_at_the_alignment_asked_for_and_warm_buffers_stay_aligned() {
        for (len, align) in [(4096, 4096), (512, 512), ((256 << 10) + 4096 * 5, 4096)] {
            let mut buf = take(len, align);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % align, 0, "{len} bytes at {align}");
            buf.fill(0xcd);
            let ptr = buf.as_ptr();
            let bytes = reply(buf);
            assert_eq!(bytes.as_ptr(), ptr, "the reply starts at the aligned byte");
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().all(|&b| b == 0xcd));
            drop(bytes);
            let again = take(len, align);
            assert_eq!(again.as_ptr() as usize % align, 0);
            if len >= MIN_KEPT {
                assert_eq!(
                    again.as_ptr(),
                    ptr,
                    "a warm buffer is reused at the same start"
                );
                assert_eq!(again[len - 1], 0xcd, "and not zeroed again");
            }
            reply(again);
        }
    }
}
