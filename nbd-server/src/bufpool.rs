//! Payload buffers handed back after the export is done with them, so the next WRITE payload lands
//! in memory that is already mapped: a fresh multi-megabyte allocation per request costs a page
//! fault per 4 KiB, which showed up as most of the server's CPU time.
//!
//! Buffers start at the address alignment the export asks for ([`crate::Export::buffer_alignment`]),
//! so a direct-I/O export writes a payload to disk without copying it into an aligned buffer first.
//!
//! A pooled buffer is memory already in use, while the payload budget is taken only as a payload
//! arrives; so the pooled buffers lent to payloads still arriving are bounded too ([`Lease`]), or
//! clients that announce large WRITEs and stall could hold any number of them.

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;

/// Buffers smaller than this are cheap to allocate and not kept.
const MIN_POOLED: usize = 64 * 1024;

/// Largest alignment honoured (direct I/O asks for 512 B or 4 KiB); a bigger or odd request gets
/// ordinary buffers.
const MAX_ALIGN: usize = 64 * 1024;

pub(crate) struct BufPool {
    state: Mutex<State>,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    /// Idle buffers.
    bufs: Vec<BytesMut>,
    /// Capacity of pooled buffers lent to payloads still arriving.
    lent: usize,
}

/// A pooled buffer's capacity, counted as lent until the payload it holds has arrived.
pub(crate) struct Lease<'a> {
    pool: &'a BufPool,
    bytes: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.pool.state.lock().lent -= self.bytes;
        }
    }
}

impl BufPool {
    /// A pool keeping at most `max_bytes` of idle buffers, and lending at most as much.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_bytes,
        }
    }

    /// An empty buffer with room for `len` bytes, starting at an address aligned to `align`:
    /// a pooled one unless that would lend out more than the pool's size, else fresh memory
    /// (which fills only as bytes arrive).
    pub fn lend(&self, len: usize, align: usize) -> (BytesMut, Lease<'_>) {
        let align = if align.is_power_of_two() && align <= MAX_ALIGN {
            align
        } else {
            1
        };
        if len >= MIN_POOLED {
            let mut st = self.state.lock();
            // Smallest buffer that fits, so big ones stay for big payloads.
            let best = st
                .bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.as_ptr().align_offset(align) == 0)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, b)| (i, b.capacity()));
            if let Some((i, bytes)) = best
                && st.lent + bytes <= self.max_bytes
            {
                st.lent += bytes;
                let buf = st.bufs.swap_remove(i);
                return (buf, Lease { pool: self, bytes });
            }
        }
        let lease = Lease {
            pool: self,
            bytes: 0,
        };
        (aligned_with_capacity(len, align), lease)
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
        let mut st = self.state.lock();
        let held: usize = st.bufs.iter().map(|b| b.capacity()).sum();
        if held + buf.capacity() <= self.max_bytes {
            st.bufs.push(buf);
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
        let mut b = pool.lend(256 * 1024, 1).0;
        b.resize(256 * 1024, 7);
        let ptr = b.as_ptr();
        let frozen = b.freeze();
        let held = frozen.clone();
        // Still referenced elsewhere: not reclaimed.
        pool.give(frozen);
        assert!(pool.state.lock().bufs.is_empty());
        pool.give(held);
        let again = pool.lend(100 * 1024, 1).0;
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        // Too big for the pool: dropped.
        let big = BytesMut::with_capacity(2 << 20);
        pool.give(big.freeze());
        assert!(pool.state.lock().bufs.is_empty());
    }

    #[test]
    fn buffers_keep_the_asked_alignment_through_reuse() {
        let pool = BufPool::new(8 << 20);
        for align in [512, 4096] {
            let mut b = pool.lend(2 << 20, align).0;
            assert_eq!(b.as_ptr().align_offset(align), 0);
            assert!(b.capacity() >= 2 << 20 && b.is_empty());
            b.resize(2 << 20, 1);
            let ptr = b.as_ptr();
            // Frozen, handed on, reclaimed: the same aligned start comes back.
            let frozen = b.freeze();
            assert_eq!(frozen.as_ptr(), ptr);
            pool.give(frozen);
            let again = pool.lend(2 << 20, align).0;
            assert_eq!(again.as_ptr(), ptr);
            pool.give(again.freeze());
        }
        // A pooled buffer not aligned enough is not handed out for a stricter alignment.
        let odd = BytesMut::with_capacity((1 << 20) + 1);
        let mut odd = odd;
        odd.resize(1, 0);
        odd.advance(1);
        let odd_ptr = odd.as_ptr();
        pool.state.lock().bufs.clear();
        pool.state.lock().bufs.push(odd);
        let b = pool.lend(1 << 20, 4096).0;
        assert_ne!(b.as_ptr(), odd_ptr);
        assert_eq!(b.as_ptr().align_offset(4096), 0);
        // Nonsense alignments get ordinary buffers.
        assert!(pool.lend(1 << 16, 3).0.capacity() >= 1 << 16);
    }

    #[test]
    fn pooled_buffers_lent_to_arriving_payloads_are_bounded() {
        let pool = BufPool::new(4 << 20);
        let full = |mut b: BytesMut| {
            b.resize(2 << 20, 1);
            b.freeze()
        };
        for _ in 0..2 {
            pool.give(full(BytesMut::with_capacity(2 << 20)));
        }
        let (a, lease_a) = pool.lend(2 << 20, 1);
        let (b, lease_b) = pool.lend(2 << 20, 1);
        assert_eq!(pool.state.lock().lent, 4 << 20);
        // Back in the pool, but the leases are still out: a third payload gets fresh memory.
        pool.give(full(a));
        let (c, lease_c) = pool.lend(2 << 20, 1);
        assert_eq!(lease_c.bytes, 0);
        assert_eq!(pool.state.lock().bufs.len(), 1);
        drop((lease_a, lease_b, lease_c, b, c));
        assert_eq!(pool.state.lock().lent, 0);
        let (_, lease) = pool.lend(2 << 20, 1);
        assert_eq!(lease.bytes, 2 << 20);
    }
}
