//! Micro-benchmarks of the per-request hot path, with criterion.
//!
//! `cargo bench --bench micro` (add a filter, e.g. `-- cel`, to run a group).
//!
//! Every benchmark checks its own result: the expected answer is asserted once
//! in full before measuring, and cheaply on every iteration, so a change that
//! makes a path fail fast (an `Err` instead of a parse, a cache miss instead of
//! a hit) panics instead of reporting a flattering number.
//!
//! - `head`: [`HeadParser`] on whole heads (GET, MCP POST, chunked POST), a
//!   framing refusal, and a head dribbled in byte by byte;
//! - `chunked`: [`ChunkedDecoder`] on a 4 KiB body in 256-byte chunks;
//! - `cel`: the seed's whois `path` (fast path, into a reused buffer, and on
//!   the interpreter for comparison), its `metadata` on a real whois answer,
//!   and an access-log style filter;
//! - `authz_cache`: a whois cache hit, alone and with the key rendered the
//!   way the extAuthz stage renders it;
//! - `mcp`: JSON-RPC line framing (a client POST body to the one line the
//!   child gets; a child's answer and progress lines peeked for routing) and
//!   SSE encoding of an answer;
//! - `mcp_authz`: `config/mcp-grants.yaml`'s rule deciding one tool over a
//!   cached whois answer's `CapMap` (allowed and denied), and filtering a
//!   child's 100-tool `tools/list` answer for that caller.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use ringgate::auth::cache::{Cache, Lookup};
use ringgate::config::Config;
use ringgate::config::Limits;
use ringgate::http::chunked::ChunkedDecoder;
use ringgate::http::parse::{BodyKind, Head, HeadParser};
use ringgate::http::HttpError;
use ringgate::mcp::jsonrpc::{self, Kind, Outgoing};
use ringgate::mcp::sse;
use ringgate::policy::cel::{Expr, McpKind, ResponseVars, Value, Vars};
use ringgate::policy::mcp_authz::{governed_list, Filtered, Reason};

/// A browser-like GET of about 230 bytes (the size MONOIO.md's httparse
/// figure was measured on).
const GET: &[u8] = b"GET /hello?lang=en HTTP/1.1\r\n\
Host: ringgate.tail1234.ts.net\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n\
Accept: text/html,application/xhtml+xml\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
\r\n";

/// What the Python MCP SDK sends for a `tools/call` (headers as observed in
/// tests/peers/FACTS.md), with its body.
const MCP_POST: &[u8] = b"POST /mcp HTTP/1.1\r\n\
Host: 127.0.0.1:3000\r\n\
Accept: application/json, text/event-stream\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
User-Agent: python-httpx/0.28.1\r\n\
content-type: application/json\r\n\
mcp-session-id: 0000c0ffee0123456789abcdef0123456789\r\n\
mcp-protocol-version: 2025-11-25\r\n\
Content-Length: 93\r\n\
\r\n";

const CHUNKED_POST: &[u8] = b"POST /upload HTTP/1.1\r\n\
Host: example\r\n\
Content-Type: application/octet-stream\r\n\
Transfer-Encoding: chunked\r\n\
\r\n";

/// A smuggling attempt: refused with 400 before any body is read.
const TE_AND_CL: &[u8] = b"POST /mcp HTTP/1.1\r\n\
Host: example\r\n\
Content-Length: 5\r\n\
Transfer-Encoding: chunked\r\n\
\r\n";

fn text<'b>(buf: &'b [u8], r: &std::ops::Range<usize>) -> &'b str {
    std::str::from_utf8(&buf[r.clone()]).unwrap()
}

fn poll_once(buf: &[u8], limits: &Limits, head: &mut Head) -> Result<bool, HttpError> {
    let mut p = HeadParser::default();
    p.poll(buf, limits, head)
}

