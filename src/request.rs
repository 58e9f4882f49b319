//! The request's own types, below every stage that handles it: who sent it
//! ([`PeerAddr`]), the parsed request ([`Request`]), and what the pipeline did
//! with it ([`Handled`], [`McpLog`]). Imports nothing of the stages.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use crate::auth::{Decision, Source};
use crate::config::Route;
use crate::http::parse::Head;
use crate::http::response::Response;
use crate::policy::cel::Vars;

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

/// A parsed request, borrowed from the connection's buffers.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a Head,
    pub body: &'a [u8],
    pub peer: PeerAddr,
    /// The peer's IP as text, formatted once per connection.
    pub peer_ip: &'a str,
}

impl<'a> Request<'a> {
    fn text(&self, r: &std::ops::Range<usize>) -> &'a str {
        // httparse only accepts visible ASCII in the method and target.
        std::str::from_utf8(&self.buf[r.clone()]).unwrap_or("")
    }
    pub fn method(&self) -> &'a str {
        self.text(&self.head.method)
    }
    /// Path and query.
    pub fn path(&self) -> &'a str {
        self.text(&self.head.path)
    }
    pub fn host(&self) -> &'a str {
        self.head
            .host
            .as_ref()
            .and_then(|r| std::str::from_utf8(&self.buf[r.clone()]).ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.head.header(self.buf, name)
    }
    /// Headers with names as text (httparse admits only token bytes in names).
    pub fn headers(&self) -> Vec<(&'a str, &'a [u8])> {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (self.text(n), &self.buf[v.clone()]))
            .collect()
    }
    /// CEL variables for this request, `headers` filled only when asked for.
    pub fn vars<'h>(&self, headers: &'h [(&'a str, &'a [u8])]) -> Vars<'h>
    where
        'a: 'h,
    {
        Vars {
            source_address: self.peer_ip,
            source_port: self.peer.port(),
            method: self.method(),
            path: self.path(),
            headers,
            response: None,
            extauthz: None,
            mcp: None,
        }
    }
}

/// What the pipeline did, for the connection and the access log.
pub struct Handled<'c> {
    pub resp: Response,
    pub route: Option<&'c Route>,
    pub authz: Option<Rc<Decision>>,
    pub authz_source: Option<Source>,
    /// Boxed: a `Handled` is moved several times per request, and most
    /// requests have none.
    pub mcp: Option<Box<McpLog>>,
}

/// What the access log says about an MCP request.
#[derive(Debug, Default, Clone)]
pub struct McpLog {
    pub method: Option<String>,
    pub tool: Option<String>,
    pub session: Option<String>,
    /// `mcpAuthorization`'s decision (`allow`, `deny`, `filter`), on routes
    /// with rules, and the tool, prompt or resource it was about.
    pub authz: Option<&'static str>,
    pub authz_name: Option<String>,
    /// The MCP target a call went to (`mcp.target`, agentgateway's field).
    pub target: Option<String>,
}
