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
    Hit(T),
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
                Some((expires, v)) if *expires > now => return Lookup::Hit(v.clone()),
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
        if let Some(ttl) = ttl {
            if let Some(lru) = self.cache.lru.borrow_mut().as_mut() {
                lru.put(std::mem::take(&mut self.key), (now + ttl, value.clone()));
            }
        }
        self.complete(Some(value));
    }

    fn complete(&mut self, value: Option<T>) {
        self.done = true;
        let mut inflight = self.cache.inflight.borrow_mut();
        // The key may have been moved into the LRU; find the flight by identity.
        inflight.retain(|_, f| !Rc::ptr_eq(f, &self.flight));
        drop(inflight);
        *self.flight.result.borrow_mut() = Some(value);
        for w in self.flight.waiters.borrow_mut().drain(..) {
            w.wake();
        }
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
            Lookup::Hit(1)
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

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(f)
    }
}