fn head(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("head");

    let mut h = Head::default();
    assert_eq!(poll_once(GET, &limits, &mut h), Ok(true));
    assert_eq!(h.len, GET.len());
    assert_eq!(text(GET, &h.method), "GET");
    assert_eq!(text(GET, &h.path), "/hello?lang=en");
    assert_eq!(
        text(GET, h.host.as_ref().unwrap()),
        "ringgate.tail1234.ts.net"
    );
    assert_eq!(h.headers.len(), 5);
    assert_eq!(h.body, BodyKind::Empty);
    assert!(h.keep_alive);
    g.throughput(Throughput::Bytes(GET.len() as u64));
    g.bench_function("get_230B", |b| {
        b.iter(|| {
            let r = poll_once(black_box(GET), &limits, &mut h);
            assert!(matches!(r, Ok(true)) && h.len == GET.len());
        })
    });

    assert_eq!(poll_once(MCP_POST, &limits, &mut h), Ok(true));
    assert_eq!(h.body, BodyKind::Length(93));
    assert_eq!(
        h.header(MCP_POST, "mcp-session-id"),
        Some(&b"0000c0ffee0123456789abcdef0123456789"[..])
    );
    assert_eq!(h.headers.len(), 9);
    g.throughput(Throughput::Bytes(MCP_POST.len() as u64));
    g.bench_function("mcp_post", |b| {
        b.iter(|| {
            let r = poll_once(black_box(MCP_POST), &limits, &mut h);
            assert!(matches!(r, Ok(true)) && h.body == BodyKind::Length(93));
        })
    });

    assert_eq!(poll_once(CHUNKED_POST, &limits, &mut h), Ok(true));
    assert_eq!(h.body, BodyKind::Chunked);
    g.throughput(Throughput::Bytes(CHUNKED_POST.len() as u64));
    g.bench_function("chunked_post", |b| {
        b.iter(|| {
            let r = poll_once(black_box(CHUNKED_POST), &limits, &mut h);
            assert!(matches!(r, Ok(true)) && h.body == BodyKind::Chunked);
        })
    });

    assert_eq!(
        poll_once(TE_AND_CL, &limits, &mut h),
        Err(HttpError::TE_AND_LENGTH)
    );
    g.throughput(Throughput::Bytes(TE_AND_CL.len() as u64));
    g.bench_function("refuse_te_and_cl", |b| {
        b.iter(|| {
            let r = poll_once(black_box(TE_AND_CL), &limits, &mut h);
            assert_eq!(r, Err(HttpError::TE_AND_LENGTH));
        })
    });

    // One poll per byte, as for a client dribbling its head: the parser
    // resumes its scan, so the whole costs linear work.
    let dribble = |h: &mut Head| -> usize {
        let mut p = HeadParser::default();
        for n in 1..=GET.len() {
            match p.poll(black_box(&GET[..n]), &limits, h) {
                Ok(false) => {}
                Ok(true) => return n,
                Err(e) => panic!("dribbled GET refused at byte {n}: {e:?}"),
            }
        }
        0
    };
    assert_eq!(dribble(&mut h), GET.len());
    assert_eq!(text(GET, &h.path), "/hello?lang=en");
    g.throughput(Throughput::Bytes(GET.len() as u64));
    g.bench_function("get_dribbled_1B", |b| {
        b.iter(|| assert_eq!(dribble(&mut h), GET.len()))
    });
    g.finish();
}

fn chunked(c: &mut Criterion) {
    let payload: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut wire = Vec::new();
    for piece in payload.chunks(256) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let decode = |out: &mut Vec<u8>| -> usize {
        out.clear();
        let mut d = ChunkedDecoder::new(4 << 20, 16 << 10);
        let used = d.decode(black_box(&wire), out).expect("valid chunked body");
        assert!(d.is_done());
        used
    };
    let mut out = Vec::with_capacity(payload.len());
    assert_eq!(decode(&mut out), wire.len());
    assert_eq!(out, payload);

    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("decode_4KiB_in_256B_chunks", |b| {
        b.iter(|| {
            assert_eq!(decode(&mut out), wire.len());
            assert_eq!(out.len(), payload.len());
        })
    });
    g.finish();
}

