//! The process thread: it forks every child and reaps every child, so no
//! worker ever forks or waits. Also process-group signals and the stdin
//! shutdown that std does not offer.
//!
//! One thread (`ringgate-procs`), started on first use, lives as long as the
//! process. It blocks in `poll(2)` on an eventfd, which workers write after
//! queueing a [`spawn`] request, and on one pidfd per live child (Linux 5.3+),
//! which becomes readable when the child exits. A worker awaits the spawn's
//! answer and, later, the child's exit on flume channels (cross-thread wakes
//! work with monoio's `sync` feature). On kernels without `pidfd_open` the
//! thread checks those children every [`FALLBACK_CHECK_MS`] instead.
//!
//! Reaping: when a child exits, the thread first SIGKILLs what is left of its
//! process group (npx's node, a backgrounded helper: once the leader is
//! reaped its group id could name someone else's group), then reaps it, gives
//! back its live slot, and publishes the status. A worker's signal to the
//! group is sent under the same per-child lock, and only while the child is
//! unreaped, so it can never hit a reused group id.
//!
//! Orphans: a child whose handle is dropped without `stop` is SIGKILLed at
//! once and reaped by the thread like any other; [`reap_orphans`] counts
//! those not reaped yet.
//!
//! Forking happens on this one long-lived thread for a second reason: the
//! children's parent-death signal (see [`spawn`]) fires when the thread that
//! forked them exits, not the process.
//!
//! `unsafe` is lifted here, and only here in the pool, for syscalls std does
//! not offer: `kill(-pgid, sig)`, `pidfd_open`, `poll`, eventfd, `waitid(..,
//! WNOWAIT)` (the fallback), `shutdown(fd, SHUT_WR)`, and a `pre_exec` hook.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child as StdChild, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::stdio::{ChildIo, Ends};

/// What to run. `env` is added to the inherited environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ChildSpec {
    /// What runs for an MCP target: its command, arguments and environment.
    /// A child's stdin is a pipe or a socket, not a terminal, and npx then refuses to
    /// fetch a package it has not cached unless told yes; the seed config
    /// relies on it fetching.
    pub fn of_target(t: &crate::config::McpTarget) -> ChildSpec {
        let mut env = t.env.clone();
        let npx = std::path::Path::new(&t.cmd)
            .file_name()
            .is_some_and(|n| n == "npx");
        if npx
            && !env
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("npm_config_yes"))
        {
            env.push(("npm_config_yes".into(), "true".into()));
        }
        ChildSpec {
            cmd: t.cmd.clone(),
            args: t.args.clone(),
            env,
        }
    }
}

/// How often the thread checks children it has no pidfd for.
pub const FALLBACK_CHECK_MS: i32 = 100;

/// One unit of the global count of live children (all workers share it, so
/// `max_live` is global). Given back exactly once, by `Drop`: when the child
/// it was taken for is reaped, or right away if the spawn failed.
#[derive(Debug)]
pub struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    /// Takes a slot if fewer than `max` are taken.
    pub fn try_acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<LiveSlot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| LiveSlot(counter.clone()))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends `sig` to every process in the group `pgid`. A group that is already
/// empty is not an error. Callers only pass the group of a child that is not
/// reaped yet (see the module doc for why that makes the id safe to use).
fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return; // never kill(-1) or kill(0): that would hit everything we own
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(target: "child", pgid, sig, error = %e, "signalling the process group failed");
        }
    }
}

/// `shutdown(fd, SHUT_WR)`: the peer reads EOF at once, even while a write
/// of ours is in flight on the same socket (it then fails with EPIPE).
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) has no memory-safety preconditions; the caller keeps
    // the socket open (see `child::WriterInner`), so `fd` names our socket.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ------------------------------------------------------------ worker side

/// A spawned child as the worker receives it: its pid, our ends of its
/// stdin and stdout (see `stdio.rs`) and of its stderr socket (blocking
/// mode off), and its exit.
pub(crate) struct Spawned {
    pub pid: u32,
    pub stdio: Ends,
    pub stderr: StdUnixStream,
    pub exit: ExitWatch,
}

/// What the process thread and the owning worker share about one child.
#[derive(Default)]
struct ExitState {
    status: Option<ExitStatus>,
    /// Its handle was dropped while it ran.
    orphaned: bool,
}

fn lock(state: &Mutex<ExitState>) -> MutexGuard<'_, ExitState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker's view of a child's exit.
pub(crate) struct ExitWatch {
    pid: u32,
    state: Arc<Mutex<ExitState>>,
    /// Disconnected by the process thread once the status is published.
    done: flume::Receiver<()>,
}

