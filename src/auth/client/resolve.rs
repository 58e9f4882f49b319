//! Host names resolved off the worker. `getaddrinfo` blocks, for seconds when
//! a DNS server is slow, and a blocked worker stalls every connection on its
//! core; so a helper thread resolves, and the worker awaits its answer. The
//! first lookup starts when the client is made (config load); the answer is
//! kept for `DNS_TTL_MS` and then refreshed in the background while the old
//! one stays in use. A failure is kept for `DNS_RETRY_MS`, so a flood does
//! not start one lookup per check. An IP literal is never resolved.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DNS_TTL_MS: u64 = 60_000;
const DNS_RETRY_MS: u64 = 1_000;

pub(super) struct Resolver {
    host: String,
    port: u16,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// The last answer and when it came; for a literal, forever.
    addrs: Option<(Option<Instant>, Rc<[SocketAddr]>)>,
    /// The last failure, when no answer is at hand.
    failed: Option<(Instant, io::ErrorKind, String)>,
    pending: Option<Pending>,
}

type Answer = io::Result<Vec<SocketAddr>>;

/// A lookup on its thread. The thread fills `slot`, then drops its sender,
/// which wakes every worker task awaiting `done`.
#[derive(Clone)]
struct Pending {
    slot: Arc<Mutex<Option<Answer>>>,
    done: flume::Receiver<()>,
}

impl Resolver {
    pub(super) fn new(host: &str, port: u16) -> Resolver {
        let r = Resolver {
            host: host.to_string(),
            port,
            state: RefCell::new(State::default()),
        };
        let mut st = r.state.borrow_mut();
        if let Ok(ip) = host.parse::<IpAddr>() {
            st.addrs = Some((None, Rc::from([SocketAddr::new(ip, port)])));
        } else {
            // Start now, so the first check usually finds the answer ready.
            st.pending = r.spawn().ok();
        }
        drop(st);
        r
    }

    /// The addresses to connect to; never blocks the thread.
    pub(super) async fn addrs(&self) -> io::Result<Rc<[SocketAddr]>> {
        loop {
            let pending = {
                let mut st = self.state.borrow_mut();
                self.collect(&mut st);
                let failed_lately = st
                    .failed
                    .as_ref()
                    .filter(|(at, ..)| at.elapsed() < ms(DNS_RETRY_MS));
                if let Some((at, addrs)) = &st.addrs {
                    let addrs = addrs.clone();
                    let stale = at.is_some_and(|t| t.elapsed() >= ms(DNS_TTL_MS));
                    if stale && st.pending.is_none() && failed_lately.is_none() {
                        // Keep using the old answer; a failed refresh keeps it.
                        st.pending = self.spawn().ok();
                    }
                    return Ok(addrs);
                }
                if let Some((_, kind, msg)) = failed_lately {
                    return Err(io::Error::new(*kind, msg.clone()));
                }
                if st.pending.is_none() {
                    st.pending = Some(self.spawn()?);
                }
                st.pending.clone().expect("a lookup is pending")
            };
            // Err(Disconnected) is the signal: the thread has answered.
            let _ = pending.done.recv_async().await;
        }
    }

    /// Takes a finished lookup's answer into the state.
    fn collect(&self, st: &mut State) {
        let Some(p) = &st.pending else { return };
        let Some(answer) = p.slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        st.pending = None;
        match answer {
            Ok(addrs) => {
                st.addrs = Some((Some(Instant::now()), addrs.into()));
                st.failed = None;
            }
            Err(e) => {
                tracing::warn!(host = self.host.as_str(), error = %e, "authz: cannot resolve");
                st.failed = Some((Instant::now(), e.kind(), e.to_string()));
            }
        }
    }

    fn spawn(&self) -> io::Result<Pending> {
        let slot: Arc<Mutex<Option<Answer>>> = Arc::new(Mutex::new(None));
        let (tx, done) = flume::bounded::<()>(1);
        let (host, port, out) = (self.host.clone(), self.port, slot.clone());
        std::thread::Builder::new()
            .name("ringgate-dns".into())
            .spawn(move || {
                let answer = (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                drop(tx);
            })?;
        Ok(Pending { slot, done })
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests;
