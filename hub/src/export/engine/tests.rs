use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// A gate calls wait on until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock();
        while !*open {
            cv.wait(&mut open);
        }
    }

    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock() = true;
        cv.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lanes_share_a_bounded_pool_and_every_call_runs() {
    let engine = IoEngine::new(8);
    let lanes: Vec<IoLane> = (0..200).map(|_| engine.lane(16)).collect();
    let sum = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for (i, lane) in lanes.iter().enumerate() {
        for j in 0..5 {
            let sum = Arc::clone(&sum);
            calls.push(tokio::spawn(lane.run(move || {
                std::thread::sleep(Duration::from_micros(200));
                sum.fetch_add(1, Ordering::Relaxed);
                i * 5 + j
            })));
        }
    }
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap().unwrap());
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(sum.load(Ordering::Relaxed), 1000);
    assert!(engine.threads() <= 8, "{} threads", engine.threads());
    assert!(engine.threads() >= 2, "calls were not spread over threads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_lane_holds_at_most_its_cap_and_others_go_on() {
    let engine = IoEngine::new(4);
    let stalled = engine.lane(16);
    let other = engine.lane(16);
    let gate = Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let mut hung = Vec::new();
    for _ in 0..10 {
        let (gate, started) = (gate.clone(), Arc::clone(&started));
        hung.push(tokio::spawn(stalled.run(move || {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait();
        })));
    }
    for i in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(10), other.run(move || i * 2)).await;
        assert_eq!(r.expect("the other lane is served").unwrap(), i * 2);
    }
    // Half the pool: the stalled lane never had more than 2 calls running.
    assert_eq!(started.load(Ordering::SeqCst), 2);
    gate.open();
    for h in hung {
        h.await.unwrap().unwrap();
    }
    assert_eq!(started.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_take_turns_so_a_deep_queue_does_not_push_others_back() {
    // Two threads (so a lane runs one call at a time); one is held by a third lane throughout,
    // so the deep and the shallow lane share the other.
    let engine = IoEngine::new(2);
    let (hold, deep, shallow) = (engine.lane(16), engine.lane(16), engine.lane(16));
    let (held, start) = (Gate::default(), Gate::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let holding = tokio::spawn(hold.run({
        let held = held.clone();
        move || held.wait()
    }));
    let first = tokio::spawn(deep.run({
        let start = start.clone();
        move || start.wait()
    }));
    let mut calls = Vec::new();
    for i in 0..40 {
        let order = Arc::clone(&order);
        calls.push(tokio::spawn(deep.run(move || order.lock().push(('d', i)))));
    }
    for i in 0..5 {
        let order = Arc::clone(&order);
        calls.push(tokio::spawn(
            shallow.run(move || order.lock().push(('s', i))),
        ));
    }
    start.open();
    first.await.unwrap().unwrap();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    held.open();
    holding.await.unwrap().unwrap();
    let order = order.lock();
    assert_eq!(order.len(), 45);
    let last_shallow = order.iter().rposition(|(l, _)| *l == 's').unwrap();
    // Taking turns, the 5 shallow calls are done within the first 10 of 45; first come, first
    // served, they would come after all 40 deep ones.
    assert!(last_shallow < 10, "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_call_is_an_error_and_the_engine_goes_on() {
    let engine = IoEngine::new(2);
    let lane = engine.lane(4);
    assert!(lane.run(|| panic!("image call panicked")).await.is_err());
    assert_eq!(lane.run(|| 7).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_when_the_lane_is_dropped_still_run() {
    let engine = IoEngine::new(2);
    let lane = engine.lane(1);
    let gate = Gate::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (gate, ran) = (gate.clone(), Arc::clone(&ran));
        calls.push(tokio::spawn(lane.run(move || {
            gate.wait();
            ran.fetch_add(1, Ordering::SeqCst);
        })));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(lane);
    gate.open();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 5);
    assert!(engine.shared.state.lock().lanes.is_empty());
}

#[test]
fn threads_follow_the_cores_within_bounds() {
    assert_eq!(IoEngine::threads_for(1), MIN_THREADS);
    assert_eq!(IoEngine::threads_for(2), MIN_THREADS);
    assert_eq!(IoEngine::threads_for(16), 64);
    assert_eq!(IoEngine::threads_for(512), MAX_THREADS);
}
