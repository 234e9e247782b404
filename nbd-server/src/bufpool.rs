//! Payload buffers handed back after the export is done with them, so the next WRITE payload lands
//! in memory that is already mapped: a fresh multi-megabyte allocation per request costs a page
//! fault per 4 KiB, which showed up as most of the server's CPU time.
//!
//! Buffers start at the address alignment the export asks for ([`crate::Export::buffer_alignment`]),
//! so a direct-I/O export writes a payload to disk without copying it into an aligned buffer first.

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;

/// Buffers smaller than this are cheap to allocate and not kept.
const MIN_POOLED: usize = 64 * 1024;

/// Largest alignment honoured (direct I/O asks for 512 B or 4 KiB); a bigger or odd request gets
/// ordinary buffers.
const MAX_ALIGN: usize = 64 * 1024;

pub(crate) struct BufPool {
    bufs: Mutex<Vec<BytesMut>>,
    max_bytes: usize,
}

impl BufPool {
    /// A pool keeping at most `max_bytes` of idle buffers.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// An empty buffer with room for `len` bytes, starting at an address aligned to `align`.
    pub fn take(&self, len: usize, align: usize) -> BytesMut {
        let align = if align.is_power_of_two() && align <= MAX_ALIGN {
            align
        } else {
            1
        };
        if len >= MIN_POOLED {
            let mut bufs = self.bufs.lock();
            // Smallest buffer that fits, so big ones stay for big payloads.
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.as_ptr().align_offset(align) == 0)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return bufs.swap_remove(i);
            }
        }
        aligned_with_capacity(len, align)
    }

    /// Takes a payload back if nobody else holds it any more.
    pub fn give(&self, data: Bytes) {
        let Ok(mut buf) = data.try_into_mut() else {
            return;
        };
        if buf.capacity() < MIN_POOLED || buf.capacity() > self.max_bytes {
            return;
        }
        buf.clear();
        let mut bufs = self.bufs.lock();
        let held: usize = bufs.iter().map(|b| b.capacity()).sum();
        if held + buf.capacity() <= self.max_bytes {
            bufs.push(buf);
        }
    }
}

/// An empty buffer with room for `len` bytes whose first byte is at an address aligned to
/// `align`, without unsafe code: one `align` bytes larger, with the bytes before the first aligned
/// address filled and consumed. The buffer keeps that start when frozen and reclaimed.
fn aligned_with_capacity(len: usize, align: usize) -> BytesMut {
    if align <= 1 {
        return BytesMut::with_capacity(len);
    }
    let mut b = BytesMut::with_capacity(len + align);
    let pad = b.as_ptr().align_offset(align);
    b.resize(pad, 0);
    b.advance(pad);
    debug_assert!(b.capacity() >= len && b.as_ptr().align_offset(align) == 0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_returned_buffers_within_the_limit() {
        let pool = BufPool::new(1 << 20);
        let mut b = pool.take(256 * 1024, 1);
        b.resize(256 * 1024, 7);
        let ptr = b.as_ptr();
        let frozen = b.freeze();
        let held = frozen.clone();
        // Still referenced elsewhere: not reclaimed.
        pool.give(frozen);
        assert!(pool.bufs.lock().is_empty());
        pool.give(held);
        let again = pool.take(100 * 1024, 1);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        // Too big for the pool: dropped.
        let big = BytesMut::with_capacity(2 << 20);
        pool.give(big.freeze());
        assert!(pool.bufs.lock().is_empty());
    }

    #[test]
    fn buffers_keep_the_asked_alignment_through_reuse() {
        let pool = BufPool::new(8 << 20);
        for align in [512, 4096] {
            let mut b = pool.take(2 << 20, align);
            assert_eq!(b.as_ptr().align_offset(align), 0);
            assert!(b.capacity() >= 2 << 20 && b.is_empty());
            b.resize(2 << 20, 1);
            let ptr = b.as_ptr();
            // Frozen, handed on, reclaimed: the same aligned start comes back.
            let frozen = b.freeze();
            assert_eq!(frozen.as_ptr(), ptr);
            pool.give(frozen);
            let again = pool.take(2 << 20, align);
            assert_eq!(again.as_ptr(), ptr);
            pool.give(again.freeze());
        }
        // A pooled buffer not aligned enough is not handed out for a stricter alignment.
        let odd = BytesMut::with_capacity((1 << 20) + 1);
        let mut odd = odd;
        odd.resize(1, 0);
        odd.advance(1);
        let odd_ptr = odd.as_ptr();
        pool.bufs.lock().clear();
        pool.bufs.lock().push(odd);
        let b = pool.take(1 << 20, 4096);
        assert_ne!(b.as_ptr(), odd_ptr);
        assert_eq!(b.as_ptr().align_offset(4096), 0);
        // Nonsense alignments get ordinary buffers.
        assert!(pool.take(1 << 16, 3).capacity() >= 1 << 16);
    }
}
