//! One stdio MCP server child: spawn, line I/O, stop, reap.
//!
//! stdin and stdout are two pipes on io_uring and one end of a `socketpair`
//! on epoll (see `stdio.rs`). stderr is a socketpair read by a task that logs
//! it (see `stderr.rs`). The child leads its own process group, because `npx`
//! runs the real server as a grandchild (npm -> sh -> node): every signal goes
//! to the whole group.
//!
//! A [`Child`] splits into three parts for different tasks: a [`ChildWriter`]
//! (cloneable; concurrent sends are serialised whole lines), a [`ChildReader`]
//! (one owner) and a [`ChildHandle`] (cloneable; pid, exit, stop).
//!
//! Forking and reaping happen on the process thread (`reaper.rs`), never on
//! a worker: [`Child::spawn`] awaits the thread's answer, and the exit is
//! learnt from it as soon as the child is reaped (a pidfd there), never by
//! polling. [`ChildHandle::stop`] escalates stdin EOF -> SIGTERM -> SIGKILL
//! and waits for the reap; a handle dropped while the child lives SIGKILLs
//! the group and leaves the reap to the thread ([`super::reap_orphans`]
//! counts those).

use std::cell::{Cell, RefCell};
use std::io;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::UnixStream;

use super::reader::{LineReader, Next};
pub use super::reaper::ChildSpec;
use super::reaper::{self, ExitWatch, LiveSlot};
use super::stderr::{self, StderrCtx, StderrStats};
use super::stdio::{self, Stdout};
pub use super::writer::ChildWriter;

/// Session shown in stderr logs before the child is handed to a session.
const NO_SESSION: &str = "-";

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("line from child exceeds {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("child I/O: {0}")]
    Io(#[from] io::Error),
}

/// How a child ended, as far as we can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// On its own, with an exit code: before anyone asked it to stop, or
    /// after it had closed its stdout (it was ending anyway).
    Exited,
    /// Killed by a signal ringgate did not send (a crash, someone's kill).
    Signaled,
    /// After `stop` closed its stdin, within the grace period.
    StdinClosed,
    /// After `stop` sent SIGTERM to its group.
    Terminated,
    /// After `stop` sent SIGKILL to its group.
    Killed,
    /// Its handle was dropped while it ran: SIGKILLed, reaped as an orphan.
    Dropped,
}

/// Exit counts by cause, shared by the children of one pool (one worker).
#[derive(Debug, Default)]
pub struct ExitCounts {
    counts: [Cell<u64>; 6],
}

impl ExitCounts {
    fn idx(c: ExitCause) -> usize {
        match c {
            ExitCause::Exited => 0,
            ExitCause::StdinClosed => 1,
            ExitCause::Terminated => 2,
            ExitCause::Killed => 3,
            ExitCause::Dropped => 4,
            ExitCause::Signaled => 5,
        }
    }
    pub fn get(&self, c: ExitCause) -> u64 {
        self.counts[Self::idx(c)].get()
    }
    fn add(&self, c: ExitCause) {
        let cell = &self.counts[Self::idx(c)];
        cell.set(cell.get() + 1);
    }
}

/// Per-spawn settings.
#[derive(Debug)]
pub struct SpawnOptions {
    /// Longest line accepted from the child's stdout (without its `\n`).
    pub max_line_bytes: usize,
    /// Names the backend in logs (the pool's label).
    pub backend: Rc<str>,
    /// Global live-count slot, given back when this child is reaped.
    pub live: Option<LiveSlot>,
    /// Where to count this child's exit.
    pub exits: Option<Rc<ExitCounts>>,
}

/// A spawned child with its three parts.
pub struct Child {
    handle: ChildHandle,
    writer: ChildWriter,
    reader: ChildReader,
}

