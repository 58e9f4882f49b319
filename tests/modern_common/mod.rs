//! What the 2026-07-28 tests share: the seed config with the fake
//! tailscaled, the Python SDK client, and raw modern POSTs read event by
//! event.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use serde_json::Value;

use crate::support::fake_tailscaled::FakeTailscaled;
use crate::support::mcp::ACCEPT;
use crate::support::*;

pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
pub const ALICE: &str = "127.0.0.2";
pub const BOB: &str = "127.0.0.3";
pub const V: &str = "2026-07-28";

/// The seed config with test-sized settings, plus `mcp` settings.
pub fn seed_config(fake: &FakeTailscaled, threads: usize, mcp: &str) -> String {
    crate::support::mcp::seed_config(&fake.target(), threads, mcp)
}

pub fn start(threads: usize, mcp: &str) -> (FakeTailscaled, Proxy, String) {
    start_with(|fake| seed_config(fake, threads, mcp))
}

pub fn start_with(config: impl Fn(&FakeTailscaled) -> String) -> (FakeTailscaled, Proxy, String) {
    let fake = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .user(BOB, "bob-laptop.tail1234.ts.net.", "bob@example.com")
        .start();
    let p = Proxy::start(&config(&fake), &[]);
    let url = format!("http://{}/mcp", p.addr());
    (fake, p, url)
}

pub fn modern_client(url: &str, src: &str, args: &[&str]) -> Value {
    let mut all = vec!["--url", url, "--source-ip", src];
    all.extend(args);
    crate::support::mcp::peer_client("modern_client.py", &all)
}

/// A raw modern POST over HTTP/1.0 (the stream then ends with the
/// connection, so events can be read line by line).
pub fn raw_post(p: &Proxy, headers: &[(&str, &str)], body: &str) -> BufReader<TcpStream> {
    raw_post_from(ALICE, p, headers, body)
}

pub fn raw_post_from(
    src: &str,
    p: &Proxy,
    headers: &[(&str, &str)],
    body: &str,
) -> BufReader<TcpStream> {
    let mut s = connect_from(src, p.addr());
    let mut req = format!(
        "POST /mcp HTTP/1.0\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    BufReader::new(s)
}

/// Reads the status line and headers.
pub fn head(r: &mut BufReader<TcpStream>) -> (u16, Vec<String>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return (status, headers);
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
}

/// The next SSE event's data, `None` at the end of the stream.
pub fn next_event(r: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(d) = l.strip_prefix("data: ") {
            data.push_str(d);
        } else if l.is_empty() && !data.is_empty() {
            return Some(serde_json::from_str(&data).unwrap());
        }
    }
}

pub fn call_body(id: &str, tool: &str, args: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!(r#""progressToken":{t},"#));
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args},"_meta":{{{token}"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

pub fn hdrs<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("MCP-Protocol-Version", V), ("Mcp-Method", method)];
    if let Some(n) = name {
        h.push(("Mcp-Name", n));
    }
    h
}
