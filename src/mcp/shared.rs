//! Shared, pre-initialized children for 2026-07-28 (stateless) requests.
//!
//! Per worker and target, `mcp.sharedChildren` children that ringgate
//! spawned (through a [`Pool`], so `maxLive` and the spawn backoff apply)
//! and initialized itself: its own `clientInfo` (`ringgate`, its version),
//! protocol 2025-11-25 (or what the child answers, if ringgate bridges it),
//! and the client capabilities [`CHILD_CAPABILITIES`] (`elicitation`,
//! `sampling`: a child's such request is turned into an MRTR
//! `InputRequiredResult` for the request it serves, see [`child`]; any
//! other server-to-client request gets a JSON-RPC error at once). Then
//! `notifications/initialized`, and `tools/list` once, to learn the tools'
//! `x-mcp-header` annotations for the `Mcp-Param-*` checks.
//!
//! Per worker, so the hot path takes no lock: a modern request goes to a
//! child of the worker that accepted it, the one with the fewest requests
//! in flight, at most `mcp.maxInFlightPerChild` each (beyond: 503 with
//! Retry-After). The children start with a target's first modern request
//! (a deployment with only handshake-era clients spawns none) and are kept
//! warm from then on. A child that ends fails only its own requests in
//! flight (JSON-RPC error on their streams) and is replaced; a child that
//! dies young doubles its slot's backoff (100 ms up to 10 s), so a crash
//! loop sleeps rather than spins.
//!
//! - [`child`]: one child's multiplexing (ids, progress, cancellation)

pub mod child;
pub mod listen;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::config::{Config, McpSettings, McpTarget};
use crate::mcp::modern::checks::{param_headers, ParamHeader};
use crate::pool::{Pool, PoolConfig, HEALTHY_AFTER_MS};
pub use child::{Mrtr, Opts, SharedChild, SubmitError};
use listen::Listeners;

/// The client capabilities ringgate declares to its shared children: the
/// server-to-client requests it can turn into an MRTR `InputRequiredResult`
/// for the client whose request the child is serving. Not `roots`: servers
/// ask for roots right after `initialize`, outside any request, and one
/// shared child serves callers with different roots.
pub const CHILD_CAPABILITIES: &str = r#"{"elicitation":{"form":{}},"sampling":{}}"#;