impl Child {
    /// Spawns `spec` on the process thread and waits for it. Must run on a
    /// monoio runtime (the stderr task is spawned on it; the sockets
    /// register with its driver).
    pub async fn spawn(spec: &ChildSpec, opts: SpawnOptions) -> io::Result<Child> {
        let spawned = reaper::spawn(spec.clone(), stdio::thread_io(), opts.live).await?;
        let pid = spawned.pid;
        let wired = spawned
            .stdio
            .into_monoio()
            .and_then(|s| Ok((s, UnixStream::from_std(spawned.stderr)?)));
        let ((rd, wr), err_stream) = match wired {
            Ok(s) => s,
            Err(e) => {
                spawned.exit.abandon();
                return Err(e);
            }
        };
        let writer = ChildWriter::new(wr);
        let session: Rc<RefCell<Rc<str>>> = Rc::new(RefCell::new(Rc::from(NO_SESSION)));
        let stats = Rc::new(Cell::new(StderrStats::default()));
        let stdout_closed = Rc::new(Cell::new(false));
        monoio::spawn(stderr::log_task(
            err_stream,
            StderrCtx {
                pid,
                backend: opts.backend.clone(),
                session: session.clone(),
                stats: stats.clone(),
            },
        ));
        tracing::debug!(target: "child", pid, backend = %opts.backend, "child spawned");
        let handle = ChildHandle(Rc::new(Proc {
            pid,
            exit: spawned.exit,
            status: Cell::new(None),
            stopping: Cell::new(ExitCause::Exited),
            cause: Cell::new(None),
            stdout_closed: stdout_closed.clone(),
            stdin: writer.clone(),
            session,
            stderr: stats,
            exits: opts.exits,
            spawned_at: Instant::now(),
        }));
        let reader = ChildReader {
            lines: LineReader::new(rd, opts.max_line_bytes),
            limit: opts.max_line_bytes,
            stdout_closed,
        };
        Ok(Child {
            handle,
            writer,
            reader,
        })
    }

    pub fn pid(&self) -> u32 {
        self.handle.pid()
    }
    pub fn handle(&self) -> &ChildHandle {
        &self.handle
    }
    pub fn writer(&self) -> &ChildWriter {
        &self.writer
    }
    pub fn reader(&mut self) -> &mut ChildReader {
        &mut self.reader
    }
    pub fn into_parts(self) -> (ChildHandle, ChildWriter, ChildReader) {
        (self.handle, self.writer, self.reader)
    }
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.handle.try_exit()
    }
    pub async fn send(&self, line: &[u8]) -> io::Result<()> {
        self.writer.send(line).await
    }
    pub async fn next_line(&mut self) -> Option<Result<Vec<u8>, ChildError>> {
        self.reader.next_line().await
    }
    pub async fn wait_exit(&self) -> ExitStatus {
        self.handle.wait_exit().await
    }
    pub async fn stop(&self, grace: Duration) -> ExitStatus {
        self.handle.stop(grace).await
    }
}

/// Reads the child's stdout, one line at a time. Cancel-safe.
pub struct ChildReader {
    lines: LineReader<Stdout>,
    limit: usize,
    /// Shared with the handle: the child closed its stdout (EOF read).
    stdout_closed: Rc<Cell<bool>>,
}

impl ChildReader {
    /// One line without its `\n` (`\r\n` tolerated); `None` at EOF. A line
    /// over the limit gives `LineTooLong` and finishes the reader, since the
    /// framing cannot be trusted after it.
    pub async fn next_line(&mut self) -> Option<Result<Vec<u8>, ChildError>> {
        let Some(next) = self.lines.next().await else {
            self.stdout_closed.set(true);
            return None;
        };
        Some(match next {
            Next::Line(l) => Ok(l),
            Next::TooLong => Err(ChildError::LineTooLong { limit: self.limit }),
            Next::Error(e) => Err(ChildError::Io(e)),
        })
    }
}

/// Pid, exit status, stop. Clones share one child; dropping the last one
/// while the child runs kills its group (see the module doc).
#[derive(Clone)]
pub struct ChildHandle(Rc<Proc>);

struct Proc {
    pid: u32,
    /// Filled in by the process thread when it reaps the child.
    exit: ExitWatch,
    /// The status once this worker has seen it (and counted the exit).
    status: Cell<Option<ExitStatus>>,
    /// The cause to record if it exits now (what `stop` last did).
    stopping: Cell<ExitCause>,
    cause: Cell<Option<ExitCause>>,
    /// EOF was read from its stdout: a child stopped after that was ending
    /// on its own, not because its stdin closed.
    stdout_closed: Rc<Cell<bool>>,
    stdin: ChildWriter,
    session: Rc<RefCell<Rc<str>>>,
    stderr: Rc<Cell<StderrStats>>,
    exits: Option<Rc<ExitCounts>>,
    spawned_at: Instant,
}

impl Proc {
    /// Records a status the process thread published; counts the exit once.
    fn seen(&self, status: ExitStatus) -> ExitStatus {
        if self.status.get().is_some() {
            return status;
        }
        let cause = attribute(status, self.stopping.get());
        self.status.set(Some(status));
        self.cause.set(Some(cause));
        if let Some(c) = &self.exits {
            c.add(cause);
        }
        tracing::debug!(target: "child", pid = self.pid, %status, ?cause, "child reaped");
        status
    }
}

