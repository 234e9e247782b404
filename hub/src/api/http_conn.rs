//! Limits on API connections, so slow or silent clients cannot hold the hub's sockets and file
//! descriptors (which the NBD server needs too):
//! - a connection with no request running and no byte moving for `idle_timeout` is closed,
//!   counted from accept (a client that never sends a byte is closed too);
//! - at most `max_connections` at once: a new one pushes out the connection idle longest, and is
//!   refused only when every connection is running a request;
//! - a request body must arrive within `body_timeout` of its head.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
}

/// The API's live connections.
pub struct Connections {
    limits: Limits,
    live: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

/// What one connection is doing: when a byte last moved, how many requests run.
pub struct Activity {
    born: Instant,
    /// Milliseconds after `born` a byte last moved.
    last_ms: AtomicU64,
    busy: AtomicUsize,
    /// Cancelled when a newer connection needs the place.
    evicted: CancellationToken,
}

/// A connection's place; dropping it frees the place.
pub struct Slot {
    connections: Arc<Connections>,
    id: u64,
    pub activity: Arc<Activity>,
}

/// Marks a request as running on its connection while it lives.
pub struct Busy(Arc<Activity>);

impl Connections {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A place for a new connection, making room by closing the connection idle longest;
    /// `None` when every connection is running a request.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut live = self.live.lock();
        let open = live.values().filter(|a| !a.evicted.is_cancelled());
        if open.count() >= self.limits.max_connections.max(1) {
            let victim = live
                .values()
                .filter(|a| !a.evicted.is_cancelled())
                .filter_map(|a| a.idle_for().map(|idle| (idle, a)))
                .max_by_key(|(idle, _)| *idle)?;
            victim.1.evicted.cancel();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
        });
        live.insert(id, Arc::clone(&activity));
        Some(Slot {
            connections: Arc::clone(self),
            id,
            activity,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.live.lock().remove(&self.id);
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long nothing has happened; `None` while a request runs.
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.born.elapsed().saturating_sub(last))
    }

    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Resolves when the connection should be closed: idle for `idle`, or pushed out.
    pub async fn expired(&self, idle: Duration) {
        loop {
            let wait = match self.idle_for() {
                None => idle,
                Some(d) if d >= idle => return,
                Some(d) => idle - d,
            };
            tokio::select! {
                _ = self.evicted.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle time counts from the end of the request.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records on its connection's [`Activity`] when bytes move.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes, so a client trickling a body cannot hold
/// a request (and its connection) open.
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body did not arrive in time")]
pub struct BodyTimedOut;

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize) -> Arc<Connections> {
        Arc::new(Connections::new(Limits {
            max_connections: max,
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
        }))
    }

    #[test]
    fn a_full_table_pushes_out_the_longest_idle_and_spares_busy_ones() {
        let c = connections(2);
        let oldest = c.admit().unwrap();
        let _busy = oldest.activity.busy();
        std::thread::sleep(Duration::from_millis(5));
        let idle = c.admit().unwrap();
        let _third = c.admit().unwrap();
        assert!(
            !oldest.activity.evicted.is_cancelled(),
            "a busy connection was pushed out"
        );
        assert!(idle.activity.evicted.is_cancelled());
    }

    #[test]
    fn a_table_of_busy_connections_refuses_newcomers() {
        let c = connections(1);
        let only = c.admit().unwrap();
        let busy = only.activity.busy();
        assert!(c.admit().is_none());
        drop(busy);
        assert!(c.admit().is_some());
        assert!(only.activity.evicted.is_cancelled());
    }
}
