//! Process-group signals, exit detection that does not reap, and the
//! process-wide list of children that were dropped while still alive.
//!
//! `unsafe` is lifted here, and only here in the pool, for three syscalls
//! that std does not offer: `kill(-pgid, sig)` (std only signals the leader,
//! but `npx` runs the real server as a grandchild in the leader's group),
//! `waitid(.., WNOWAIT)` (to see that the leader exited *without* reaping it:
//! while the leader is an unreaped zombie its pid, and so the group id, cannot
//! be reused, which makes the group kill that follows safe), and
//! `shutdown(fd, SHUT_WR)` on a socket that another task may be writing to;
//! and a `pre_exec` hook that keeps every descriptor but stdio from leaking
//! into a child (see [`inherit_only_stdio`]).
//!
//! Orphans: a child whose handle is dropped without `stop` is killed at once
//! (SIGKILL to its group) and parked here with its live-count slot. Nothing
//! may block a worker in `waitpid`, so [`reap_orphans`] polls the list without
//! blocking; every pool's refill task calls it on each tick (at most
//! [`crate::pool::IDLE_CHECK_MS`] apart) and [`crate::pool::child::Child::spawn`]
//! calls it too, so orphans are reaped within about a second on any process
//! that runs a pool. The list is behind a `Mutex` because any worker may poll
//! it; it is touched only on these cold paths.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child as StdChild, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
/// empty is not an error. Callers only pass the group of a child they have not
/// reaped yet (see the module doc for why that makes the id safe to use).
pub(crate) fn signal_group(pgid: u32, sig: libc::c_int) {
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

/// Whether our child `pid` has exited, leaving it unreaped (WNOWAIT).
fn has_exited(pid: u32) -> io::Result<bool> {
    let id = libc::id_t::from(pid);
    // SAFETY: an all-zero siginfo_t is a valid value (plain C struct), and
    // waitid only writes into the struct we pass.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t.
    if unsafe { libc::waitid(libc::P_PID, id, &mut info, flags) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // With WNOHANG and no state change the kernel leaves si_pid at 0.
    // SAFETY: reading the pid field of a siginfo_t filled by waitid.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Reaps `child` if it has exited. Before reaping, SIGKILLs whatever is left
/// of its process group (npx's node, a backgrounded helper): once the leader
/// is reaped its group id could name someone else's group.
pub(crate) fn reap_if_exited(child: &mut StdChild) -> Option<ExitStatus> {
    match has_exited(child.id()) {
        Ok(false) => None,
        Ok(true) => {
            signal_group(child.id(), libc::SIGKILL);
            match child.try_wait() {
                Ok(Some(status)) => Some(status),
                Ok(None) => None,
                Err(e) => Some(lost_status(child.id(), e)),
            }
        }
        Err(e) => Some(lost_status(child.id(), e)),
    }
}

/// Someone else reaped our child (ECHILD): we cannot learn how it ended, but
/// must not poll it forever either. Reported as killed by SIGKILL.
fn lost_status(pid: u32, e: io::Error) -> ExitStatus {
    tracing::error!(target: "child", pid, error = %e, "child was reaped elsewhere; exit status lost");
    ExitStatus::from_raw(libc::SIGKILL)
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

/// Makes `cmd`'s child inherit only its stdio (fds 0-2). Whatever else the
/// proxy holds when it forks (client connections accepted without
/// `SOCK_CLOEXEC`, listeners, other children's sockets) is marked
/// close-on-exec in the child just before exec: a child holding a client's
/// socket would keep that connection open after the proxy closed it, and
/// could read or write another client's traffic. Marking instead of closing
/// keeps std's own exec-error pipe working (it is close-on-exec already).
pub(crate) fn inherit_only_stdio(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and makes only
    // raw syscalls (close_range, getrlimit, fcntl), which are async-signal-safe;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
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

struct Orphan {
    child: StdChild,
    _slot: Option<LiveSlot>,
}

static ORPHANS: Mutex<Vec<Orphan>> = Mutex::new(Vec::new());
/// Length of `ORPHANS`, readable without the lock on the hot-ish paths.
static ORPHAN_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Parks a dropped, already SIGKILLed child until it can be reaped.
pub(crate) fn adopt(child: StdChild, slot: Option<LiveSlot>) {
    let mut list = ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    list.push(Orphan { child, _slot: slot });
    ORPHAN_COUNT.store(list.len(), Ordering::Release);
}

/// Reaps every parked orphan that has exited, without blocking, and returns
/// how many are still waiting. Cheap when there are none (one atomic load).
pub fn reap_orphans() -> usize {
    if ORPHAN_COUNT.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let mut list = ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    list.retain_mut(|o| match reap_if_exited(&mut o.child) {
        Some(status) => {
            tracing::debug!(target: "child", pid = o.child.id(), %status, "orphan reaped");
            false // dropping the entry gives its live slot back
        }
        None => true,
    });
    ORPHAN_COUNT.store(list.len(), Ordering::Release);
    list.len()
}
