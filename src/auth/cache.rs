//! A per-worker LRU of authorization answers with expiry, and one in-flight
//! lookup per key: concurrent requests for a key that is being checked wait
//! for that check instead of starting their own.
//!
//! Single-threaded by design (`Rc`, `RefCell`): each worker owns its cache, so
//! a hit costs a hash and a list splice, never a lock. Time is passed in, so
//! tests control it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use lru::LruCache;

pub struct Cache<T: Clone> {
    /// `None` when the cache is disabled (`maxEntries: 0`).
    lru: RefCell<Option<LruCache<String, (Instant, T)>>>,
    inflight: RefCell<HashMap<String, Rc<Flight<T>>>>,
}

/// One lookup in progress: its result once known, and who waits for it.
struct Flight<T> {
    result: RefCell<Option<Option<T>>>,
    waiters: RefCell<Vec<Waker>>,
}

pub enum Lookup<T: Clone> {
    /// The value and when it expires.
    Hit(T, Instant),
    /// Someone else is looking this key up; await their result. `None` means
    /// the leader gave up without one (treat as a failure, do not retry here).
    Wait(Wait<T>),
    /// Nobody is: look it up and [`Leader::finish`].
    Lead(Leader<T>),
}

impl<T: Clone> Cache<T> {
    pub fn new(max_entries: usize) -> Self {
        Cache {
            lru: RefCell::new(NonZeroUsize::new(max_entries).map(LruCache::new)),
            inflight: RefCell::new(HashMap::new()),
        }
    }

    pub fn lookup(self: &Rc<Self>, key: &str, now: Instant) -> Lookup<T> {
        if let Some(lru) = self.lru.borrow_mut().as_mut() {
            match lru.get(key) {
                Some((expires, v)) if *expires > now => return Lookup::Hit(v.clone(), *expires),
                Some(_) => {
                    lru.pop(key);
                }
                None => {}
            }
        }
        if let Some(f) = self.inflight.borrow().get(key) {
            return Lookup::Wait(Wait(f.clone()));
        }
        let flight = Rc::new(Flight {
            result: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        });
        self.inflight
            .borrow_mut()
            .insert(key.to_string(), flight.clone());
        Lookup::Lead(Leader {
            cache: self.clone(),
            key: key.to_string(),
            flight,
            done: false,
        })
    }

    /// Whether answers are kept at all (`maxEntries` above 0).
    pub fn enabled(&self) -> bool {
        self.lru.borrow().is_some()
    }

    pub fn len(&self) -> usize {
        self.lru.borrow().as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Leader<T: Clone> {
    cache: Rc<Cache<T>>,
    key: String,
    flight: Rc<Flight<T>>,
    done: bool,
}

impl<T: Clone> Leader<T> {
    /// Hands `value` to every waiter, and stores it until `now + ttl` when a
    /// ttl is given (errors are passed on but never stored).
    pub fn finish(mut self, value: T, ttl: Option<Duration>, now: Instant) {
        let key = self.complete(Some(value.clone()));
        if let (Some(ttl), Some(key)) = (ttl, key) {
            if let Some(lru) = self.cache.lru.borrow_mut().as_mut() {
                lru.put(key, (now + ttl, value));
            }
        }
    }

    /// Ends the flight: takes it out of the in-flight map by its key (O(1),
    /// whatever the number of other flights), then wakes its waiters. Gives
    /// back the map's copy of the key, for the LRU.
    fn complete(&mut self, value: Option<T>) -> Option<String> {
        self.done = true;
        let mut inflight = self.cache.inflight.borrow_mut();
        // A key has one flight at a time, so the entry is ours; the identity
        // check only guards that invariant.
        let key = match inflight.get(self.key.as_str()) {
            Some(f) if Rc::ptr_eq(f, &self.flight) => inflight.remove_entry(self.key.as_str()),
            _ => None,
        };
        drop(inflight);
        *self.flight.result.borrow_mut() = Some(value);
        for w in self.flight.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        key.map(|(k, _)| k)
    }
}

impl<T: Clone> Drop for Leader<T> {
    /// A leader dropped mid-lookup releases its waiters with no answer
    /// rather than leaving them waiting forever.
    fn drop(&mut self) {
        if !self.done {
            self.complete(None);
        }
    }
}

pub struct Wait<T>(Rc<Flight<T>>);

impl<T: Clone> Future for Wait<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(r) = self.0.result.borrow().as_ref() {
            return Poll::Ready(r.clone());
        }
        let mut waiters = self.0.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(c: &Rc<Cache<u32>>, key: &str, now: Instant) -> Leader<u32> {
        match c.lookup(key, now) {
            Lookup::Lead(l) => l,
            _ => panic!("expected to lead {key}"),
        }
    }

    #[test]
    fn hit_until_expiry_then_lead_again() {
        let c = Rc::new(Cache::new(10));
        let t0 = Instant::now();
        lead(&c, "k", t0).finish(1, Some(Duration::from_secs(30)), t0);
        assert!(matches!(
            c.lookup("k", t0 + Duration::from_secs(29)),
            Lookup::Hit(1, e) if e == t0 + Duration::from_secs(30)
        ));
        lead(&c, "k", t0 + Duration::from_secs(30));
    }

    #[test]
    fn errors_are_not_stored() {
        let c = Rc::new(Cache::new(10));
        let t0 = Instant::now();
        lead(&c, "k", t0).finish(7, None, t0);
        lead(&c, "k", t0);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_by_max_entries() {
        let c = Rc::new(Cache::new(2));
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            lead(&c, k, t0).finish(1, Some(Duration::from_secs(1)), t0);
        }
        assert_eq!(c.len(), 2);
        lead(&c, "a", t0); // the least recently used went first
    }

    #[test]
    fn disabled_cache_still_shares_flights() {
        let c = Rc::new(Cache::new(0));
        let t0 = Instant::now();
        let l = lead(&c, "k", t0);
        assert!(matches!(c.lookup("k", t0), Lookup::Wait(_)));
        l.finish(1, Some(Duration::from_secs(1)), t0);
        lead(&c, "k", t0);
    }

    #[test]
    fn waiters_get_the_leaders_result_or_none_if_it_gives_up() {
        let c = Rc::new(Cache::new(10));
        let t0 = Instant::now();
        let l = lead(&c, "k", t0);
        let Lookup::Wait(w) = c.lookup("k", t0) else {
            panic!("second lookup waits")
        };
        l.finish(5, None, t0);
        assert_eq!(block_on(w), Some(5));

        let l = lead(&c, "k", t0);
        let Lookup::Wait(w) = c.lookup("k", t0) else {
            panic!("waits")
        };
        drop(l);
        assert_eq!(block_on(w), None);
        lead(&c, "k", t0);
    }

    /// Completing one flight touches only its own key: the others stay in
    /// flight, and its answer is stored under its key.
    #[test]
    fn finishing_one_flight_leaves_the_others() {
        let c = Rc::new(Cache::new(10));
        let t0 = Instant::now();
        let (a, b, cl) = (lead(&c, "a", t0), lead(&c, "b", t0), lead(&c, "c", t0));
        b.finish(2, Some(Duration::from_secs(1)), t0);
        assert!(matches!(c.lookup("b", t0), Lookup::Hit(2, _)));
        assert!(matches!(c.lookup("a", t0), Lookup::Wait(_)));
        assert!(matches!(c.lookup("c", t0), Lookup::Wait(_)));
        assert_eq!(c.inflight.borrow().len(), 2);
        drop((a, cl));
        assert!(c.inflight.borrow().is_empty());
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(f)
    }
}
