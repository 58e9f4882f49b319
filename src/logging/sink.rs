//! Where log lines go: each thread appends its lines to a buffer of its
//! own, and one thread takes the buffers in turn and writes them to stderr.
//! A worker formats its line and appends it; it never waits on the
//! terminal, a pipe or journald, and a burst of access-log lines costs one
//! `write` per batch instead of one per line, with no allocation or channel
//! message per line.
//!
//! A thread whose buffer was empty tells the writer (one channel message);
//! the writer then takes every buffer, writes them, and pauses a
//! millisecond, so under load the workers append lines without waking it;
//! idle, it sleeps until a line comes. Lines of one thread keep their order.
//!
//! When a thread's buffer holds [`THREAD_BUFFER_BYTES`] that the writer has
//! not taken (it fell behind), new lines are dropped (a proxy worker must
//! not stall on its log) and counted; the writer reports the count in the
//! log once it catches up, and `/metrics` shows the total.

use std::cell::RefCell;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Unwritten bytes a thread may hold (about 16k access lines).
pub const THREAD_BUFFER_BYTES: usize = 4 * 1024 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// A taken buffer larger than this is shrunk after it is written, so a
/// burst does not keep its memory.
const KEPT_BUFFER_BYTES: usize = 256 * 1024;
/// After writing a batch the thread pauses this long before taking the
/// next: lines appended meanwhile find their buffer not empty, so they wake
/// nobody (no channel message, no futex call on the worker), and they leave
/// in one write.
const BATCH_PAUSE: Duration = Duration::from_millis(1);
/// How long an exiting process waits for queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    /// A thread's buffer is no longer empty.
    Ready,
    Flush(std::sync::mpsc::Sender<()>),
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every thread's unwritten lines.
struct Shelf {
    buffers: Mutex<Vec<Buffer>>,
    limit: usize,
    dropped: AtomicU64,
}

struct Sink {
    tx: flume::Sender<Msg>,
    shelf: Arc<Shelf>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// This thread's buffer, once it has logged.
    static MINE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shelf {
    fn new(limit: usize) -> Self {
        Shelf {
            buffers: Mutex::new(Vec::new()),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends a whole line to this thread's buffer. True when the buffer
    /// was empty: the writer must be told. A thread that is ending (its
    /// buffer already gone) writes the line itself.
    fn append(&self, line: &[u8]) -> bool {
        let appended = MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let buf = mine.get_or_insert_with(|| {
                let b = Buffer::default();
                lock(&self.buffers).push(b.clone());
                b
            });
            let mut b = lock(buf);
            if b.len() + line.len() > self.limit {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let was_empty = b.is_empty();
            b.extend_from_slice(line);
            was_empty
        });
        appended.unwrap_or_else(|_| {
            let _ = io::stderr().write_all(line);
            false
        })
    }

    /// Writes every thread's lines, swapping each buffer with one of
    /// `spares` so that the threads append to an empty one meanwhile;
    /// forgets the buffers of threads that ended. Lines of several threads
    /// are merged in the order of their timestamps ([`merge`]).
    fn drain(&self, out: &mut impl Write, spares: &mut Vec<Vec<u8>>) {
        let buffers = lock(&self.buffers).clone();
        spares.resize_with(buffers.len().max(spares.len()), Vec::new);
        let mut taken = 0;
        for b in &buffers {
            let mut theirs = lock(b);
            if !theirs.is_empty() {
                std::mem::swap(&mut *theirs, &mut spares[taken]);
                taken += 1;
            }
        }
        drop(buffers);
        merge(out, &spares[..taken]);
        for spare in &mut spares[..taken] {
            spare.clear();
            if spare.capacity() > KEPT_BUFFER_BYTES {
                spare.shrink_to(WRITE_BUFFER_BYTES);
            }
        }
        lock(&self.buffers).retain(|b| Arc::strong_count(b) > 1 || !lock(b).is_empty());
    }
}

/// Writes the lines of several threads' batches, each batch's in its own
/// order, the batches interleaved by the timestamp each line starts with
/// (`2026-12-06T09:54:06.123456Z`, which sorts as text). A line without one
/// (JSON, a continuation) goes right after the line before it.
fn merge(out: &mut impl Write, batches: &[Vec<u8>]) {
    if batches.len() == 1 {
        let _ = out.write_all(&batches[0]);
        return;
    }
    const STAMP: usize = 27;
    let stamp = |line: &[u8]| -> Option<[u8; STAMP]> {
        let s = line.get(..STAMP)?;
        (s[0].is_ascii_digit() && s[10] == b'T' && s[STAMP - 1] == b'Z').then(|| {
            let mut a = [0; STAMP];
            a.copy_from_slice(s);
            a
        })
    };
    let line_at = |b: &[u8], at: usize| -> usize {
        b[at..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |i| at + i + 1)
    };
    let mut at = vec![0usize; batches.len()];
    // The stamp of each batch's next line (or of the line it continues).
    let mut next: Vec<Option<[u8; STAMP]>> = batches.iter().map(|b| stamp(b)).collect();
    loop {
        let pick = (0..batches.len())
            .filter(|&i| at[i] < batches[i].len())
            .min_by_key(|&i| next[i].unwrap_or([0; STAMP]));
        let Some(i) = pick else { break };
        let end = line_at(&batches[i], at[i]);
        let _ = out.write_all(&batches[i][at[i]..end]);
        at[i] = end;
        if let Some(s) = stamp(&batches[i][end..]) {
            next[i] = Some(s);
        }
    }
}

/// Starts the writer thread (once); returns a guard that flushes on drop.
pub fn start() -> io::Result<FlushGuard> {
    if SINK.get().is_none() {
        let (tx, rx) = flume::bounded(1024);
        let shelf = Arc::new(Shelf::new(THREAD_BUFFER_BYTES));
        let theirs = shelf.clone();
        std::thread::Builder::new()
            .name("ringgate-log".into())
            .spawn(move || write_lines(rx, &theirs, io::stderr()))?;
        let _ = SINK.set(Sink { tx, shelf });
    }
    Ok(FlushGuard)
}

fn write_lines(rx: flume::Receiver<Msg>, shelf: &Shelf, out: impl Write) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, out);
    let mut spares = Vec::new();
    let mut reported = 0;
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            if let Msg::Flush(ack) = msg {
                acks.push(ack);
            }
        }
        shelf.drain(&mut out, &mut spares);
        let dropped = shelf.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                out,
                "ringgate: {} log lines dropped: the log writer fell behind",
                dropped - reported
            );
            reported = dropped;
        }
        let _ = out.flush();
        for ack in acks {
            let _ = ack.send(());
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Lines dropped since start because the writer fell behind.
pub fn dropped_lines() -> u64 {
    SINK.get()
        .map_or(0, |s| s.shelf.dropped.load(Ordering::Relaxed))
}

/// Waits (up to a bound) until every line queued so far is written.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let (ack, done) = std::sync::mpsc::channel();
    if sink.tx.send_timeout(Msg::Flush(ack), FLUSH_WAIT).is_ok() {
        let _ = done.recv_timeout(FLUSH_WAIT);
    }
}

