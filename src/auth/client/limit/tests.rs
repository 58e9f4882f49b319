use super::*;

use std::task::Waker;

/// Polls once without a runtime.
fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn bounded_then_handed_over_without_freeing() {
    let l = Limit::new(2, 10);
    let a = l.try_acquire().expect("first permit");
    let _b = l.try_acquire().expect("second permit");
    assert!(l.try_acquire().is_none());
    let mut w = l.wait().expect("room to wait");
    assert!(poll(&mut w).is_pending());
    assert_eq!((l.in_use(), l.waiting()), (2, 1));
    drop(a);
    // The permit went to the waiter: still two in use, and a newcomer does
    // not get one.
    assert_eq!((l.in_use(), l.waiting()), (2, 0));
    assert!(l.try_acquire().is_none());
    let Poll::Ready(p) = poll(&mut w) else {
        panic!("the waiter holds the permit")
    };
    drop(w);
    drop(p);
    assert_eq!(l.in_use(), 1);
}

#[test]
fn first_come_first_served() {
    let l = Limit::new(1, 10);
    let p = l.try_acquire().unwrap();
    let mut w1 = l.wait().unwrap();
    let mut w2 = l.wait().unwrap();
    assert!(poll(&mut w2).is_pending());
    assert!(poll(&mut w1).is_pending());
    drop(p);
    assert!(poll(&mut w2).is_pending(), "the younger waiter overtook");
    let Poll::Ready(p1) = poll(&mut w1) else {
        panic!("the older waiter is served first")
    };
    drop(p1);
    assert!(poll(&mut w2).is_ready());
}

#[test]
fn a_waiter_that_gives_up_leaves_the_queue() {
    let l = Limit::new(1, 10);
    let p = l.try_acquire().unwrap();
    let w1 = l.wait().unwrap();
    let mut w2 = l.wait().unwrap();
    drop(w1); // timed out before its turn
    assert_eq!(l.waiting(), 1);
    drop(p);
    assert!(poll(&mut w2).is_ready());

    // Granted, then dropped before it looked: the permit moves on.
    let l = Limit::new(1, 10);
    let p = l.try_acquire().unwrap();
    let w1 = l.wait().unwrap();
    let mut w2 = l.wait().unwrap();
    drop(p);
    drop(w1);
    assert_eq!(l.in_use(), 1);
    let Poll::Ready(p2) = poll(&mut w2) else {
        panic!("the permit was passed on")
    };
    drop(p2);
    drop(w2);
    assert_eq!(l.in_use(), 0);
    assert!(l.try_acquire().is_some());
}

#[test]
fn the_queue_is_bounded() {
    let l = Limit::new(1, 2);
    let _p = l.try_acquire().unwrap();
    let _w1 = l.wait().unwrap();
    let w2 = l.wait().unwrap();
    assert!(l.wait().is_none());
    drop(w2);
    assert!(l.wait().is_some());
    assert!(Limit::new(1, 0).wait().is_none());
}