impl ExitWatch {
    /// The exit status, once the child is reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        lock(&self.state).status
    }

    /// Waits until the child is reaped. Any number of tasks may wait.
    pub async fn wait(&self) -> ExitStatus {
        loop {
            if let Some(s) = self.status() {
                return s;
            }
            if self.done.recv_async().await.is_err() {
                // Disconnected: the status is set first, unless the process
                // thread died (a panic there ends the process anyway).
                return self.status().unwrap_or_else(|| {
                    lost_status(self.pid, io::Error::other("the process thread is gone"))
                });
            }
        }
    }

    /// Sends `sig` to the child's process group if the child is not reaped
    /// yet; whether it did.
    pub fn signal_group(&self, sig: libc::c_int) -> bool {
        let st = lock(&self.state);
        if st.status.is_some() {
            return false;
        }
        signal_group(self.pid, sig);
        true
    }

    /// SIGKILLs the group of a child nobody will wait for; the process
    /// thread reaps it. The status instead, if it was reaped already.
    pub fn abandon(&self) -> Option<ExitStatus> {
        let mut st = lock(&self.state);
        if st.status.is_some() {
            return st.status;
        }
        signal_group(self.pid, libc::SIGKILL);
        if !st.orphaned {
            st.orphaned = true;
            ORPHANS.fetch_add(1, Ordering::AcqRel);
        }
        None
    }
}

/// Children dropped while alive and not reaped yet.
static ORPHANS: AtomicUsize = AtomicUsize::new(0);

/// How many children dropped while alive are still waiting to be reaped
/// (the process thread reaps them as they exit).
pub fn reap_orphans() -> usize {
    ORPHANS.load(Ordering::Acquire)
}

/// Spawns `spec` on the process thread; `slot` is given back when the child
/// is reaped (or at once if the spawn fails). The child leads its own
/// process group, inherits only fds 0-2, and dies with ringgate (SIGKILL).
pub(crate) async fn spawn(
    spec: ChildSpec,
    io: ChildIo,
    slot: Option<LiveSlot>,
) -> io::Result<Spawned> {
    procs()?.spawn(spec, io, slot).await
}

// ------------------------------------------------------------ the thread

struct SpawnRequest {
    spec: ChildSpec,
    io: ChildIo,
    slot: Option<LiveSlot>,
    reply: flume::Sender<io::Result<Spawned>>,
}

/// A handle on one process thread: where to queue requests and how to wake it.
pub(crate) struct Procs {
    tx: flume::Sender<SpawnRequest>,
    wake: OwnedFd,
}

static PROCS: OnceLock<Procs> = OnceLock::new();
static PROCS_INIT: Mutex<()> = Mutex::new(());

/// The process-wide thread, started on first use.
fn procs() -> io::Result<&'static Procs> {
    if let Some(p) = PROCS.get() {
        return Ok(p);
    }
    let _g = PROCS_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = PROCS.get() {
        return Ok(p);
    }
    let p = Procs::start(true)?;
    Ok(PROCS.get_or_init(|| p))
}

impl Procs {
    /// Starts a process thread. `use_pidfd: false` forces the fallback that
    /// checks children periodically (tests use it).
    pub(crate) fn start(use_pidfd: bool) -> io::Result<Procs> {
        // SAFETY: eventfd(2) has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let (tx, rx) = flume::unbounded();
        let thread_wake = wake.try_clone()?;
        std::thread::Builder::new()
            .name("ringgate-procs".into())
            .spawn(move || {
                Thread {
                    rx,
                    wake: thread_wake,
                    use_pidfd,
                    live: Vec::new(),
                }
                .run()
            })?;
        Ok(Procs { tx, wake })
    }

    pub(crate) async fn spawn(
        &self,
        spec: ChildSpec,
        io: ChildIo,
        slot: Option<LiveSlot>,
    ) -> io::Result<Spawned> {
        let (reply, answer) = flume::bounded(1);
        self.tx
            .send(SpawnRequest {
                spec,
                io,
                slot,
                reply,
            })
            .map_err(|_| io::Error::other("the process thread is gone"))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        answer
            .recv_async()
            .await
            .map_err(|_| io::Error::other("the process thread is gone"))?
    }
}

/// One child the thread watches.
struct Entry {
    child: StdChild,
    pidfd: Option<OwnedFd>,
    state: Arc<Mutex<ExitState>>,
    slot: Option<LiveSlot>,
    /// Dropped once the status is published: wakes every waiter.
    _done: flume::Sender<()>,
}

