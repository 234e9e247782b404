//! Who may hold a connection: handshakes and established connections are counted apart, so
//! clients that connect and say nothing cannot keep others from reaching an export.
//!
//! - Established connections (past the handshake) are limited by `max_connections`; past it a new
//!   connection is refused.
//! - Handshakes in progress (a TLS handshake after STARTTLS is one) are limited by
//!   `max_handshakes`. When the table is full a new connection is never refused: the oldest
//!   handshake of the address holding the most is dropped to make room. So one address cannot push
//!   out another's handshakes while it holds more, and a new connection from an address is never
//!   turned away because of that address's own older silent handshakes (in the Sendense
//!   deployment every client, the SNA too, arrives from 127.0.0.1 through the SSH tunnel).
//! - Refusals are logged at most once per [`REFUSAL_LOG_EVERY`], with the number left unsaid.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Least time between two refusal log lines.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Limits, copied from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_handshakes: usize,
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ServerFull,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::ServerFull => "server has too many connections",
        }
    }
}

/// A handshake in progress. `addr` is `None` for a Unix socket: all of those count as one
/// address.
struct Handshake {
    id: u64,
    addr: Option<IpAddr>,
    evicted: CancellationToken,
}

#[derive(Default)]
struct Counts {
    established: usize,
    next_id: u64,
    /// Handshakes in progress, oldest first.
    handshakes: VecDeque<Handshake>,
    per_address: HashMap<Option<IpAddr>, usize>,
}

impl Counts {
    /// Drops the oldest handshake of the address holding the most (of those, the one whose
    /// handshake is oldest). The table is small (`max_handshakes`), so a scan is cheap.
    fn evict_one(&mut self) {
        let Some(most) = self.per_address.values().copied().max() else {
            return;
        };
        let Some(i) = self
            .handshakes
            .iter()
            .position(|h| self.per_address.get(&h.addr) == Some(&most))
        else {
            return;
        };
        if let Some(h) = self.handshakes.remove(i) {
            h.evicted.cancel();
            self.forget_address(h.addr);
        }
    }

    fn forget_address(&mut self, addr: Option<IpAddr>) {
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }

    /// Removes handshake `id` if it is still in the table (an evicted one is not).
    fn release_handshake(&mut self, id: u64) {
        if let Some(i) = self.handshakes.iter().position(|h| h.id == id)
            && let Some(h) = self.handshakes.remove(i)
        {
            self.forget_address(h.addr);
        }
    }
}

pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    log: RefusalLog,
}

/// A connection's place: a handshake slot, then (after [`Ticket::establish`]) a connection slot.
/// Dropping it gives the place back.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    established: bool,
    /// Cancelled when a newer handshake needs the slot.
    pub evicted: CancellationToken,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Mutex::new(Counts::default()),
            log: RefusalLog::default(),
        }
    }

    /// A handshake slot for a new connection from `addr` (`None`: a Unix socket), or why not.
    pub fn admit(self: &Arc<Self>, addr: Option<IpAddr>) -> Result<Ticket, Refusal> {
        let mut c = self.counts.lock();
        if c.established >= self.limits.max_connections {
            return Err(Refusal::ServerFull);
        }
        while c.handshakes.len() >= self.limits.max_handshakes.max(1) {
            c.evict_one();
        }
        let id = c.next_id;
        c.next_id += 1;
        let evicted = CancellationToken::new();
        c.handshakes.push_back(Handshake {
            id,
            addr,
            evicted: evicted.clone(),
        });
        *c.per_address.entry(addr).or_default() += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
            established: false,
            evicted,
        })
    }

    /// Logs `refusal` unless a refusal was logged less than [`REFUSAL_LOG_EVERY`] ago.
    pub fn log_refusal(&self, refusal: Refusal, peer: &str) {
        if let Some(unsaid) = self.log.should_log(Instant::now()) {
            tracing::warn!(
                %peer,
                refused_since_last_report = unsaid,
                "connection refused: {}",
                refusal.reason()
            );
        }
    }
}

