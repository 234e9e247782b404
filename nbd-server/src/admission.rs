//! Who may hold a connection: handshakes and established connections are counted apart, so
//! clients that connect and say nothing cannot keep others from reaching an export.
//!
//! - Established connections (past the handshake) are limited by `max_connections`.
//! - Handshakes in progress are limited by `max_handshakes`; when that is reached, the oldest
//!   handshake is dropped to make room (a silent client loses its place to one that talks).
//! - One address may hold `max_handshakes_per_address` handshakes at most; past that its new
//!   connections are refused instead of pushing out other addresses' handshakes.
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
    pub max_handshakes_per_address: usize,
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ServerFull,
    AddressBusy,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::ServerFull => "server has too many connections",
            Refusal::AddressBusy => "too many handshakes from this address",
        }
    }
}

#[derive(Default)]
struct Counts {
    established: usize,
    next_id: u64,
    /// Handshakes in progress, oldest first: id and the token that drops it.
    handshakes: VecDeque<(u64, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
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
    addr: Option<IpAddr>,
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

    /// A handshake slot for a new connection from `addr` (`None`: a Unix socket, not limited per
    /// address), or why not.
    pub fn admit(self: &Arc<Self>, addr: Option<IpAddr>) -> Result<Ticket, Refusal> {
        let mut c = self.counts.lock();
        if c.established >= self.limits.max_connections {
            return Err(Refusal::ServerFull);
        }
        if let Some(ip) = addr {
            if c.per_address.get(&ip).copied().unwrap_or(0)
                >= self.limits.max_handshakes_per_address
            {
                return Err(Refusal::AddressBusy);
            }
            *c.per_address.entry(ip).or_default() += 1;
        }
        while c.handshakes.len() >= self.limits.max_handshakes.max(1) {
            let Some((_, oldest)) = c.handshakes.pop_front() else {
                break;
            };
            oldest.cancel();
        }
        let id = c.next_id;
        c.next_id += 1;
        let evicted = CancellationToken::new();
        c.handshakes.push_back((id, evicted.clone()));
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
            addr,
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
        release_handshake(&mut c, self.id, self.addr);
        self.addr = None;
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
            release_handshake(&mut c, self.id, self.addr);
        }
    }
}

fn release_handshake(c: &mut Counts, id: u64, addr: Option<IpAddr>) {
    if let Some(i) = c.handshakes.iter().position(|(h, _)| *h == id) {
        c.handshakes.remove(i);
    }
    if let Some(ip) = addr {
        if let Some(n) = c.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&ip);
            }
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

    fn admission(
        max_connections: usize,
        max_handshakes: usize,
        per_address: usize,
    ) -> Arc<Admission> {
        Arc::new(Admission::new(Limits {
            max_connections,
            max_handshakes,
            max_handshakes_per_address: per_address,
        }))
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_full_handshake_table_drops_its_oldest_entry() {
        let a = admission(10, 2, 10);
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
    fn one_address_is_refused_past_its_share_and_others_still_get_in() {
        let a = admission(10, 10, 2);
        let _t = [a.admit(ip(1)).unwrap(), a.admit(ip(1)).unwrap()];
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::AddressBusy));
        assert!(a.admit(ip(2)).is_ok());
        assert!(
            a.admit(None).is_ok(),
            "Unix sockets have no per-address limit"
        );
    }

    #[test]
    fn established_connections_are_counted_apart_from_handshakes() {
        let a = admission(1, 1, 1);
        let mut t = a.admit(ip(1)).unwrap();
        t.establish().unwrap();
        // The handshake and address slots are free again; the connection slot is taken.
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::ServerFull));
        let mut late = {
            drop(t);
            a.admit(ip(1)).unwrap()
        };
        let mut other = a.admit(ip(2)).unwrap();
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