struct Thread {
    rx: flume::Receiver<SpawnRequest>,
    wake: OwnedFd,
    use_pidfd: bool,
    live: Vec<Entry>,
}

impl Thread {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            fds.clear();
            fds.push(pollfd(self.wake.as_raw_fd()));
            for e in &self.live {
                // poll ignores negative fds.
                fds.push(pollfd(e.pidfd.as_ref().map_or(-1, |f| f.as_raw_fd())));
            }
            let fallback = self.live.iter().any(|e| e.pidfd.is_none());
            let timeout = if fallback { FALLBACK_CHECK_MS } else { -1 };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(target: "child", error = %e, "poll failed in the process thread");
                    std::thread::sleep(std::time::Duration::from_millis(FALLBACK_CHECK_MS as u64));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut buf = 0u64;
                // SAFETY: reads 8 bytes into a valid u64 from our eventfd.
                unsafe { libc::read(self.wake.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
            }
            // Reap first: that frees live slots before new spawns.
            let mut ready = fds[1..].iter().map(|f| f.revents != 0);
            self.live.retain_mut(|e| {
                let ready = ready.next().unwrap_or(false);
                let check = ready || (e.pidfd.is_none() && has_exited(e.child.id()));
                // Dropping a reaped entry disconnects `done`: waiters wake.
                !(check && reap(e))
            });
            while let Ok(req) = self.rx.try_recv() {
                self.serve(req);
            }
        }
    }

    fn serve(&mut self, req: SpawnRequest) {
        let (entry, spawned) = match fork_exec(&req.spec, req.io, self.use_pidfd) {
            Ok(x) => x,
            Err(e) => {
                // The slot goes back with the request.
                let _ = req.reply.send(Err(e));
                return;
            }
        };
        let mut entry = entry;
        entry.slot = req.slot;
        if let Err(flume::SendError(Ok(s))) = req.reply.send(Ok(spawned)) {
            // The worker gave up waiting (it is shutting down): nobody
            // will stop this child, so kill it now; it is reaped below.
            s.exit.abandon();
        }
        self.live.push(entry);
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reaps `e` if it has exited; whether it did. SIGKILLs the rest of its
/// group first, then publishes the status under the lock workers signal
/// under.
fn reap(e: &mut Entry) -> bool {
    let pid = e.child.id();
    let mut st = lock(&e.state);
    signal_group(pid, libc::SIGKILL);
    let status = match e.child.try_wait() {
        Ok(Some(s)) => s,
        Ok(None) => return false,
        Err(err) => lost_status(pid, err),
    };
    // The slot before the status: whoever sees the exit sees the count down.
    e.slot.take();
    st.status = Some(status);
    if st.orphaned {
        ORPHANS.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(target: "child", pid, %status, "orphan reaped");
    }
    true
}

/// Forks and execs `spec` (on the process thread).
fn fork_exec(spec: &ChildSpec, io: ChildIo, use_pidfd: bool) -> io::Result<(Entry, Spawned)> {
    let (ours, theirs) = Ends::open(io)?;
    let (err_ours, err_theirs) = StdUnixStream::pair()?;
    // monoio's epoll driver expects non-blocking fds; io_uring is fine
    // with them too.
    err_ours.set_nonblocking(true)?;
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(theirs.stdin))
        .stdout(Stdio::from(theirs.stdout))
        .stderr(Stdio::from(OwnedFd::from(err_theirs)))
        .process_group(0);
    before_exec(&mut cmd);
    let spawned = cmd.spawn();
    // Our copies of the child's ends must close now, or we would never
    // see EOF when the child exits.
    drop(cmd);
    let child = spawned?;
    let pid = child.id();
    let pidfd = if use_pidfd { pidfd_open(pid) } else { None };
    let state = Arc::new(Mutex::new(ExitState::default()));
    let (done, done_rx) = flume::bounded(1);
    let entry = Entry {
        child,
        pidfd,
        state: state.clone(),
        slot: None,
        _done: done,
    };
    let spawned = Spawned {
        pid,
        stdio: ours,
        stderr: err_ours,
        exit: ExitWatch {
            pid,
            state,
            done: done_rx,
        },
    };
    Ok((entry, spawned))
}