/// tailscaled's answer for a user's node, the shape the seed's metadata reads
/// (as in `src/policy/cel/tests.rs`).
const WHOIS_ALICE: &str = r#"{
	"Node": {
		"ID": 7100000000000002,
		"StableID": "nAl1ceL4pt0p1CNTRL",
		"Name": "alice-laptop.tail1234.ts.net.",
		"User": 6478194012345601,
		"Key": "nodekey:ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59",
		"KeyExpiry": "2027-05-27T09:00:00Z",
		"Machine": "mkey:219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf424",
		"DiscoKey": "discokey:fcfc49fc7f0aa4fb5dcea0e27d5814c989c73256443c60e5dee676e3e953850c",
		"Addresses": ["100.84.21.7/32", "fd7a:115c:a1e0::b901:2c4d/128"],
		"AllowedIPs": ["100.84.21.7/32", "fd7a:115c:a1e0::b901:2c4d/128"],
		"HomeDERP": 1,
		"Hostinfo": {"OS": "macOS", "Hostname": "Alices-MacBook-Pro"},
		"Created": "2026-05-27T09:00:00Z",
		"Cap": 133,
		"Online": true,
		"MachineAuthorized": true,
		"ComputedName": "alice-laptop",
		"ComputedNameWithHost": "alice-laptop (alices-macbook-pro)"
	},
	"UserProfile": {
		"ID": 6478194012345601,
		"LoginName": "alice@example.com",
		"DisplayName": "Alice Example",
		"ProfilePicURL": "https://avatars.example.com/u/alice.png"
	},
	"CapMap": null
}"#;

/// The seed's expressions, as `config/tailscale.yaml` writes them.
const SEED_PATH: &str = "\"/localapi/v0/whois?addr=\" + source.address\n";
const SEED_AUTHORITY: &str = "\"local-tailscaled.sock\"";
const SEED_NODE: &str = "json(response.body).Node.Name";
const SEED_EMAIL: &str = "json(response.body).UserProfile.LoginName";
/// Variables each key may read (as `config/compile.rs` allows them).
const REQUEST_VARS: &[&str] = &["source", "request"];
const METADATA_VARS: &[&str] = &["source", "request", "response"];

fn request_vars() -> Vars<'static> {
    Vars {
        source_address: "100.84.21.7",
        source_port: 51234,
        method: "POST",
        path: "/mcp",
        headers: &[],
        response: None,
        extauthz: None,
        mcp: None,
    }
}