/// The cause of an exit: what `stop` last did (`Exited` if nothing), unless
/// the status shows a signal `stop` did not send (a crash, or someone else's
/// kill): `Signaled`.
fn attribute(status: ExitStatus, stopping: ExitCause) -> ExitCause {
    use std::os::unix::process::ExitStatusExt;
    match (stopping, status.signal()) {
        (ExitCause::Terminated, Some(libc::SIGTERM)) | (ExitCause::Killed, Some(libc::SIGKILL)) => {
            stopping
        }
        (_, Some(_)) => ExitCause::Signaled,
        (c, None) => c,
    }
}

impl ChildHandle {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// Time since spawn.
    pub fn age(&self) -> Duration {
        self.0.spawned_at.elapsed()
    }

    /// Names the session in this child's stderr log lines from now on.
    pub fn set_session(&self, session: &str) {
        *self.0.session.borrow_mut() = Rc::from(session);
    }

    pub fn stderr_stats(&self) -> StderrStats {
        self.0.stderr.get()
    }

    /// Why it ended, once reaped.
    pub fn exit_cause(&self) -> Option<ExitCause> {
        self.0.cause.get()
    }

    /// The exit status if the child has exited and been reaped. Never blocks.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        if let Some(s) = self.0.status.get() {
            return Some(s);
        }
        Some(self.0.seen(self.0.exit.status()?))
    }

    /// Waits for the child to exit and be reaped (by the process thread,
    /// which wakes this task; nothing polls).
    pub async fn wait_exit(&self) -> ExitStatus {
        if let Some(s) = self.0.status.get() {
            return s;
        }
        let status = self.0.exit.wait().await;
        self.0.seen(status)
    }

    /// Like `wait_exit`, giving up after `limit`.
    pub async fn wait_exit_for(&self, limit: Duration) -> Option<ExitStatus> {
        monoio::time::timeout(limit, self.wait_exit()).await.ok()
    }

    /// Closes stdin, waits up to `grace`; SIGTERM to the group, waits up to
    /// `grace`; SIGKILL to the group; reaps. Returns at once if already
    /// reaped. Takes at most about 2 x `grace` plus the time SIGKILL takes.
    pub async fn stop(&self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_exit() {
            return s;
        }
        // A child whose stdout already reached EOF (it crashed, or quit) is
        // not stopped by its stdin closing, whatever the order the exit and
        // this call come in.
        if !self.0.stdout_closed.get() {
            self.0.stopping.set(ExitCause::StdinClosed);
        }
        self.0.stdin.close_stdin();
        if let Some(s) = self.wait_exit_for(grace).await {
            return s;
        }
        self.signal(ExitCause::Terminated, libc::SIGTERM);
        if let Some(s) = self.wait_exit_for(grace).await {
            return s;
        }
        tracing::warn!(target: "child", pid = self.0.pid, grace_ms = grace.as_millis() as u64,
            "child ignored stdin EOF and SIGTERM; killing its process group");
        self.signal(ExitCause::Killed, libc::SIGKILL);
        self.wait_exit().await
    }

    fn signal(&self, cause: ExitCause, sig: libc::c_int) {
        // Set first: the exit may be published as soon as the signal lands.
        let before = self.0.stopping.replace(cause);
        // Only while unreaped: the group id is ours until then.
        if !self.0.exit.signal_group(sig) {
            self.0.stopping.set(before);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.get().is_some() {
            return;
        }
        if let Some(status) = self.exit.status() {
            self.seen(status);
            return;
        }
        match self.exit.abandon() {
            Some(status) => {
                self.seen(status);
            }
            None => {
                tracing::warn!(target: "child", pid = self.pid, "child dropped without stop; killing its process group");
                if let Some(c) = &self.exits {
                    c.add(ExitCause::Dropped);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_by_signals_stop_did_not_send_are_their_own() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let sig = |s: i32| ExitStatus::from_raw(s);
        use ExitCause::*;
        for (status, stopping, want) in [
            (code(0), Exited, Exited),
            (code(3), Exited, Exited),
            (code(0), StdinClosed, StdinClosed),
            (code(143), Terminated, Terminated),
            (sig(libc::SIGTERM), Terminated, Terminated),
            (sig(libc::SIGKILL), Killed, Killed),
            // Killed from outside while stdin was being closed.
            (sig(libc::SIGKILL), StdinClosed, Signaled),
            (sig(libc::SIGKILL), Terminated, Signaled),
            (sig(libc::SIGSEGV), Exited, Signaled),
            (sig(libc::SIGTERM), Exited, Signaled),
            (sig(libc::SIGABRT), Killed, Signaled),
        ] {
            assert_eq!(
                attribute(status, stopping),
                want,
                "{status} while {stopping:?}"
            );
        }
    }
}
