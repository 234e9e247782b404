//! Payload buffers handed back after the export is done with them, so the next WRITE payload lands
//! in memory that is already mapped: a fresh multi-megabyte allocation per request costs a page
//! fault per 4 KiB, which showed up as most of the server's CPU time.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

/// Buffers smaller than this are cheap to allocate and not kept.
const MIN_POOLED: usize = 64 * 1024;

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

    /// An empty buffer with room for `len` bytes.
    pub fn take(&self, len: usize) -> BytesMut {
        if len >= MIN_POOLED {
            let mut bufs = self.bufs.lock();
            // Smallest buffer that fits, so big ones stay for big payloads.
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return bufs.swap_remove(i);
            }
        }
        BytesMut::with_capacity(len)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_returned_buffers_within_the_limit() {
        let pool = BufPool::new(1 << 20);
        let mut b = pool.take(256 * 1024);
        b.resize(256 * 1024, 7);
        let ptr = b.as_ptr();
        let frozen = b.freeze();
        let held = frozen.clone();
        // Still referenced elsewhere: not reclaimed.
        pool.give(frozen);
        assert!(pool.bufs.lock().is_empty());
        pool.give(held);
        let again = pool.take(100 * 1024);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        // Too big for the pool: dropped.
        let big = BytesMut::with_capacity(2 << 20);
        pool.give(big.freeze());
        assert!(pool.bufs.lock().is_empty());
    }
}