fn cel(c: &mut Criterion) {
    let vars = request_vars();
    let want_path = "/localapi/v0/whois?addr=100.84.21.7";
    let path = Expr::compile(SEED_PATH, REQUEST_VARS).unwrap();
    assert!(
        path.is_fast_path(),
        "the seed's path must take the fast path"
    );
    assert_eq!(path.eval_string(&vars).unwrap(), want_path);
    assert_eq!(
        path.eval_interpreted(&vars).unwrap(),
        Value::String(want_path.into())
    );
    let authority = Expr::compile(SEED_AUTHORITY, REQUEST_VARS).unwrap();
    assert_eq!(
        authority.eval_string(&vars).unwrap(),
        "local-tailscaled.sock"
    );

    let mut g = c.benchmark_group("cel");
    g.bench_function("seed_path_fast", |b| {
        b.iter(|| assert_eq!(path.eval_string(black_box(&vars)).unwrap().len(), 35))
    });
    let mut buf = String::with_capacity(64);
    g.bench_function("seed_path_fast_into_buffer", |b| {
        b.iter(|| {
            buf.clear();
            path.eval_string_into(black_box(&vars), &mut buf).unwrap();
            assert_eq!(buf.len(), 35);
        })
    });
    g.bench_function("seed_path_interpreter", |b| {
        b.iter(|| {
            let v = path.eval_interpreted(black_box(&vars)).unwrap();
            assert!(matches!(&v, Value::String(s) if s.len() == 35));
        })
    });
    g.bench_function("seed_authority", |b| {
        b.iter(|| {
            let v = authority.eval_string(black_box(&vars)).unwrap();
            assert_eq!(v.len(), 21);
        })
    });

    let answer = Vars {
        response: Some(ResponseVars {
            code: 200,
            body: WHOIS_ALICE.as_bytes(),
            headers: &[("Content-Type", b"application/json")],
        }),
        ..vars
    };
    let node = Expr::compile(SEED_NODE, METADATA_VARS).unwrap();
    let email = Expr::compile(SEED_EMAIL, METADATA_VARS).unwrap();
    assert_eq!(
        node.eval(&answer).unwrap(),
        Value::String("alice-laptop.tail1234.ts.net.".into())
    );
    assert_eq!(
        email.eval(&answer).unwrap(),
        Value::String("alice@example.com".into())
    );
    // Both metadata values, as the extAuthz stage computes them once per
    // whois answer (a cache miss, not every request).
    g.throughput(Throughput::Bytes(WHOIS_ALICE.len() as u64));
    g.bench_function("seed_metadata_node_and_email", |b| {
        b.iter(|| {
            let n = node.eval(black_box(&answer)).unwrap();
            let e = email.eval(black_box(&answer)).unwrap();
            assert!(matches!(&n, Value::String(s) if s.len() == 29));
            assert!(matches!(&e, Value::String(s) if s.len() == 17));
        })
    });
    g.throughput(Throughput::Elements(1));

    let filter = Expr::compile("request.method == 'POST'", REQUEST_VARS).unwrap();
    assert!(filter.eval_bool(&vars).unwrap());
    g.bench_function("filter_method_eq", |b| {
        b.iter(|| assert!(filter.eval_bool(black_box(&vars)).unwrap()))
    });
    g.finish();
}

/// What the cache holds per key in ringgate: a shared decision.
type Decision = Rc<(bool, Vec<(String, Value)>)>;

