//! Newline-delimited reading over monoio's owned-buffer I/O.
//!
//! Reads go into one growing buffer in large chunks; lines are found with
//! `memchr` and copied out once. The read in flight owns both the stream and
//! the buffer and is kept in the reader, so a `next_line` future that is
//! dropped (a `select!` that took another branch, a timeout) loses nothing:
//! the next call resumes the same read. Under io_uring a dropped read could
//! otherwise complete into a buffer nobody sees.

use std::future::Future;
use std::pin::Pin;

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncReadRent;
use monoio::BufResult;

/// Bytes requested from the kernel per read when the buffer has less room.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A drained buffer larger than this is replaced, so one huge line does not
/// pin its memory for the rest of the session.
const SHRINK_ABOVE_BYTES: usize = 1024 * 1024;

type ReadFuture<R> = Pin<Box<dyn Future<Output = (R, BufResult<usize, SliceMut<Vec<u8>>>)>>>;

enum Source<R> {
    Idle(R),
    Reading(ReadFuture<R>),
    /// EOF, an error or an over-long line was reported: nothing more to read.
    Done,
}

/// What the line splitter saw. The caller maps it to its own error type.
#[derive(Debug)]
pub enum Next {
    Line(Vec<u8>),
    TooLong,
    Error(std::io::Error),
}

/// What a [`LineReader`] (or a stderr task) reads from: a socket, or a
/// child's stdout pipe (`stdio.rs`), which is no `AsyncReadRent`.
pub trait ReadSource: 'static {
    fn read_some<B: IoBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>>;
}

/// Sockets and their halves read as they always do.
impl<R: AsyncReadRent + 'static> ReadSource for R {
    fn read_some<B: IoBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.read(buf)
    }
}

pub struct LineReader<R> {
    src: Source<R>,
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
    /// `buf[start..scanned]` is known to hold no `\n`.
    scanned: usize,
    eof: bool,
    max: usize,
}

impl<R: ReadSource> LineReader<R> {
    pub fn new(src: R, max_line_bytes: usize) -> Self {
        LineReader {
            src: Source::Idle(src),
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            eof: false,
            max: max_line_bytes,
        }
    }

