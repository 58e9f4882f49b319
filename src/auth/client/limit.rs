//! The bound on the calls in flight: each call holds a permit, and a call
//! holds at most one connection, so the permits also bound the connections
//! open to the service. Without it, a flood of distinct cache misses (many
//! source addresses) opens one connection per request.
//!
//! Checks over the bound wait in arrival order; a permit given back goes to
//! the oldest waiter directly, so a newcomer cannot overtake the queue. One
//! worker's state (`Cell`, `RefCell`): no lock, no atomic.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

pub(super) struct Limit {
    max: usize,
    max_waiting: usize,
    state: RefCell<State>,
}

struct State {
    in_use: usize,
    /// Oldest first. Slots of waiters that gave up stay until they reach the
    /// front, and are skipped there.
    queue: VecDeque<Rc<Slot>>,
    /// Live waiters in `queue`.
    waiting: usize,
}

#[derive(Default)]
struct Slot {
    granted: Cell<bool>,
    gone: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The right to one call; given back on drop.
pub(super) struct Permit<'a>(&'a Limit);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Limit {
    /// `max` at least 1 (a zero would refuse every check).
    pub(super) fn new(max: usize, max_waiting: usize) -> Limit {
        Limit {
            max: max.max(1),
            max_waiting,
            state: RefCell::new(State {
                in_use: 0,
                queue: VecDeque::new(),
                waiting: 0,
            }),
        }
    }

    /// A permit now, if one is free and nobody waits for it.
    pub(super) fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut st = self.state.borrow_mut();
        if st.in_use < self.max && st.waiting == 0 {
            st.in_use += 1;
            return Some(Permit(self));
        }
        None
    }

    /// Joins the queue; `None` when `max_waiting` checks already wait. The
    /// caller bounds the wait (dropping the future leaves the queue).
    pub(super) fn wait(&self) -> Option<Wait<'_>> {
        let mut st = self.state.borrow_mut();
        if st.waiting >= self.max_waiting {
            return None;
        }
        while st.queue.front().is_some_and(|s| s.gone.get()) {
            st.queue.pop_front();
        }
        let slot = Rc::new(Slot::default());
        st.queue.push_back(slot.clone());
        st.waiting += 1;
        Some(Wait {
            limit: self,
            slot,
            taken: false,
        })
    }

    /// Calls in flight.
    pub(super) fn in_use(&self) -> usize {
        self.state.borrow().in_use
    }

    /// Checks waiting for a permit.
    pub(super) fn waiting(&self) -> usize {
        self.state.borrow().waiting
    }

    fn release(&self) {
        let mut st = self.state.borrow_mut();
        while let Some(slot) = st.queue.pop_front() {
            if slot.gone.get() {
                continue;
            }
            // Handed over as it is: `in_use` does not change.
            st.waiting -= 1;
            slot.granted.set(true);
            let waker = slot.waker.borrow_mut().take();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            return;
        }
        st.in_use -= 1;
    }
}

pub(super) struct Wait<'a> {
    limit: &'a Limit,
    slot: Rc<Slot>,
    taken: bool,
}

impl<'a> Future for Wait<'a> {
    type Output = Permit<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit<'a>> {
        if self.slot.granted.get() {
            self.taken = true;
            return Poll::Ready(Permit(self.limit));
        }
        let mut waker = self.slot.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    /// A waiter that gives up leaves the queue; one that was granted a
    /// permit it never took passes it on.
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        if self.slot.granted.get() {
            self.limit.release();
        } else {
            self.slot.gone.set(true);
            self.limit.state.borrow_mut().waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
