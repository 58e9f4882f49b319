//! Where log lines go: a bounded queue to one thread that writes them to
//! stderr in batches. A worker formats its line and hands it over; it never
//! waits on the terminal, a pipe or journald, and a burst of access-log lines
//! costs one `write` per batch instead of one per line.
//!
//! The thread pauses a millisecond after each batch, so under load the
//! workers queue lines without waking it; idle, it sleeps until a line comes.
//!
//! When the writer falls behind by [`QUEUE_LINES`], new lines are dropped
//! (a proxy worker must not stall on its log) and counted; the writer reports
//! the count in the log once it catches up, and `/metrics` shows the total.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines queued at most (a few MiB of text).
pub const QUEUE_LINES: usize = 16 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// After writing a batch the thread pauses this long before taking the
/// next: lines queued meanwhile find it not waiting, so queueing them wakes
/// nobody (no futex call on the worker), and they leave in one write.
const BATCH_PAUSE: Duration = Duration::from_millis(1);
/// How long an exiting process waits for queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

struct Sink {
    tx: flume::Sender<Msg>,
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread (once); returns a guard that flushes on drop.
pub fn start() -> io::Result<FlushGuard> {
    if SINK.get().is_none() {
        let (tx, rx) = flume::bounded(QUEUE_LINES);
        std::thread::Builder::new()
            .name("ringgate-log".into())
            .spawn(move || write_lines(rx, io::stderr()))?;
        let _ = SINK.set(Sink {
            tx,
            dropped: AtomicU64::new(0),
        });
    }
    Ok(FlushGuard)
}

fn write_lines(rx: flume::Receiver<Msg>, out: impl Write) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, out);
    let mut reported = 0;
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        // Everything already queued goes out in the same writes.
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                Msg::Line(l) => {
                    let _ = out.write_all(&l);
                }
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        let dropped = dropped_lines();
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

/// Lines dropped since start because the queue was full.
pub fn dropped_lines() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
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
pub fn queue(line: Vec<u8>) {
    drop(Line(line));
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
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        match SINK.get() {
            Some(sink) => {
                if sink.tx.try_send(Msg::Line(line)).is_err() {
                    sink.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Not started (tests, early errors): write it directly.
            None => {
                let _ = io::stderr().write_all(&line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    /// Lines queued while the writer is busy leave in one write, in order,
    /// and a flush waits for all of them.
    #[test]
    fn queued_lines_are_written_in_order_in_batches() {
        let (tx, rx) = flume::bounded(QUEUE_LINES);
        for i in 0..1000 {
            tx.send(Msg::Line(format!("line {i}\n").into_bytes()))
                .unwrap();
        }
        let (ack, done) = std::sync::mpsc::channel();
        tx.send(Msg::Flush(ack)).unwrap();
        let out = Shared::default();
        let sink = out.clone();
        let t = std::thread::spawn(move || write_lines(rx, sink));
        done.recv_timeout(Duration::from_secs(10)).unwrap();
        let (text, writes) = out.0.lock().unwrap().clone();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(text).unwrap(), want);
        // 7 KiB of lines through a 64 KiB buffer: one write, not 1000.
        assert_eq!(writes, 1);
        drop(tx);
        t.join().unwrap();
    }
}