    /// The next line without its `\n` (and without a `\r` before it), `None`
    /// once finished. A last line without `\n` at EOF is still returned, like
    /// `BufRead::lines`. After `TooLong` or `Error` the reader is finished.
    pub async fn next(&mut self) -> Option<Next> {
        loop {
            if matches!(self.src, Source::Done) {
                return None;
            }
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let nl = self.scanned + i;
                return Some(self.take_line(nl, nl + 1));
            }
            self.scanned = self.buf.len();
            // Up to `max` bytes and a `\r` can still end in a valid line.
            if self.buf.len() - self.start > self.max.saturating_add(1) {
                return Some(self.finish(Next::TooLong));
            }
            if self.eof {
                if self.start == self.buf.len() {
                    self.src = Source::Done;
                    return None;
                }
                let end = self.buf.len();
                let line = self.take_line(end, end);
                self.src = Source::Done;
                return Some(line);
            }
            if let Err(e) = self.fill().await {
                return Some(self.finish(Next::Error(e)));
            }
        }
    }

    /// Cuts `buf[start..end]` (minus a trailing `\r`) and resumes at `next`.
    fn take_line(&mut self, end: usize, next: usize) -> Next {
        let mut stop = end;
        if stop > self.start && self.buf[stop - 1] == b'\r' {
            stop -= 1;
        }
        if stop - self.start > self.max {
            return self.finish(Next::TooLong);
        }
        let line = self.buf[self.start..stop].to_vec();
        self.start = next;
        self.scanned = next;
        if self.start == self.buf.len() {
            if self.buf.capacity() > SHRINK_ABOVE_BYTES {
                self.buf = Vec::new();
            }
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
        }
        Next::Line(line)
    }

    fn finish(&mut self, n: Next) -> Next {
        self.src = Source::Done;
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        n
    }

    /// Reads once into the free end of the buffer (cancel-safe, see above).
    async fn fill(&mut self) -> std::io::Result<()> {
        let fut = match std::mem::replace(&mut self.src, Source::Done) {
            Source::Idle(r) => {
                // Move the partial line to the front before reading more.
                if self.start > 0 {
                    self.buf.copy_within(self.start.., 0);
                    self.buf.truncate(self.buf.len() - self.start);
                    self.scanned -= self.start;
                    self.start = 0;
                }
                if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES / 2 {
                    self.buf.reserve(READ_CHUNK_BYTES);
                }
                let len = self.buf.len();
                let slice = std::mem::take(&mut self.buf).slice_mut(len..);
                Box::pin(read_owned(r, slice)) as ReadFuture<R>
            }
            Source::Reading(f) => f,
            Source::Done => return Ok(()),
        };
        self.src = Source::Reading(fut);
        let Source::Reading(fut) = &mut self.src else {
            unreachable!("just set")
        };
        let (r, (res, slice)) = fut.await;
        self.src = Source::Idle(r);
        self.buf = slice.into_inner();
        match res {
            Ok(0) => {
                self.eof = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A read that owns its stream, so it can outlive the caller's future.
pub async fn read_owned<R: ReadSource, B: IoBufMut>(mut r: R, buf: B) -> (R, BufResult<usize, B>) {
    let res = r.read_some(buf).await;
    (r, res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::AsyncWriteRentExt;
    use monoio::net::UnixStream;

    fn run<F: Future<Output = ()>>(f: impl Fn() -> F) {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f());
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f());
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (
            UnixStream::from_std(a).unwrap(),
            UnixStream::from_std(b).unwrap(),
        )
    }

    async fn lines(input: &'static [u8], max: usize) -> Vec<String> {
        let (a, mut b) = pair();
        let (r, _) = b.write_all(input).await;
        r.unwrap();
        drop(b);
        let mut rd = LineReader::new(a, max);
        let mut out = Vec::new();
        while let Some(n) = rd.next().await {
            out.push(match n {
                Next::Line(l) => String::from_utf8(l).unwrap(),
                Next::TooLong => "<too long>".into(),
                Next::Error(e) => format!("<error {e}>"),
            });
        }
        out
    }

    #[test]
    fn splits_lines_crlf_and_tail() {
        run(|| async {
            assert_eq!(lines(b"a\nbb\r\n\nc", 10).await, ["a", "bb", "", "c"]);
            assert_eq!(lines(b"", 10).await, Vec::<String>::new());
            assert_eq!(lines(b"\r\n", 10).await, [""]);
        });
    }

    #[test]
    fn limit_is_exact_and_finishes_the_reader() {
        run(|| async {
            // 5 bytes is the limit: accepted with or without \r; 6 is refused.
            assert_eq!(
                lines(b"12345\n12345\r\n123456\nafter\n", 5).await,
                ["12345", "12345", "<too long>"]
            );
            // Without any newline, refused once more than max + 1 bytes wait.
            assert_eq!(lines(b"1234567", 5).await, ["<too long>"]);
        });
    }

    #[test]
    fn dropped_next_line_loses_nothing() {
        run(|| async {
            let (a, mut b) = pair();
            let mut rd = LineReader::new(a, 1024);
            // Nothing to read: the first call times out with a read in flight.
            let t = monoio::time::timeout(std::time::Duration::from_millis(20), rd.next()).await;
            assert!(t.is_err());
            let (r, _) = b.write_all(&b"one\ntwo\n"[..]).await;
            r.unwrap();
            for want in ["one", "two"] {
                match rd.next().await {
                    Some(Next::Line(l)) => assert_eq!(l, want.as_bytes()),
                    other => panic!("{other:?}"),
                }
            }
        });
    }

    #[test]
    fn large_lines_across_many_reads() {
        run(|| async {
            let (a, mut b) = pair();
            let writer = monoio::spawn(async move {
                for i in 0..20u8 {
                    let mut line = vec![b'a' + i; 300_000];
                    line.push(b'\n');
                    let (r, _) = b.write_all(line).await;
                    r.unwrap();
                }
            });
            let mut rd = LineReader::new(a, 300_000);
            for i in 0..20u8 {
                match rd.next().await {
                    Some(Next::Line(l)) => {
                        assert_eq!(l.len(), 300_000);
                        assert!(l.iter().all(|&c| c == b'a' + i));
                    }
                    other => panic!("{other:?}"),
                }
            }
            writer.await;
            assert!(rd.next().await.is_none());
        });
    }
}
