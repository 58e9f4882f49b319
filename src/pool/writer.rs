//! The write side of a child's stdin: whole lines, one sender at a time.
//!
//! The write half itself is the lock: a send takes it out of its slot for
//! one line and a guard puts it back, even when the send future is dropped
//! halfway. Since half a line may then be on the wire, the writer is marked
//! poisoned and refuses further sends: the session has to end.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::reaper;
use super::stdio::{Eof, Stdin};

/// A send buffer larger than this is not kept for the next line.
const KEEP_SEND_BUF_BYTES: usize = 64 * 1024;

/// Writes lines to the child's stdin. Clones share one stream.
#[derive(Clone)]
pub struct ChildWriter(Rc<WriterInner>);

struct WriterInner {
    /// `None` while a send holds it: that is the lock that keeps lines whole.
    stream: RefCell<Option<Stdin>>,
    /// How `close` gives the child EOF. A socket's fd stays open as long as
    /// this struct lives: its write half always comes back here (see
    /// `SendGuard`). A pipe is closed by dropping it, here or, when a send
    /// holds it, by that send's guard.
    eof: Eof,
    closed: Cell<bool>,
    /// A send was cancelled or failed mid-line: the stream may hold half a
    /// line, so nothing more can be framed on it.
    poisoned: Cell<bool>,
    waiters: RefCell<VecDeque<Waker>>,
    spare: RefCell<Vec<u8>>,
}

impl WriterInner {
    fn close(&self) {
        if !self.closed.replace(true) {
            match self.eof {
                Eof::Shutdown(fd) => {
                    if let Err(e) = reaper::shutdown_write(fd) {
                        tracing::debug!(target: "child", error = %e, "shutdown of child stdin failed");
                    }
                }
                Eof::Close => drop(self.stream.borrow_mut().take()),
            }
        }
        self.wake_all();
    }

    fn wake_all(&self) {
        // All of them: a woken waiter may have been dropped since, and a
        // wake-up handed to it alone would be lost.
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Holds the write half for one line; gives it back even if the send is
/// dropped halfway, marking the stream poisoned in that case.
struct SendGuard<'a> {
    inner: &'a WriterInner,
    stream: Option<Stdin>,
    complete: bool,
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        if !self.complete {
            self.inner.poisoned.set(true);
        }
        let stream = self.stream.take();
        // A pipe closed while this send held it is closed now.
        if !(self.inner.closed.get() && matches!(self.inner.eof, Eof::Close)) {
            *self.inner.stream.borrow_mut() = stream;
        }
        self.inner.wake_all();
    }
}

impl ChildWriter {
    pub(crate) fn new(stream: Stdin) -> Self {
        ChildWriter(Rc::new(WriterInner {
            eof: stream.eof(),
            stream: RefCell::new(Some(stream)),
            closed: Cell::new(false),
            poisoned: Cell::new(false),
            waiters: RefCell::new(VecDeque::new()),
            spare: RefCell::new(Vec::new()),
        }))
    }

    /// Sends `line` and a `\n`. Concurrent sends on this thread queue up and
    /// never interleave. A line containing `\n` is refused (`InvalidInput`).
    /// After `close_stdin`, or after a send that failed or was dropped midway,
    /// sends fail with `BrokenPipe`.
    pub async fn send(&self, line: &[u8]) -> io::Result<()> {
        if memchr::memchr(b'\n', line).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "line contains a newline",
            ));
        }
        let inner = &*self.0;
        let stream = poll_fn(|cx| {
            if inner.closed.get() || inner.poisoned.get() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "child stdin is closed",
                )));
            }
            match inner.stream.borrow_mut().take() {
                Some(s) => Poll::Ready(Ok(s)),
                None => {
                    inner.waiters.borrow_mut().push_back(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        let mut guard = SendGuard {
            inner,
            stream: Some(stream),
            complete: false,
        };
        let mut buf = std::mem::take(&mut *inner.spare.borrow_mut());
        buf.clear();
        buf.reserve(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let s = guard.stream.as_mut().expect("held by the guard");
        let (res, buf) = s.write_all(buf).await;
        guard.complete = res.is_ok();
        if buf.capacity() <= KEEP_SEND_BUF_BYTES {
            *inner.spare.borrow_mut() = buf;
        }
        res.map(|_| ())
    }

    /// Shuts down the write side now: the child reads EOF. Any send in flight
    /// fails; later sends fail with `BrokenPipe`.
    pub fn close_stdin(&self) {
        self.0.close();
    }
}
