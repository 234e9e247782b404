//! Buffers for READ replies, reused across requests and exports.
//!
//! A fresh buffer per READ cost more than the read itself: `vec![0; len]` of 256 KiB or more is a
//! new mapping, so every 4 KiB page faulted in and was zeroed, then unmapped after the reply was
//! sent (page faults, `clear_page` and `memset` together ~23% of the server's CPU reading a 4 GiB
//! image with nbdcopy). A buffer here goes back to the pool when the last `Bytes` of the reply is
//! dropped, after the connection wrote it, and keeps its initialised length, so reads of one size
//! neither fault nor zero once warm.

use std::sync::LazyLock;

use bytes::Bytes;
use parking_lot::Mutex;

/// Idle bytes kept for reuse at most, over all exports. Replies in flight are bounded by the NBD
/// server's payload budget, not by this; a steady stream of reads keeps few buffers idle, as each
/// one returned is taken by the next read.
const MAX_IDLE_BYTES: usize = 32 << 20;
/// Smaller buffers are cheap to allocate: not kept.
const MIN_KEPT: usize = 64 << 10;

static POOL: LazyLock<Mutex<Vec<Vec<u8>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// A buffer of exactly `len` initialised bytes (contents unspecified: the caller overwrites them).
pub(crate) fn take(len: usize) -> Vec<u8> {
    let reused = if len >= MIN_KEPT {
        let mut pool = POOL.lock();
        // The smallest that fits, so large buffers stay for large reads.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    } else {
        None
    };
    let mut buf = reused.unwrap_or_default();
    // Only bytes never initialised before are zeroed (all of a new buffer, none of a reused one
    // that served a read at least this long).
    buf.resize(len, 0);
    buf
}

/// Freezes `buf` into the reply's bytes; the buffer returns to the pool when they are dropped.
pub(crate) fn reply(buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN_KEPT {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled(buf))
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
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
        let mut buf = take(len);
        assert_eq!(buf.len(), len);
        buf.fill(0xab);
        let ptr = buf.as_ptr();
        let bytes = reply(buf);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(clone[len - 1], 0xab, "still referenced: not reused yet");
        drop(clone);
        let again = take(len - 4096);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), len - 4096);
        reply(again);
    }

    #[test]
    fn small_buffers_are_not_kept() {
        let b = reply(take(4096));
        assert_eq!(b.len(), 4096);
    }
}