impl Ticket {
    /// The handshake ended well: the handshake slot becomes a connection slot, if one is free.
    pub fn establish(&mut self) -> Result<(), Refusal> {
        let mut c = self.admission.counts.lock();
        c.release_handshake(self.id);
        if c.established >= self.admission.limits.max_connections {
            // Nothing left to release on drop.
            self.established = false;
            self.id = u64::MAX;
            return Err(Refusal::ServerFull);
        }
        c.established += 1;
        self.established = true;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        if self.established {
            c.established -= 1;
        } else {
            c.release_handshake(self.id);
        }
    }
}

/// Says when to log a refusal: the first, then at most one per [`REFUSAL_LOG_EVERY`], reporting
/// how many went unlogged in between.
#[derive(Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// `Some(unlogged refusals before this one)` when this refusal should be logged.
    fn should_log(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        match s.0 {
            Some(last) if now.duration_since(last) < REFUSAL_LOG_EVERY => {
                s.1 += 1;
                None
            }
            _ => {
                let unsaid = s.1;
                *s = (Some(now), 0);
                Some(unsaid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_connections: usize, max_handshakes: usize) -> Arc<Admission> {
        Arc::new(Admission::new(Limits {
            max_connections,
            max_handshakes,
        }))
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_full_handshake_table_drops_its_oldest_entry() {
        let a = admission(10, 2);
        let first = a.admit(ip(1)).unwrap();
        let second = a.admit(ip(2)).unwrap();
        let third = a.admit(ip(3)).unwrap();
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        drop(first);
        // The evicted ticket's drop did not free a slot it no longer had.
        let fourth = a.admit(ip(4)).unwrap();
        assert!(second.evicted.is_cancelled());
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
    }

    #[test]
    fn an_address_is_never_refused_for_its_own_silent_handshakes() {
        let a = admission(256, 64);
        let silent: Vec<Ticket> = (0..200).map(|_| a.admit(ip(1)).unwrap()).collect();
        // The newest 64 hold the table; the older ones made room for them, oldest first.
        assert!(silent[..136].iter().all(|t| t.evicted.is_cancelled()));
        assert!(silent[136..].iter().all(|t| !t.evicted.is_cancelled()));
        let mut client = a.admit(ip(1)).unwrap();
        assert!(silent[136].evicted.is_cancelled());
        assert!(!silent[137].evicted.is_cancelled());
        client.establish().unwrap();
        assert_eq!(a.counts.lock().handshakes.len(), 63);
    }

    #[test]
    fn a_flooding_address_pushes_out_its_own_handshakes_never_anothers() {
        let a = admission(256, 4);
        let other = a.admit(ip(2)).unwrap();
        let unix = a.admit(None).unwrap();
        let flood: Vec<Ticket> = (0..50).map(|_| a.admit(ip(1)).unwrap()).collect();
        assert!(!other.evicted.is_cancelled() && !unix.evicted.is_cancelled());
        assert!(flood[..48].iter().all(|t| t.evicted.is_cancelled()));
        assert!(flood[48..].iter().all(|t| !t.evicted.is_cancelled()));
        // Once the shares are even, the oldest of the tied addresses goes first.
        drop(flood);
        let _more = [a.admit(ip(3)).unwrap(), a.admit(ip(4)).unwrap()];
        let late = a.admit(ip(5)).unwrap();
        assert!(other.evicted.is_cancelled() && !unix.evicted.is_cancelled());
        assert!(!late.evicted.is_cancelled());
        let counts = a.counts.lock();
        assert_eq!(counts.handshakes.len(), 4);
        assert_eq!(counts.per_address.values().sum::<usize>(), 4);
    }

    #[test]
    fn established_connections_are_counted_apart_from_handshakes() {
        let a = admission(1, 1);
        let mut t = a.admit(ip(1)).unwrap();
        t.establish().unwrap();
        // The handshake slot is free again; the connection slot is taken.
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::ServerFull));
        let mut late = {
            drop(t);
            a.admit(ip(1)).unwrap()
        };
        let mut other = a.admit(ip(2)).unwrap();
        assert!(late.evicted.is_cancelled(), "one handshake slot");
        late.establish().unwrap();
        assert_eq!(other.establish(), Err(Refusal::ServerFull));
        drop(other);
        drop(late);
        assert!(a.admit(ip(1)).is_ok());
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_the_count_left_unsaid() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.should_log(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(log.should_log(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.should_log(t0 + REFUSAL_LOG_EVERY), Some(1000));
        assert_eq!(log.should_log(t0 + REFUSAL_LOG_EVERY), None);
    }
}
