//! The server-wide payload budget (`max_in_flight_bytes_total`): bytes of WRITE payloads and READ
//! replies all connections hold in memory together.
//!
//! A READ takes its share in full before it runs; nothing can stall it from outside but a client
//! that does not read, which the reply timeout cuts off. A WRITE payload takes its share as its
//! bytes arrive ([`Charge`]), a credit at a time before they are read, so a client that announces
//! 64 MiB and stops sending holds what it sent and one credit, never the whole payload's share.
//!
//! Payloads taken in pieces could fill the budget between them and wait for each other for ever,
//! so a payload that finds the budget spent may finish on the overdraft instead: one payload at a
//! time, held until its request has run. The server's payload memory is therefore at most the
//! budget plus one `max_payload`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first credit of a payload; a client that sends nothing holds this much.
const MIN_CREDIT: u64 = 128 << 10;
/// Credits grow with what the payload has delivered, up to this (also the longest single read).
const MAX_CREDIT: u64 = 4 << 20;

pub(crate) struct Budget {
    total: Arc<Semaphore>,
    /// Permits `total` started with.
    size: u64,
    /// One permit: the payload allowed to finish past the budget.
    overdraft: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `bytes` (at least 1, so requests can run).
    pub fn new(bytes: usize) -> Self {
        let size = bytes
            .clamp(1, u32::MAX as usize)
            .min(Semaphore::MAX_PERMITS);
        Self {
            total: Arc::new(Semaphore::new(size)),
            size: size as u64,
            overdraft: Arc::new(Semaphore::new(1)),
        }
    }

    /// `cost` bytes, at most the whole budget, taken at once (a request larger than the budget
    /// takes all of it and runs alone).
    pub async fn take_all(&self, cost: u64) -> OwnedSemaphorePermit {
        let n = cost.min(self.size) as u32;
        match Arc::clone(&self.total).acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => unreachable!("the budget is never closed"),
        }
    }

    /// The budget of a payload of `cost` bytes, to be taken as it arrives.
    pub fn charge(&self, cost: u64) -> Charge<'_> {
        Charge {
            budget: self,
            owed: cost.min(self.size),
            credit: 0,
            received: 0,
            held: None,
            overdraft: None,
        }
    }
}

/// What a payload has taken of the budget so far.
pub(crate) struct Charge<'a> {
    budget: &'a Budget,
    /// Budget still to take: the payload's cost, at most the whole budget, less what was taken.
    owed: u64,
    /// Bytes taken and not yet read.
    credit: u64,
    received: u64,
    held: Option<OwnedSemaphorePermit>,
    overdraft: Option<OwnedSemaphorePermit>,
}

/// What a payload holds until its request has run: its share, and the overdraft if it used it.
pub(crate) struct Held {
    _share: Option<OwnedSemaphorePermit>,
    _overdraft: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// A share taken whole ([`Budget::take_all`]).
    pub fn whole(share: OwnedSemaphorePermit) -> Self {
        Self {
            _share: Some(share),
            _overdraft: None,
        }
    }
}

impl Charge<'_> {
    /// How many of the next `want` bytes may be read now (at least one when `want` > 0): the
    /// credit left, or a new one, waiting for the budget (or the overdraft) when it is spent.
    pub async fn allow(&mut self, want: u64) -> u64 {
        if self.credit == 0 && !self.unmetered() {
            self.take_credit(want).await;
        }
        if self.unmetered() {
            want
        } else {
            want.min(self.credit)
        }
    }

    /// `n` bytes (no more than [`Charge::allow`] gave) have been read.
    pub fn spend(&mut self, n: u64) {
        self.received += n;
        self.credit = self.credit.saturating_sub(n);
    }

    /// [`Charge::allow`] and [`Charge::spend`] for `n` bytes already in memory.
    pub async fn cover(&mut self, mut n: u64) {
        while n > 0 {
            let a = self.allow(n).await;
            self.spend(a);
            n -= a;
        }
    }

    pub fn into_held(self) -> Held {
        Held {
            _share: self.held,
            _overdraft: self.overdraft,
        }
    }

    /// Past the budget: the whole budget is taken (a payload larger than it), or the payload
    /// finishes on the overdraft.
    fn unmetered(&self) -> bool {
        self.owed == 0 || self.overdraft.is_some()
    }

    async fn take_credit(&mut self, want: u64) {
        let step = want
            .min(self.received.clamp(MIN_CREDIT, MAX_CREDIT))
            .min(self.owed)
            .max(1);
        let total = &self.budget.total;
        let permit = match Arc::clone(total).try_acquire_many_owned(step as u32) {
            Ok(p) => p,
            // Both acquisitions are cancel-safe: the loser gives back what it was assigned.
            Err(_) => tokio::select! {
                biased;
                p = Arc::clone(total).acquire_many_owned(step as u32) => match p {
                    Ok(p) => p,
                    Err(_) => unreachable!("the budget is never closed"),
                },
                o = Arc::clone(&self.budget.overdraft).acquire_owned() => {
                    let Ok(o) = o else {
                        unreachable!("the overdraft is never closed");
                    };
                    self.overdraft = Some(o);
                    return;
                }
            },
        };
        self.owed -= step;
        self.credit += step;
        match &mut self.held {
            Some(h) => h.merge(permit),
            None => self.held = Some(permit),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_payload_holds_what_it_received_and_one_credit() {
        let b = Budget::new(64 << 20);
        let mut c = b.charge(64 << 20);
        let first = c.allow(64 << 20).await;
        assert_eq!(first, MIN_CREDIT);
        c.spend(1024);
        assert_eq!(c.allow(64 << 20).await, MIN_CREDIT - 1024);
        assert_eq!(b.total.available_permits() as u64, (64 << 20) - MIN_CREDIT);
        // Credits grow with what arrived, up to MAX_CREDIT.
        c.spend(MIN_CREDIT - 1024);
        assert_eq!(c.allow(64 << 20).await, MIN_CREDIT);
        c.spend(MIN_CREDIT);
        c.cover(20 << 20).await;
        let left = c.allow(64 << 20).await;
        c.spend(left);
        assert_eq!(c.allow(64 << 20).await, MAX_CREDIT);
        drop(c);
        assert_eq!(b.total.available_permits() as u64, 64 << 20);
    }

    #[tokio::test]
    async fn payloads_that_fill_the_budget_between_them_finish_on_the_overdraft() {
        let b = Budget::new(1 << 20);
        let (mut one, mut two) = (b.charge(1 << 20), b.charge(1 << 20));
        one.cover(600 << 10).await;
        two.cover(400 << 10).await;
        assert_eq!(b.total.available_permits(), 24 << 10);
        // Neither could finish within the budget; the first to need more takes the overdraft.
        one.cover(400 << 10).await;
        assert!(one.overdraft.is_some());
        let held = one.into_held();
        let stuck = tokio::time::timeout(Duration::from_millis(50), two.cover(600 << 10));
        assert!(
            stuck.await.is_err(),
            "no budget and the overdraft taken: two waits"
        );
        // The first payload's request ran: its share and the overdraft come back.
        drop(held);
        two.cover(600 << 10).await;
        assert!(two.overdraft.is_none(), "two finished within the budget");
        drop(two);
        assert_eq!(b.total.available_permits(), 1 << 20);
    }
}
