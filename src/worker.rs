//! Thread-per-core workers: one monoio runtime per thread, each with its own
//! SO_REUSEPORT listener on every bind, so the kernel spreads connections and
//! no lock is shared on the hot path. Only the compiled `Config` crosses threads.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::config::{Config, IoDriver};
use crate::conn;
use crate::context::{BindCtx, ConnGuard, Generation, Worker, WorkerId};
use crate::lifecycle::{Control, Controls, Drain};
use crate::mcp::{Hub, Job, McpWorker};
use crate::request::PeerAddr;
use crate::stats::{Snapshot, Stats};

/// Pending-connection queue per listener socket.
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 1024;

/// How the process runs, after CLI overrides.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub threads: usize,
    pub driver: IoDriver,
}

/// A bound, not yet serving, set of listener sockets: one per (worker, bind).
pub struct Bound {
    /// `sockets[worker][bind]`.
    sockets: Vec<Vec<std::net::TcpListener>>,
    pub addrs: Vec<SocketAddr>,
}

/// Binds every listener for every worker before any worker starts, so a bind
/// failure leaves nothing bound.
///
/// Each bind is first claimed by a probe socket without `SO_REUSEPORT`
/// (see [`claim`]): the kernel refuses it while any other process listens on
/// the address, even one that set `SO_REUSEPORT` itself, so a second
/// ringgate on a port fails to start instead of silently sharing the traffic
/// with the first. Port 0 takes its free port through the probe; the
/// workers' `SO_REUSEPORT` sockets then join that port.
pub fn bind_all(config: &Config, threads: usize) -> io::Result<Bound> {
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (i, b) in config.binds.iter().enumerate() {
        let wanted = match b.address {
            Some(ip) => SocketAddr::new(ip, b.port),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), b.port),
        };
        let probe = match claim(wanted) {
            Ok(p) => p,
            // A host without IPv6 still gets the default bind on IPv4; only
            // the errors that mean "no IPv6 here" fall back.
            Err(e) if b.address.is_none() && no_ipv6(&e) => {
                warn!(error = %e, "IPv6 unavailable; binding 0.0.0.0 instead of [::]");
                let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), b.port);
                claim(v4).map_err(|e| bind_error(i, v4, e))?
            }
            Err(e) => return Err(bind_error(i, wanted, e)),
        };
        // The probe stays bound (not listening) until every worker's socket
        // is, so nobody takes the port in between.
        let addr = probe
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other(format!("binds[{i}]: the bound address is not IP")))?;
        for per_worker in sockets.iter_mut() {
            let l = bind_one(addr).map_err(|e| bind_error(i, addr, e))?;
            per_worker.push(l);
        }
        drop(probe);
        addrs.push(addr);
    }
    Ok(Bound { sockets, addrs })
}

