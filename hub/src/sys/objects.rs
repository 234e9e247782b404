//! An object in a bucket read as a qcow2 `Storage`: ranged GETs of 4 MiB chunks through one
//! cache shared by every image read from buckets, bounded in bytes and held in memory, so a
//! restore from a bucket downloads nothing first and uses no local disk at all.
//!
//! `qcow2` is synchronous: a read blocks its thread (an export engine's worker or a blocking
//! task, never a runtime thread) on the GET. Two readers of one chunk share one GET (the chunk's
//! slot fills once), each read starts the next `AHEAD` chunks in the background, and the least
//! recently used chunks go first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;

/// Bytes per ranged GET: large enough that a sequential restore is a few requests per second
/// per stream, small enough that a metadata read (an L2 table) costs little.
pub const CHUNK: u64 = 4 << 20;

/// What the hub keeps of objects read from buckets, all restores together.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

type ChunkId = (Arc<str>, u64);

/// Chunks fetched ahead of a read, in the background: a restore reads sequentially, and several
/// GETs in flight keep the store busy where one at a time waits on each round trip.
const AHEAD: u64 = 8;

struct Slot {
    /// Filled once, by whichever reader or read-ahead gets there first; the others wait for it.
    data: tokio::sync::OnceCell<Bytes>,
    /// A read-ahead was started for it (not started twice).
    ahead: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    slots: HashMap<ChunkId, Arc<Slot>>,
    /// Filled chunks, least recently used first.
    order: VecDeque<ChunkId>,
    bytes: u64,
}

/// The chunks of objects read lately, bounded in bytes.
pub struct ChunkCache {
    budget: u64,
    state: Mutex<State>,
}

impl ChunkCache {
    pub fn new(budget: u64) -> ChunkCache {
        ChunkCache {
            budget: budget.max(CHUNK * (AHEAD + 1)),
            state: Mutex::new(State::default()),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    fn slot(&self, id: &ChunkId) -> Arc<Slot> {
        let mut st = self.state.lock();
        st.slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    data: tokio::sync::OnceCell::new(),
                    ahead: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn touch(&self, id: &ChunkId) {
        let mut st = self.state.lock();
        if let Some(at) = st.order.iter().rposition(|o| o == id) {
            if at + 1 != st.order.len() {
                let id = st.order.remove(at).expect("found");
                st.order.push_back(id);
            }
        }
    }

    /// A chunk was filled: count it, and drop the least recently used ones over the budget
    /// (readers holding one keep it until they are done). A slot evicted while it was fetched
    /// is not counted: nothing holds it any more.
    fn filled(&self, id: ChunkId, slot: &Arc<Slot>, len: u64) {
        let mut st = self.state.lock();
        if !st.slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        st.bytes += len;
        st.order.push_back(id.clone());
        while st.bytes > self.budget {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if old == id {
                st.order.push_back(old);
                break;
            }
            if let Some(slot) = st.slots.remove(&old) {
                st.bytes -= slot.data.get().map_or(0, |b| b.len() as u64);
            }
        }
    }
}

/// One object, read-only. Cheap to clone (a read-ahead takes a clone).
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    key: Arc<Key>,
    id: Arc<str>,
    len: u64,
    cache: Arc<ChunkCache>,
    runtime: tokio::runtime::Handle,
}

impl ObjectStorage {
    /// `len` is the object's size as the copy recorded it (a shorter object fails its reads).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: Key,
        len: u64,
        cache: Arc<ChunkCache>,
        runtime: tokio::runtime::Handle,
    ) -> ObjectStorage {
        ObjectStorage {
            id: Arc::from(format!("{key}")),
            store,
            key: Arc::new(key),
            len,
            cache,
            runtime,
        }
    }

    fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK)
    }

    /// The chunk's bytes, fetched once and counted in the cache.
    async fn fill(&self, index: u64, slot: &Arc<Slot>) -> io::Result<Bytes> {
        let got = slot
            .data
            .get_or_try_init(|| async {
                let start = index * CHUNK;
                let end = (start + CHUNK).min(self.len);
                let got = self
                    .store
                    .get_range(&self.key, start..end)
                    .await
                    .map_err(|e| io::Error::other(format!("{}: {e}", self.key)))?;
                if got.len() as u64 != end - start {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: {} bytes at {start}, {} expected (a truncated object)",
                            self.key,
                            got.len(),
                            end - start
                        ),
                    ));
                }
                self.cache
                    .filled((self.id.clone(), index), slot, got.len() as u64);
                Ok(got)
            })
            .await?;
        Ok(got.clone())
    }

    /// The next `AHEAD` chunks fetched in the background, each once.
    fn read_ahead(&self, index: u64) {
        for next in (index + 1..=index + AHEAD).take_while(|&i| i < self.chunks()) {
            let slot = self.cache.slot(&(self.id.clone(), next));
            if slot.data.initialized() || slot.ahead.swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                continue;
            }
            let this = self.clone();
            self.runtime.spawn(async move {
                // A failure here is the reader's to meet (and say) when it gets there.
                let _ = this.fill(next, &slot).await;
            });
        }
    }

    fn chunk(&self, index: u64) -> io::Result<Bytes> {
        let id = (self.id.clone(), index);
        let slot = self.cache.slot(&id);
        self.read_ahead(index);
        if let Some(bytes) = slot.data.get() {
            let bytes = bytes.clone();
            self.cache.touch(&id);
            return Ok(bytes);
        }
        self.runtime.block_on(self.fill(index, &slot))
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "an object in a bucket is read-only here",
    )
}

impl qcow2::Storage for ObjectStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut at = offset;
        while at < end {
            let index = at / CHUNK;
            let chunk = self.chunk(index)?;
            let within = (at - index * CHUNK) as usize;
            let n = (chunk.len() - within).min((end - at) as usize);
            let dst = (at - offset) as usize;
            buf[dst..dst + n].copy_from_slice(&chunk[within..within + n]);
            at += n as u64;
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn allocate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn reserve_pays(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_budget_and_keeps_what_is_used() {
        let cache = ChunkCache::new(0);
        let budget = cache.budget / CHUNK;
        let id = |i: u64| (Arc::<str>::from("k"), i);
        let fill = |i: u64| {
            let slot = cache.slot(&id(i));
            slot.data
                .set(Bytes::from(vec![0u8; CHUNK as usize]))
                .unwrap();
            cache.filled(id(i), &slot, CHUNK);
        };
        for i in 0..budget {
            fill(i);
        }
        cache.touch(&id(0));
        fill(budget);
        assert_eq!(cache.bytes(), budget * CHUNK);
        let st = cache.state.lock();
        assert!(st.slots.contains_key(&id(0)), "the chunk used last stays");
        assert!(
            !st.slots.contains_key(&id(1)),
            "the least recently used goes"
        );
    }
}
