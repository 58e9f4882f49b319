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

use crate::auth::AuthzState;
use crate::config::{Bind, Config, IoDriver};
use crate::conn;
use crate::lifecycle::{Control, Controls, Drain};
use crate::mcp::{Hub, Job, McpWorker};
use crate::stats::{Snapshot, Stats};

/// Pending-connection queue per listener socket.
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 1024;

/// Index of a worker thread, 0-based; it appears in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub usize);

/// The client's address as the kernel reports it, with IPv4-mapped IPv6
/// addresses (from a dual-stack listener) turned back into IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    pub fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => PeerAddr(SocketAddr::new(IpAddr::V4(v4), v6.port())),
                None => PeerAddr(addr),
            },
            v4 => PeerAddr(v4),
        }
    }
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

/// State owned by one worker thread.
pub struct Worker {
    pub id: WorkerId,
    pub driver: &'static str,
    pub connections: Cell<usize>,
    /// Connections over the limit still being told 503.
    refusing: Rc<Cell<usize>>,
    /// The config new connections get; replaced on reload.
    pub generation: RefCell<Rc<Generation>>,
    pub mcp: Rc<McpWorker>,
    pub drain: Drain,
    deadline: Cell<Option<Instant>>,
    pub stats: Stats,
}

/// A config and the per-worker state compiled from it. A connection keeps the
/// generation it was accepted under, so a reload never changes the rules in
/// the middle of a connection.
pub struct Generation {
    pub config: Arc<Config>,
    /// One per extAuthz policy, indexed by `ExtAuthz::id`.
    pub authz: Vec<AuthzState>,
}

impl Generation {
    fn new(config: Arc<Config>) -> io::Result<Rc<Generation>> {
        let authz = config
            .binds
            .iter()
            .flat_map(|b| &b.listeners)
            .flat_map(|l| &l.routes)
            .filter_map(|r| r.policies.ext_authz.as_ref())
            .map(|a| AuthzState::new(a).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Rc::new(Generation { config, authz }))
    }
}

/// What a connection needs: its worker, its generation, and its bind.
pub struct BindCtx {
    pub worker: Rc<Worker>,
    pub gen: Rc<Generation>,
    pub bind: usize,
}

impl BindCtx {
    pub fn config(&self) -> &Config {
        &self.gen.config
    }
    pub fn bind(&self) -> &Bind {
        &self.gen.config.binds[self.bind]
    }
}

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
/// failure leaves nothing bound. Port 0 takes a free port for the first
/// socket and the rest join it.
pub fn bind_all(config: &Config, threads: usize) -> io::Result<Bound> {
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for b in &config.binds {
        let mut addr = match b.address {
            Some(ip) => SocketAddr::new(ip, b.port),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), b.port),
        };
        for (w, per_worker) in sockets.iter_mut().enumerate() {
            let l = match bind_one(addr) {
                Ok(l) => l,
                // A host without IPv6 still gets the default bind on IPv4.
                Err(e) if b.address.is_none() && w == 0 && addr.is_ipv6() => {
                    warn!(error = %e, "IPv6 unavailable; binding 0.0.0.0 instead of [::]");
                    addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), b.port);
                    bind_one(addr)?
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("bind {addr}: {e}"))),
            };
            if w == 0 {
                addr = l.local_addr()?;
            }
            per_worker.push(l);
        }
        addrs.push(addr);
    }
    Ok(Bound { sockets, addrs })
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
    control_rxs: Vec<flume::Receiver<Control>>,
}

impl Plumbing {
    pub fn new(workers: usize) -> Plumbing {
        let (hub, inboxes) = Hub::new(workers);
        let (controls, control_rxs) = Controls::new(workers);
        Plumbing {
            shared: Shared {
                hub,
                live_children: Arc::new(AtomicUsize::new(0)),
            },
            controls,
            inboxes,
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
    let channels = plumbing.inboxes.into_iter().zip(plumbing.control_rxs);
    for ((i, sockets), (inbox, control)) in bound.sockets.into_iter().enumerate().zip(channels) {
        let config = config.clone();
        let shared = plumbing.shared.clone();
        let h = thread::Builder::new()
            .name(format!("ringgate-w{i}"))
            .spawn(move || {
                let chans = Channels { inbox, control };
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
    let mcp = McpWorker::new(id.0, &config, shared.hub, shared.live_children);
    mcp.start(chans.inbox);
    let worker = Rc::new(Worker {
        id,
        driver,
        connections: Cell::new(0),
        refusing: Rc::default(),
        generation: RefCell::new(gen),
        mcp,
        drain: Drain::default(),
        deadline: Cell::new(None),
        stats: Stats::default(),
    });
    monoio::spawn(control_loop(worker.clone(), chans.control));
    let mut listeners = Vec::new();
    for s in sockets {
        listeners.push(Rc::new(TcpListener::from_std(s)?));
    }
    info!(worker = id.0, driver, "worker started");
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

/// Counts a connection for the per-worker limit while it lives.
pub struct ConnGuard(Rc<Worker>);

impl ConnGuard {
    fn new(w: Rc<Worker>) -> Self {
        w.connections.set(w.connections.get() + 1);
        ConnGuard(w)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}