fn authz_cache(c: &mut Criterion) {
    const ENTRIES: usize = 10_000;
    let cache: Rc<Cache<Decision>> = Rc::new(Cache::new(ENTRIES));
    let t0 = Instant::now();
    let key_for = |ip: &str| format!("GET /localapi/v0/whois?addr={ip} local-tailscaled.sock");
    // A full cache (the default maxEntries) of distinct peers.
    for i in 0..ENTRIES {
        let ip = format!("100.64.{}.{}", i / 256, i % 256);
        let Lookup::Lead(l) = cache.lookup(&key_for(&ip), t0) else {
            panic!("first lookup of {ip} leads");
        };
        let d: Decision = Rc::new((true, vec![("tailscaleNode".into(), Value::String(ip))]));
        l.finish(d, Some(Duration::from_secs(30)), t0);
    }
    assert_eq!(cache.len(), ENTRIES);
    let ip = "100.64.7.7";
    let key = key_for(ip);
    let now = t0 + Duration::from_secs(1);
    let hit = |key: &str| match cache.lookup(key, now) {
        Lookup::Hit(d, _) => d,
        _ => panic!("expected a cache hit for {key}"),
    };
    assert_eq!(hit(&key).1[0].1, Value::String(ip.into()));

    let mut g = c.benchmark_group("authz_cache");
    g.bench_function("hit_10k_entries", |b| {
        b.iter(|| assert!(hit(black_box(&key)).0))
    });

    // The whole cached extAuthz decision as `auth::check` does it: render
    // the path with the seed's CEL, build the default key (method, path,
    // authority), look it up.
    let path = Expr::compile(SEED_PATH, REQUEST_VARS).unwrap();
    let authority = Expr::compile(SEED_AUTHORITY, REQUEST_VARS).unwrap();
    let vars = Vars {
        source_address: ip,
        ..request_vars()
    };
    let render_and_hit = || {
        let p = path.eval_string(black_box(&vars)).unwrap();
        let a = authority.eval_string(black_box(&vars)).unwrap();
        let k = format!("GET {p} {a}");
        hit(&k)
    };
    assert_eq!(render_and_hit().1[0].1, Value::String(ip.into()));
    g.bench_function("render_key_and_hit", |b| {
        b.iter(|| assert!(render_and_hit().0))
    });

    // A miss that expired: popped, then a lookup is led (and abandoned).
    let stale = t0 + Duration::from_secs(31);
    g.bench_function("expired_then_lead", |b| {
        b.iter_batched(
            || {
                let k = key_for("100.64.9.9");
                if let Lookup::Lead(l) = cache.lookup(&k, t0) {
                    l.finish(
                        Rc::new((false, Vec::new())),
                        Some(Duration::from_secs(30)),
                        t0,
                    );
                }
                k
            },
            |k| assert!(matches!(cache.lookup(&k, stale), Lookup::Lead(_))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The `tools/call echo` a client POSTs, and the child's answer line.
const ECHO_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#;
const ECHO_ANSWER: &[u8] =
    br#"{"result":{"content":[{"type":"text","text":"Echo: hello"}]},"jsonrpc":"2.0","id":42}"#;
const PROGRESS: &[u8] = br#"{"method":"notifications/progress","params":{"progressToken":42,"progress":1,"total":5},"jsonrpc":"2.0"}"#;

fn mcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("mcp");

    let (msgs, batch) = jsonrpc::parse_body(ECHO_CALL).unwrap();
    assert!(!batch);
    assert_eq!(
        msgs[0].kind,
        Kind::Request {
            id: "42".into(),
            method: "tools/call".into(),
            progress_token: None,
            tool: Some("echo".into()),
        }
    );
    let line = msgs[0].line.clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&line).unwrap(),
        serde_json::from_slice::<serde_json::Value>(ECHO_CALL).unwrap()
    );
    g.throughput(Throughput::Bytes(ECHO_CALL.len() as u64));
    g.bench_function("client_body_to_child_line", |b| {
        b.iter(|| {
            let (m, _) = jsonrpc::parse_body(black_box(ECHO_CALL)).unwrap();
            assert!(m[0].is_request() && m[0].line.len() == line.len());
        })
    });

    assert_eq!(
        jsonrpc::peek(ECHO_ANSWER),
        Some(Outgoing::Response { id: "42".into() })
    );
    g.throughput(Throughput::Bytes(ECHO_ANSWER.len() as u64));
    g.bench_function("peek_child_answer", |b| {
        b.iter(|| {
            let o = jsonrpc::peek(black_box(ECHO_ANSWER));
            assert!(matches!(o, Some(Outgoing::Response { id }) if id == "42"));
        })
    });

    // A progress notification from the child, routed to its request's
    // stream by its token.
    assert_eq!(
        jsonrpc::peek(PROGRESS),
        Some(Outgoing::Notification {
            method: "notifications/progress".into(),
            progress: Some("42".into()),
        })
    );
    g.throughput(Throughput::Bytes(PROGRESS.len() as u64));
    g.bench_function("peek_child_progress", |b| {
        b.iter(|| {
            let o = jsonrpc::peek(black_box(PROGRESS));
            assert!(
                matches!(o, Some(Outgoing::Notification { progress: Some(t), .. }) if t == "42")
            );
        })
    });

    let ev = sse::event(ECHO_ANSWER);
    assert_eq!(
        ev,
        [b"event: message\ndata: ", ECHO_ANSWER, b"\n\n"].concat()
    );
    assert_eq!(sse::decode(&ev), vec![ECHO_ANSWER.to_vec()]);
    g.throughput(Throughput::Bytes(ECHO_ANSWER.len() as u64));
    g.bench_function("sse_event", |b| {
        b.iter(|| assert_eq!(sse::event(black_box(ECHO_ANSWER)).len(), ev.len()))
    });
    g.finish();
}

/// A whois answer granting `example.com/cap/mcp` (as
/// `reference/whois-alice.json`, node trimmed), with a glob in the grant.
const WHOIS_GRANTED: &str = r#"{
	"Node": {"ID": 7100000000000002, "Name": "alice-laptop.tail1234.ts.net."},
	"UserProfile": {"ID": 6478194012345601, "LoginName": "alice@example.com"},
	"CapMap": {
		"example.com/cap/proxy": [{"role": "admin", "routes": ["/admin/*"]}],
		"example.com/cap/mcp": [{"tools": ["echo", "get-sum"]}, {"tools": ["tool-1?"]}]
	}
}"#;

fn mcp_authz(c: &mut Criterion) {
    let cfg = Config::from_yaml(include_str!("../config/mcp-grants.yaml")).unwrap();
    let route = &cfg.binds[0].listeners[0].routes[0];
    let authz = route.policies.mcp_authorization.as_ref().unwrap();
    let ext = route.policies.ext_authz.as_ref().unwrap();
    // The metadata as the extAuthz stage caches it: evaluated once per whois
    // answer, then read by every decision.
    let answer = Vars {
        response: Some(ResponseVars {
            code: 200,
            body: WHOIS_GRANTED.as_bytes(),
            headers: &[],
        }),
        ..request_vars()
    };
    let metadata: Vec<(String, Value)> = ext
        .metadata
        .iter()
        .map(|(k, e)| (k.clone(), e.eval(&answer).unwrap()))
        .collect();
    assert!(matches!(metadata[2].1, Value::Map(_)), "{metadata:?}");
    let caller = Vars {
        extauthz: Some(&metadata),
        ..request_vars()
    };
    let decide =
        |name: &str| authz.decide_for(&caller, "tools/call", McpKind::Tool, "everything", name);
    assert_eq!(decide("echo"), Reason::Allow(0));
    assert_eq!(decide("tool-17"), Reason::Allow(0));
    assert_eq!(decide("printEnv"), Reason::NoAllowMatched { failed: 0 });

    // A tools/list answer of 100 tools shaped like server-everything's.
    let mut line = String::from(r#"{"result":{"tools":["#);
    for i in 0..100 {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&format!(
            r#"{{"name":"tool-{i}","description":"Tool number {i}: does a thing with its input","inputSchema":{{"type":"object","properties":{{"message":{{"type":"string","description":"Message"}}}},"required":["message"]}}}}"#
        ));
    }
    line.push_str(r#"]},"jsonrpc":"2.0","id":2}"#);
    let list = governed_list("tools/list").unwrap();
    let filtered = |line: &[u8]| authz.filter(line, list, "everything", &caller);
    // tool-10 .. tool-19 match "tool-1?"; tool-1 does not.
    match filtered(line.as_bytes()) {
        Filtered::Spliced {
            line: out,
            kept: 10,
            removed: 90,
        } => {
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["result"]["tools"][0]["name"], "tool-10");
        }
        other => panic!("{other:?}"),
    }

    let mut g = c.benchmark_group("mcp_authz");
    g.bench_function("tool_call_allowed", |b| {
        b.iter(|| assert_eq!(decide(black_box("echo")), Reason::Allow(0)))
    });
    g.bench_function("tool_call_denied", |b| {
        b.iter(|| assert!(!decide(black_box("printEnv")).allowed()))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("filter_tools_list_100", |b| {
        b.iter(|| {
            let f = filtered(black_box(line.as_bytes()));
            assert!(matches!(f, Filtered::Spliced { kept: 10, .. }));
        })
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the whole file takes about a minute on two shared cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = head, chunked, cel, authz_cache, mcp, mcp_authz
}
criterion_main!(benches);
