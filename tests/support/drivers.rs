//! Runs an async test body on both monoio drivers, io_uring then epoll, each
//! in a fresh runtime with the timer enabled. Included with `#[path]` by the
//! tests that drive library code directly (no proxy process).

use std::future::Future;

use ringgate::pool::stdio::{set_thread_io, ChildIo};

pub fn on_both_drivers<F, Fut>(f: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    // Children get what each driver gets in a worker: pipes on io_uring,
    // a socketpair on epoll.
    set_thread_io(ChildIo::Pipes);
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime")
        .block_on(f("io_uring"));
    set_thread_io(ChildIo::Socketpair);
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("epoll runtime")
        .block_on(f("epoll"));
}
