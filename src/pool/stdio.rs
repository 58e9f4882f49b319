//! A child's stdin and stdout, as ringgate holds them.
//!
//! On io_uring they are two pipes, read and written with `read_at` and
//! `write_at` (a pipe has no offset; the kernel ignores it). A line's round
//! trip through a child costs less that way than through a socketpair, for
//! ringgate and for the child, which reads and writes pipes the way it does
//! under any MCP client's stdio transport. monoio's epoll driver cannot read
//! a pipe so (its `pread` fails with ESPIPE): there the child gets one end of
//! a socketpair as both stdin and stdout.
//!
//! Which one a child gets follows the driver of the thread that spawns it:
//! a thread that runs io_uring says so once with [`set_thread_io`]; the
//! default is the socketpair, which works on both drivers.
//!
//! Pipes are the kernel's default size (64 KiB). A user past
//! `fs.pipe-user-pages-soft` gets smaller ones, which still work, only with
//! more reads and writes per large line.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use monoio::fs::File;
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::UnixStream;
use monoio::BufResult;

pub use super::reader::ReadSource;

/// How a child's stdin and stdout are connected to ringgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildIo {
    /// One socketpair end as both (either driver).
    Socketpair,
    /// A pipe each (io_uring only).
    Pipes,
}

thread_local! {
    static THREAD_IO: Cell<ChildIo> = const { Cell::new(ChildIo::Socketpair) };
}

/// Children spawned from this thread from now on get `io`. A thread sets
/// [`ChildIo::Pipes`] only when its monoio runtime runs io_uring.
pub fn set_thread_io(io: ChildIo) {
    THREAD_IO.with(|c| c.set(io));
}

pub(crate) fn thread_io() -> ChildIo {
    THREAD_IO.with(Cell::get)
}

/// Our ends, as the process thread hands them to the worker (and as the
/// load bench holds its direct children's).
pub enum Ends {
    Socket(StdUnixStream),
    Pipes { stdin: OwnedFd, stdout: OwnedFd },
}

/// The child's ends: its fd 0 and fd 1.
pub struct Theirs {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
}

impl Ends {
    /// New ends of the kind `io`, close-on-exec on both sides (the child's
    /// are dup'ed onto 0 and 1 by the spawn).
    pub fn open(io: ChildIo) -> io::Result<(Ends, Theirs)> {
        match io {
            ChildIo::Socketpair => {
                let (ours, theirs) = StdUnixStream::pair()?;
                // monoio's epoll driver expects non-blocking fds; io_uring is
                // fine with them too.
                ours.set_nonblocking(true)?;
                let stdout = OwnedFd::from(theirs.try_clone()?);
                let stdin = OwnedFd::from(theirs);
                Ok((Ends::Socket(ours), Theirs { stdin, stdout }))
            }
            ChildIo::Pipes => {
                // Blocking ends: io_uring tries a pipe without blocking and
                // waits for readiness itself.
                let (their_stdin, our_stdin) = std::io::pipe()?;
                let (our_stdout, their_stdout) = std::io::pipe()?;
                let ends = Ends::Pipes {
                    stdin: our_stdin.into(),
                    stdout: our_stdout.into(),
                };
                let theirs = Theirs {
                    stdin: their_stdin.into(),
                    stdout: their_stdout.into(),
                };
                Ok((ends, theirs))
            }
        }
    }

    /// Other descriptors for the same ends.
    pub fn try_clone(&self) -> io::Result<Ends> {
        Ok(match self {
            Ends::Socket(s) => Ends::Socket(s.try_clone()?),
            Ends::Pipes { stdin, stdout } => Ends::Pipes {
                stdin: stdin.try_clone()?,
                stdout: stdout.try_clone()?,
            },
        })
    }

    /// Registers them with this thread's runtime.
    pub fn into_monoio(self) -> io::Result<(Stdout, Stdin)> {
        match self {
            Ends::Socket(s) => {
                let stream = UnixStream::from_std(s)?;
                let fd = stream.as_raw_fd();
                let (rd, wr) = stream.into_split();
                Ok((Stdout::Socket(rd), Stdin::Socket { half: wr, fd }))
            }
            Ends::Pipes { stdin, stdout } => Ok((
                Stdout::Pipe(File::from_std(std::fs::File::from(stdout))?),
                Stdin::Pipe(File::from_std(std::fs::File::from(stdin))?),
            )),
        }
    }
}

/// The read side of the child's stdout.
pub enum Stdout {
    Socket(OwnedReadHalf<UnixStream>),
    Pipe(File),
}

impl ReadSource for Stdout {
    async fn read_some<B: monoio::buf::IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stdout::Socket(s) => s.read_some(buf).await,
            Stdout::Pipe(f) => f.read_at(buf, 0).await,
        }
    }
}

/// The write side of the child's stdin.
pub enum Stdin {
    /// `fd` is the socket's, for `shutdown` (see [`Stdin::eof`]).
    Socket {
        half: OwnedWriteHalf<UnixStream>,
        fd: RawFd,
    },
    Pipe(File),
}

/// How the child is given EOF on its stdin.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Eof {
    /// `shutdown(fd, SHUT_WR)`, even while a write holds the socket (the
    /// write then fails); the fd stays ours as long as the read half lives.
    Shutdown(RawFd),
    /// Closing our end, by dropping it; a write in flight closes it when it
    /// is done.
    Close,
}

impl Stdin {
    pub(crate) fn eof(&self) -> Eof {
        match self {
            Stdin::Socket { fd, .. } => Eof::Shutdown(*fd),
            Stdin::Pipe(_) => Eof::Close,
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Stdin::Socket { half, .. } => {
                let (res, buf) = half.write_all(buf).await;
                (res.map(|_| ()), buf)
            }
            // The offsets it passes mean nothing to a pipe.
            Stdin::Pipe(f) => f.write_all_at(buf, 0).await,
        }
    }
}