/// Flushes the log when dropped: hold it in `main`.
pub struct FlushGuard;

impl Drop for FlushGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// The `MakeWriter` for `tracing-subscriber`: one [`Line`] per event.
#[derive(Clone, Copy, Default)]
pub struct MakeLine;

impl<'a> MakeWriter<'a> for MakeLine {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// One formatted event; queued when the formatter drops it.
pub struct Line(Vec<u8>);

/// Queues a whole line (ending in a newline) for the writer thread.
pub fn queue(line: &[u8]) {
    match SINK.get() {
        Some(sink) => {
            // When the channel is full, a `Ready` is already waiting.
            if sink.shelf.append(line) {
                let _ = sink.tx.try_send(Msg::Ready);
            }
        }
        // Not started (tests, early errors): write it directly.
        None => {
            let _ = io::stderr().write_all(line);
        }
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            queue(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            g.0.extend_from_slice(buf);
            g.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines appended by several threads while the writer waits leave in
    /// one write, each thread's in order, and a flush waits for all of them.
    #[test]
    fn threads_lines_are_written_in_order_in_batches() {
        let shelf = Arc::new(Shelf::new(THREAD_BUFFER_BYTES));
        let (tx, rx) = flume::bounded(16);
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (shelf, tx) = (shelf.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..300 {
                        if shelf.append(format!("t{t} line {i}\n").as_bytes()) {
                            tx.send(Msg::Ready).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (ack, done) = std::sync::mpsc::channel();
        tx.send(Msg::Flush(ack)).unwrap();
        let out = Shared::default();
        let sink = out.clone();
        let theirs = shelf.clone();
        let writer = std::thread::spawn(move || write_lines(rx, &theirs, sink));
        done.recv_timeout(Duration::from_secs(10)).unwrap();
        let (text, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(text).unwrap();
        for t in 0..3 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..300).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, want);
        }
        assert_eq!(text.lines().count(), 900);
        // 12 KiB of lines through a 64 KiB buffer: one write, not 900.
        assert_eq!(writes, 1);
        // The ended threads' buffers are forgotten once written.
        assert!(lock(&shelf.buffers).is_empty());
        drop(tx);
        writer.join().unwrap();
    }

    /// A thread whose unwritten lines reach the limit drops (and counts)
    /// new lines instead of waiting; once written, it logs again.
    #[test]
    fn a_full_buffer_drops_and_counts_lines() {
        let shelf = Shelf::new(64);
        let line = [b'x'; 30];
        assert!(shelf.append(&line), "the first line finds the buffer empty");
        assert!(!shelf.append(&line));
        assert!(!shelf.append(&line), "over the limit: dropped");
        assert_eq!(shelf.dropped.load(Ordering::Relaxed), 1);
        let mut out = Vec::new();
        shelf.drain(&mut out, &mut Vec::new());
        assert_eq!(out.len(), 60);
        assert!(shelf.append(&line), "written: the buffer is empty again");
    }

    /// Two threads' batches come out interleaved by their timestamps, each
    /// in its own order; a line without a timestamp stays after the line
    /// before it.
    #[test]
    fn batches_merge_by_timestamp() {
        let a = b"2026-12-06T09:54:06.000001Z  INFO a1\n\
                  2026-12-06T09:54:06.000004Z  INFO a2\n\
                  continued\n"
            .to_vec();
        let b = b"2026-12-06T09:54:06.000002Z  INFO b1\n\
                  2026-12-06T09:54:06.000009Z  INFO b2\n"
            .to_vec();
        let mut out = Vec::new();
        merge(&mut out, &[a, b]);
        let words: Vec<&str> = std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(words, ["a1", "b1", "a2", "continued", "b2"]);
    }
}