/// Binds `addr` with a socket that does not set `SO_REUSEPORT` and does not
/// listen: `EADDRINUSE` if another process listens there. `SO_REUSEADDR` is
/// set, so connections of an earlier run still in TIME_WAIT do not count,
/// and so the workers' sockets (which set it too) can bind beside it.
fn claim(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Dual-stack, like the listeners: an IPv4 holder of the port counts.
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Errors that mean this host has no IPv6 (module not loaded, disabled).
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// Names the bind by its YAML path, and says plainly when the port is taken.
fn bind_error(i: usize, addr: SocketAddr, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EADDRINUSE) {
        return io::Error::new(
            e.kind(),
            format!(
                "binds[{i}].port: {addr} is already in use by another process \
                 (is another ringgate running? two never share a port)"
            ),
        );
    }
    io::Error::new(e.kind(), format!("binds[{i}]: bind {addr}: {e}"))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Dual-stack, so the default `[::]` also takes IPv4 clients.
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Resolves `auto` to the driver this kernel allows.
pub fn resolve_driver(want: IoDriver) -> IoDriver {
    match want {
        IoDriver::Auto if monoio::utils::detect_uring() => IoDriver::IoUring,
        IoDriver::Auto => {
            warn!("io_uring is not available (kernel, seccomp or io_uring_disabled); using epoll");
            IoDriver::Epoll
        }
        other => other,
    }
}

/// Runs the workers until they all stop.
/// Channels and counters shared by the workers and the admin threads.
pub struct Plumbing {
    pub shared: Shared,
    pub controls: Arc<Controls>,
    inboxes: Vec<flume::Receiver<Job>>,
    moves: Vec<flume::Receiver<conn::parcel::Handover>>,
    control_rxs: Vec<flume::Receiver<Control>>,
}

impl Plumbing {
    pub fn new(workers: usize) -> Plumbing {
        let (hub, inboxes) = Hub::new(workers);
        let (moves, inboxes) = (inboxes.moves, inboxes.jobs);
        let (controls, control_rxs) = Controls::new(workers);
        Plumbing {
            shared: Shared {
                hub,
                live_children: Arc::new(AtomicUsize::new(0)),
            },
            controls,
            inboxes,
            moves,
            control_rxs,
        }
    }
}

/// Runs the workers until they all stop (after a drain).
pub fn run(
    config: Arc<Config>,
    opts: RunOptions,
    bound: Bound,
    plumbing: Plumbing,
) -> io::Result<()> {
    let driver = resolve_driver(opts.driver);
    let mut handles = Vec::new();
    let channels = plumbing
        .inboxes
        .into_iter()
        .zip(plumbing.moves)
        .zip(plumbing.control_rxs);
    for ((i, sockets), ((inbox, moves), control)) in
        bound.sockets.into_iter().enumerate().zip(channels)
    {
        let config = config.clone();
        let shared = plumbing.shared.clone();
        let h = thread::Builder::new()
            .name(format!("ringgate-w{i}"))
            .spawn(move || {
                let chans = Channels {
                    inbox,
                    moves,
                    control,
                };
                run_worker(WorkerId(i), config, driver, sockets, shared, chans)
            })?;
        handles.push(h);
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker thread panicked")),
        }
    }
    Ok(())
}

/// What all workers share: the MCP inboxes and the global child count.
#[derive(Clone)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub live_children: Arc<AtomicUsize>,
}

/// A worker's receiving ends.
struct Channels {
    inbox: flume::Receiver<Job>,
    /// Connections other workers move here ([`conn::parcel::Handover`]).
    moves: flume::Receiver<conn::parcel::Handover>,
    control: flume::Receiver<Control>,
}