/// A pidfd for our child `pid`, or `None` where the kernel has none (before
/// 5.3) or it cannot be had (out of descriptors): then the fallback checks.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            tracing::warn!(target: "child", pid, error = %e, "pidfd_open failed; checking the child's exit periodically");
        }
        return None;
    }
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether our child `pid` has exited, leaving it unreaped (WNOWAIT).
fn has_exited(pid: u32) -> bool {
    let id = libc::id_t::from(pid);
    // SAFETY: an all-zero siginfo_t is a valid value (plain C struct), and
    // waitid only writes into the struct we pass.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t.
    if unsafe { libc::waitid(libc::P_PID, id, &mut info, flags) } == -1 {
        return true; // ECHILD: let `reap` find out and report it
    }
    // With WNOHANG and no state change the kernel leaves si_pid at 0.
    // SAFETY: reading the pid field of a siginfo_t filled by waitid.
    unsafe { info.si_pid() != 0 }
}

/// Someone else reaped our child (ECHILD): we cannot learn how it ended, but
/// must not wait for it forever either. Reported as killed by SIGKILL.
fn lost_status(pid: u32, e: io::Error) -> ExitStatus {
    tracing::error!(target: "child", pid, error = %e, "child was reaped elsewhere; exit status lost");
    ExitStatus::from_raw(libc::SIGKILL)
}

/// Runs in the forked child just before exec. Makes it inherit only its
/// stdio (fds 0-2): whatever else the proxy holds when it forks (client
/// connections accepted without `SOCK_CLOEXEC`, listeners, other children's
/// sockets) is marked close-on-exec. A child holding a client's socket would
/// keep that connection open after the proxy closed it, and could read or
/// write another client's traffic. Marking instead of closing keeps std's
/// own exec-error pipe working (it is close-on-exec already).
///
/// It also ties the child's life to ringgate's: `PR_SET_PDEATHSIG(SIGKILL)`
/// kills it when the thread that forked it exits, and that thread (the
/// process thread) lives as long as the process. So a SIGKILLed or crashed
/// ringgate leaves no child behind, even one that ignores stdin EOF and
/// SIGTERM. (Only the direct child: a grandchild, such as the node that npx
/// runs, still sees stdin EOF and must exit by itself.) If ringgate died
/// between fork and prctl, the child is already orphaned: it exits at once.
fn before_exec(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions; read before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and makes only
    // raw syscalls (prctl, getppid, _exit, close_range, getrlimit, fcntl),
    // which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            mark_cloexec_above_stdio();
            Ok(())
        });
    }
}

fn mark_cloexec_above_stdio() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: every descriptor up to the soft limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        4096
    };
    for fd in 3..max {
        // SAFETY: fcntl on a descriptor that may not exist fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildSpec {
        ChildSpec {
            cmd: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
        }
    }

    /// Not our child any more: reaped, not left a zombie.
    fn reaped(pid: u32) -> bool {
        // SAFETY: waitpid with WNOHANG and no status pointer.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    }

    /// The same through a pidfd and through the periodic fallback (kernels
    /// before 5.3): exits are reported with their status, dropped children
    /// are killed, slots come back, and everything is reaped.
    #[test]
    fn exits_are_reported_with_and_without_pidfd() {
        for use_pidfd in [true, false] {
            let procs = Procs::start(use_pidfd).unwrap();
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(async {
                let live = Arc::new(AtomicUsize::new(0));
                let slot = LiveSlot::try_acquire(&live, 4);
                let c = procs
                    .spawn(sh("exit 7"), ChildIo::Socketpair, slot)
                    .await
                    .unwrap();
                assert_eq!(c.exit.wait().await.code(), Some(7), "pidfd {use_pidfd}");
                assert_eq!(live.load(Ordering::Acquire), 0);
                assert!(reaped(c.pid));

                let slot = LiveSlot::try_acquire(&live, 4);
                let c = procs
                    .spawn(sh("exec sleep 1000"), ChildIo::Socketpair, slot)
                    .await
                    .unwrap();
                assert_eq!(c.exit.status(), None);
                assert!(c.exit.signal_group(libc::SIGTERM));
                assert_eq!(c.exit.wait().await.signal(), Some(libc::SIGTERM));
                assert!(!c.exit.signal_group(libc::SIGTERM), "reaped: no signal");
                assert!(reaped(c.pid));

                let c = procs
                    .spawn(sh("exec sleep 1000"), ChildIo::Socketpair, None)
                    .await
                    .unwrap();
                assert_eq!(c.exit.abandon(), None);
                assert_eq!(c.exit.wait().await.signal(), Some(libc::SIGKILL));
                assert!(reaped(c.pid));

                let e = procs
                    .spawn(
                        sh("x").with_cmd("/nonexistent/x"),
                        ChildIo::Socketpair,
                        None,
                    )
                    .await;
                assert!(e.is_err());
            });
        }
    }

    impl ChildSpec {
        fn with_cmd(mut self, cmd: &str) -> Self {
            self.cmd = cmd.into();
            self
        }
    }
}