/// The handshake revision ringgate asks its children for.
pub const CHILD_PROTOCOL: &str = "2025-11-25";
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A multi-waiter wake-up (same thread only): `wait` returns after the
/// next `fire`.
#[derive(Default)]
pub struct Signal {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn fire(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
    pub async fn wait(&self) {
        let start = self.generation.get();
        poll_fn(|cx| {
            if self.generation.get() != start {
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// What a target's child said in ringgate's own `initialize` (raw JSON).
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub protocol: String,
    pub capabilities: String,
    pub instructions: Option<String>,
    pub server_info: Option<String>,
    /// `x-mcp-header` annotations by tool name.
    pub tool_params: HashMap<String, Vec<ParamHeader>>,
}

/// One target's shared children on this worker.
pub struct Target {
    label: String,
    pool: Rc<Pool>,
    slots: RefCell<Vec<Option<Rc<SharedChild>>>>,
    info: RefCell<Option<Rc<ChildInfo>>>,
    /// Fired when a child becomes ready or ends.
    changed: Signal,
    shut: Cell<bool>,
    /// Its last child failed to start or died young, and none is ready.
    failing: Cell<bool>,
    max_in_flight: usize,
    timeout: Duration,
    grace: Duration,
    input_timeout: Duration,
    /// `subscriptions/listen` streams, fed by every child of the target.
    listeners: Rc<Listeners>,
}

/// Why no child took a request.
#[derive(Debug, PartialEq)]
pub enum Unavailable {
    /// No child became ready within the request timeout.
    NotReady,
    /// Every child has `maxInFlightPerChild` requests.
    Busy,
}

impl Target {
    /// Waits (up to the request timeout) for a ready child; picks the least
    /// loaded one with room.
    pub async fn pick(&self) -> Result<Rc<SharedChild>, Unavailable> {
        self.pick_inner(false).await
    }

    /// As [`Target::pick`], but gives up at once while the target is
    /// failing (its children crash or cannot start): several targets
    /// behind one route do not wait for one that is down.
    pub async fn pick_unless_failing(&self) -> Result<Rc<SharedChild>, Unavailable> {
        self.pick_inner(true).await
    }

    /// Its children crash or cannot start (and none is ready).
    pub fn is_failing(&self) -> bool {
        self.failing.get()
    }

    async fn pick_inner(&self, fail_fast: bool) -> Result<Rc<SharedChild>, Unavailable> {
        let until = Instant::now() + self.timeout;
        loop {
            let best = self
                .slots
                .borrow()
                .iter()
                .flatten()
                .filter(|c| !c.is_dead())
                .min_by_key(|c| c.in_flight())
                .cloned();
            match best {
                Some(c) if c.in_flight() < self.max_in_flight => return Ok(c),
                Some(_) => return Err(Unavailable::Busy),
                None => {}
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shut.get() || (fail_fast && self.failing.get()) {
                return Err(Unavailable::NotReady);
            }
            let _ = monoio::time::timeout(left, self.changed.wait()).await;
        }
    }

    /// The child's `initialize` answer, waiting for the first child.
    pub async fn info(&self) -> Result<Rc<ChildInfo>, Unavailable> {
        if let Some(i) = self.info.borrow().clone() {
            return Ok(i);
        }
        self.pick().await?;
        self.info.borrow().clone().ok_or(Unavailable::NotReady)
    }

    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Opens a `subscriptions/listen` stream for request `id` (raw bytes).
    /// Its `filter.uris` (already narrowed to what the caller may read) are
    /// subscribed on every ready child first, so that the acknowledgement,
    /// its first event, names only URIs whose updates will come; children
    /// that start later subscribe to them before they serve.
    pub async fn listen(&self, id: &str, filter: listen::Filter) -> flume::Receiver<Vec<u8>> {
        let uris = filter.uris.clone();
        let (key, rx) = self.listeners.open(id, filter);
        let children: Vec<Rc<SharedChild>> =
            self.slots.borrow().iter().flatten().cloned().collect();
        let mut refused = std::collections::BTreeSet::new();
        for uri in &uris {
            for c in children.iter().filter(|c| !c.is_dead()) {
                if !c.subscribe(uri).await && !c.is_dead() {
                    refused.insert(uri.clone());
                }
            }
        }
        self.listeners.acknowledge(key, &refused);
        rx
    }

    /// Pids of the ready children (tests, logs).
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .borrow()
            .iter()
            .flatten()
            .map(|c| c.pid())
            .collect()
    }
}

/// One worker's shared children, by `McpBackend::key`.
pub struct Shared {
    worker: usize,
    live: Arc<AtomicUsize>,
    settings: RefCell<McpSettings>,
    targets: RefCell<HashMap<String, Rc<Target>>>,
}

impl Shared {
    pub fn new(worker: usize, config: &Config, live: Arc<AtomicUsize>) -> Shared {
        Shared {
            worker,
            live,
            settings: RefCell::new(config.mcp.clone()),
            targets: RefCell::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> McpSettings {
        self.settings.borrow().clone()
    }

    /// The target's shared children, started on first use.
    pub fn target(&self, m: &McpTarget) -> Rc<Target> {
        let key = m.key();
        if let Some(t) = self.targets.borrow().get(key) {
            return t.clone();
        }
        let s = self.settings.borrow().clone();
        let spec = crate::pool::ChildSpec::of_target(m);
        let label = format!("{}/w{}/shared", m.name, self.worker);
        let cfg = PoolConfig {
            min_idle: 0,
            max_live: s.max_live,
            max_line_bytes: s.max_line_bytes,
            stop_grace: s.stop_grace,
            ..PoolConfig::default()
        };
        let t = Rc::new(Target {
            label: label.clone(),
            pool: Pool::new(spec, cfg, self.live.clone(), label),
            slots: RefCell::new(vec![None; s.shared_children]),
            info: RefCell::new(None),
            changed: Signal::default(),
            shut: Cell::new(false),
            failing: Cell::new(false),
            max_in_flight: s.max_in_flight_per_child,
            timeout: s.request_timeout,
            grace: s.stop_grace,
            input_timeout: s.input_required_timeout,
            listeners: Rc::default(),
        });
        for slot in 0..s.shared_children {
            monoio::spawn(keep_slot(t.clone(), slot));
        }
        self.targets.borrow_mut().insert(key.to_string(), t.clone());
        t
    }

    /// A reload: new settings for targets started from now on; targets no
    /// longer configured stop.
    pub fn reload(&self, config: &Config) {
        *self.settings.borrow_mut() = config.mcp.clone();
        let wanted: Vec<String> = crate::mcp::targets(config)
            .map(|m| m.key().to_string())
            .collect();
        let gone: Vec<Rc<Target>> = {
            let mut targets = self.targets.borrow_mut();
            let keys: Vec<String> = targets
                .keys()
                .filter(|k| !wanted.contains(k))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| targets.remove(k)).collect()
        };
        for t in gone {
            monoio::spawn(async move { stop_target(&t).await });
        }
    }

    /// Stops every shared child (shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Rc<Target>> = self.targets.borrow_mut().drain().map(|(_, t)| t).collect();
        for t in all {
            stop_target(&t).await;
        }
    }

    pub fn in_flight(&self) -> usize {
        self.targets
            .borrow()
            .values()
            .flat_map(|t| {
                t.slots
                    .borrow()
                    .iter()
                    .flatten()
                    .map(|c| c.in_flight())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

async fn stop_target(t: &Target) {
    t.shut.set(true);
    t.changed.fire();
    let children: Vec<Rc<SharedChild>> = t
        .slots
        .borrow_mut()
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    let stops: Vec<_> = children
        .into_iter()
        .map(|c| {
            c.end("shutting down");
            let grace = t.grace;
            monoio::spawn(async move { c.handle().stop(grace).await })
        })
        .collect();
    for s in stops {
        s.await;
    }
    t.pool.shutdown().await;
}

/// Keeps one slot of a target filled with an initialized child.
async fn keep_slot(t: Rc<Target>, slot: usize) {
    let mut backoff = BACKOFF_MIN;
    while !t.shut.get() {
        let started = Instant::now();
        match t.pool.take().await {
            Ok(child) => {
                let (handle, writer, reader) = child.into_parts();
                handle.set_session(&format!("shared-{slot}"));
                let c = SharedChild::start(
                    slot,
                    handle,
                    writer,
                    reader,
                    t.timeout,
                    t.input_timeout,
                    t.listeners.clone(),
                );
                match initialize(&c).await {
                    Ok(info) => {
                        c.set_ready().await;
                        info!(target = %t.label, slot, pid = c.pid(), protocol = %info.protocol, "shared MCP child ready");
                        if t.shut.get() {
                            c.end("shutting down");
                        } else {
                            *t.info.borrow_mut() = Some(Rc::new(info));
                            t.failing.set(false);
                            t.slots.borrow_mut()[slot] = Some(c.clone());
                            t.changed.fire();
                            if !c.is_dead() {
                                c.ended.wait().await;
                            }
                            if let Some(s) = t.slots.borrow_mut().get_mut(slot) {
                                *s = None;
                            }
                            t.changed.fire();
                        }
                    }
                    Err(why) => {
                        warn!(target = %t.label, slot, pid = c.pid(), "shared MCP child failed to initialize: {why}");
                        c.end(why);
                    }
                }
                let status = c.handle().stop(t.grace).await;
                info!(target = %t.label, slot, pid = c.pid(), ?status, "shared MCP child stopped");
            }
            Err(e) => warn!(target = %t.label, slot, error = %e, "cannot start a shared MCP child"),
        }
        if started.elapsed() >= Duration::from_millis(HEALTHY_AFTER_MS) {
            backoff = BACKOFF_MIN;
        } else {
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let ready = t.slots.borrow().iter().flatten().any(|c| !c.is_dead());
            t.failing.set(!ready);
            t.changed.fire();
        }
        if t.shut.get() {
            break;
        }
        let _ = monoio::time::timeout(backoff, async {
            while !t.shut.get() {
                t.changed.wait().await;
            }
        })
        .await;
    }
}

#[derive(Deserialize)]
struct InitAnswer<'a> {
    #[serde(borrow)]
    result: Option<InitResult<'a>>,
}

#[derive(Deserialize)]
struct InitResult<'a> {
    #[serde(rename = "protocolVersion")]
    protocol: String,
    #[serde(borrow)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow, rename = "serverInfo")]
    server_info: Option<&'a RawValue>,
}

/// ringgate's own handshake with a shared child.
async fn initialize(c: &SharedChild) -> Result<ChildInfo, &'static str> {
    let params = format!(
        r#"{{"protocolVersion":"{CHILD_PROTOCOL}","capabilities":{CHILD_CAPABILITIES},"clientInfo":{{"name":"ringgate","version":"{}"}}}}"#,
        env!("CARGO_PKG_VERSION")
    );
    let line = c
        .own_request("initialize", &params)
        .await
        .ok_or("no answer to initialize")?;
    let a: InitAnswer =
        serde_json::from_slice(&line).map_err(|_| "unreadable initialize answer")?;
    let r = a.result.ok_or("initialize refused")?;
    if !crate::mcp::KNOWN_VERSIONS.contains(&r.protocol.as_str()) {
        return Err("the server chose a protocol version ringgate does not bridge");
    }
    c.notify(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string());
    let capabilities = r
        .capabilities
        .map_or("{}".to_string(), |v| v.get().to_string());
    let mut tool_params = HashMap::new();
    if capabilities.contains("\"tools\"") {
        if let Some(line) = c.own_request("tools/list", "{}").await {
            tool_params = tool_annotations(&line);
        }
    }
    Ok(ChildInfo {
        protocol: r.protocol,
        capabilities,
        instructions: r.instructions.map(|v| v.get().to_string()),
        server_info: r.server_info.map(|v| v.get().to_string()),
        tool_params,
    })
}

/// `x-mcp-header` annotations of every tool in a `tools/list` answer.
fn tool_annotations(line: &[u8]) -> HashMap<String, Vec<ParamHeader>> {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let mut out = HashMap::new();
    for t in v["result"]["tools"].as_array().into_iter().flatten() {
        if let (Some(name), Some(schema)) = (t["name"].as_str(), t.get("inputSchema")) {
            let p = param_headers(schema);
            if !p.is_empty() {
                out.insert(name.to_string(), p);
            }
        }
    }
    out
}