fn run_worker(
    id: WorkerId,
    config: Arc<Config>,
    driver: IoDriver,
    sockets: Vec<std::net::TcpListener>,
    shared: Shared,
    chans: Channels,
) -> io::Result<()> {
    if driver == IoDriver::IoUring {
        match build_uring() {
            Ok(mut rt) => {
                return rt.block_on(worker_main(id, config, "io_uring", sockets, shared, chans));
            }
            Err(e) => {
                warn!(worker = id.0, error = %e, "io_uring runtime failed; falling back to epoll")
            }
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(worker_main(id, config, "epoll", sockets, shared, chans))
}

fn build_uring() -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    // COOP_TASKRUN saves an interrupt per completion (measured +24% req/s in
    // MONOIO.md); kernels before 5.19 refuse it, so retry without.
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun();
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
        .or_else(|_| {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build()
        })
}

async fn worker_main(
    id: WorkerId,
    config: Arc<Config>,
    driver: &'static str,
    sockets: Vec<std::net::TcpListener>,
    shared: Shared,
    chans: Channels,
) -> io::Result<()> {
    let gen = Generation::new(config.clone())?;
    if driver == "io_uring" {
        crate::pool::stdio::set_thread_io(crate::pool::stdio::ChildIo::Pipes);
    }
    let mcp = McpWorker::new(id.0, &config, shared.hub, shared.live_children);
    mcp.start(chans.inbox);
    let worker = Rc::new(Worker {
        id,
        driver,
        connections: Cell::new(0),
        body_bytes: Cell::new(0),
        refusing: Rc::default(),
        generation: RefCell::new(gen),
        mcp,
        drain: Drain::default(),
        deadline: Cell::new(None),
        stats: Stats::default(),
    });
    monoio::spawn(control_loop(worker.clone(), chans.control));
    monoio::spawn(conn::adopt_loop(worker.clone(), chans.moves));
    let mut listeners = Vec::new();
    for s in sockets {
        listeners.push(Rc::new(TcpListener::from_std(s)?));
    }
    info!(worker = id.0, driver, "worker started");
    // Test hook for the exit-on-panic path (debug builds only).
    if cfg!(debug_assertions)
        && id.0 == 1
        && std::env::var_os("RINGGATE_TEST_PANIC_WORKER").is_some()
    {
        panic!("RINGGATE_TEST_PANIC_WORKER is set: worker 1 panics on purpose");
    }
    for (bind, l) in listeners.iter().enumerate() {
        monoio::spawn(accept_loop(l.clone(), bind, worker.clone()));
    }

    // Serve until told to drain; then finish what is in flight, up to the
    // deadline, and stop every child.
    worker.drain.wait().await;
    drop(listeners);
    let deadline = worker.drain_deadline();
    worker.mcp.close_get_streams();
    // Requests in flight here include those of this worker's sessions that
    // arrived on another worker's connection.
    let busy = || worker.connections.get() > 0 || worker.mcp.in_flight() > 0;
    while busy() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = worker.connections.get();
    worker.mcp.shutdown().await;
    info!(worker = id.0, connections_cut = left, "worker drained");
    Ok(())
}

async fn control_loop(worker: Rc<Worker>, control: flume::Receiver<Control>) {
    while let Ok(msg) = control.recv_async().await {
        match msg {
            Control::Drain { deadline } => {
                worker.deadline.set(Some(deadline));
                worker.drain.start();
            }
            Control::Reload(config) => match Generation::new(config.clone()) {
                Ok(gen) => {
                    worker.mcp.reload(&config);
                    *worker.generation.borrow_mut() = gen;
                    info!(worker = worker.id.0, "config applied");
                }
                Err(e) => error!(worker = worker.id.0, error = %e, "reload failed on this worker"),
            },
            Control::Scrape(reply) => {
                let _ = reply.send(worker.snapshot());
            }
        }
    }
}

impl Worker {
    fn snapshot(&self) -> Snapshot {
        let mut s = self.stats.snapshot(self.id.0);
        s.connections = self.connections.get() as u64;
        s.cache_entries = self
            .generation
            .borrow()
            .authz
            .iter()
            .map(|a| a.cache_len() as u64)
            .sum();
        self.mcp.fill_snapshot(&mut s);
        s.draining = self.drain.is_on();
        s
    }

    fn drain_deadline(&self) -> Instant {
        self.deadline.get().unwrap_or_else(Instant::now)
    }
}

/// Connections over the limit answered 503 at once, per worker.
const MAX_REFUSING: usize = 64;

async fn accept_loop(listener: Rc<TcpListener>, bind: usize, worker: Rc<Worker>) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.drain.wait() => return,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let gen = worker.generation.borrow().clone();
        if worker.connections.get() >= gen.config.limits.max_connections_per_worker {
            // Each refusal holds its socket for up to a second; past a
            // bound, a flood's connections are closed without an answer.
            let refusing = worker.refusing.clone();
            if refusing.get() < MAX_REFUSING {
                refusing.set(refusing.get() + 1);
                worker.stats.refused(true);
                monoio::spawn(async move {
                    conn::overloaded(stream).await;
                    refusing.set(refusing.get() - 1);
                });
            } else {
                worker.stats.refused(false);
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Counted before the task runs, so a burst of accepts sees the limit.
        let guard = ConnGuard::new(worker.clone());
        let ctx = Rc::new(BindCtx {
            worker: worker.clone(),
            gen,
            bind,
        });
        monoio::spawn(conn::serve(stream, PeerAddr::new(addr), ctx, guard));
    }
}
