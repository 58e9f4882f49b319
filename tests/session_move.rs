//! A connection whose request names another worker's MCP session moves to
//! that worker and is served there from that request on: every answer is
//! right, the owner writes every access line of the session's requests, the
//! move is counted once per connection, and bytes read before the move
//! (a pipelined request, part of a body) go with it. On both I/O drivers,
//! with raw HTTP and with the real Python SDK client.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::fake_tailscaled::FakeTailscaled;
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
const MOVED: &str = "ringgate_connections_moved_total";
/// Fresh connections tried to find one the kernel gives the other worker
/// (each lands on either worker by a hash of its source port).
const TRIES: usize = 64;

fn start(driver: &str) -> (FakeTailscaled, Proxy) {
    start_with(driver, "")
}

/// `http` settings (YAML flow mapping entries) added to the seed config.
fn start_with(driver: &str, http: &str) -> (FakeTailscaled, Proxy) {
    let fake = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .start();
    let mut yaml = seed_config(&fake.target(), 2, "");
    if !http.is_empty() {
        yaml = yaml.replacen("config:\n", &format!("config:\n  http: {{{http}}}\n"), 1);
    }
    let p = Proxy::start(&yaml, &["--threads", "2", "--io-driver", driver]);
    (fake, p)
}

fn owner(sid: &str) -> String {
    u64::from_str_radix(&sid[..4], 16).unwrap().to_string()
}

fn moved(p: &Proxy) -> f64 {
    metric(p, MOVED).unwrap_or_else(|| panic!("{MOVED} missing from /metrics"))
}

/// The access lines of requests from `port` (this client's connection).
fn lines_from(p: &Proxy, port: u16) -> Vec<String> {
    let src = format!("src.addr={ALICE}:{port} ");
    p.logs()
        .into_iter()
        .filter(|l| l.contains(&src) && l.contains("http.status="))
        .collect()
}

type Conn = (TcpStream, BufReader<TcpStream>, u16);

/// A new kept-alive connection and the worker the kernel gave it to: a
/// request naming no session (406, it accepts no event stream) shows it in
/// its access line. `None` when that worker was full (503).
fn probed(p: &Proxy) -> Option<(Conn, String)> {
    let mut s = connect_from(ALICE, p.addr());
    let port = s.local_addr().unwrap().port();
    s.write_all(b"GET /mcp HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r).expect("the probe's answer");
    if resp.status == 503 {
        return None;
    }
    assert_eq!(resp.status, 406, "{}", resp.text());
    assert_eq!(resp.header("connection"), None, "kept alive");
    let src = format!("src.addr={ALICE}:{port} ");
    let line = p
        .wait_log(|l| l.contains(&src) && l.contains("http.status=406"))
        .expect("the probe's access line");
    Some(((s, r, port), field(&line, "worker").unwrap()))
}

/// A kept-alive connection the kernel gave to the worker not owning `sid`.
fn connection_off_owner(p: &Proxy, sid: &str) -> Conn {
    for _ in 0..TRIES {
        match probed(p) {
            Some((c, w)) if w != owner(sid) => return c,
            _ => {}
        }
    }
    panic!("no connection out of {TRIES} reached the worker not owning {sid}");
}

fn assert_echoed(resp: &Resp, id: u64, msg: &str) {
    assert_eq!(resp.status, 200, "call {id}: {}", resp.text());
    let text = answer_text(resp, id).unwrap_or_else(|| panic!("call {id}: {:?}", resp.events()));
    assert!(text.contains(msg), "call {id}: {text}");
}

fn echo_bytes(sid: &str, id: u64) -> (String, String) {
    let msg = format!("moved call {id}");
    let body = call_body(id, "echo", json!({ "message": msg }));
    (post_bytes("/mcp", Some(sid), &body), msg)
}

/// The access lines of `port`'s tools/call requests, once all `n` are
/// written: each names the worker that answered it.
fn call_workers(p: &Proxy, port: u16, n: usize) -> Vec<String> {
    let src = format!("src.addr={ALICE}:{port} ");
    p.wait_log_nth(n - 1, |l| {
        l.contains(&src) && l.contains("mcp.method.name=tools/call")
    })
    .expect("access lines of every call");
    lines_from(p, port)
        .iter()
        .filter(|l| l.contains("mcp.method.name=tools/call"))
        .map(|l| field(l, "worker").unwrap())
        .collect()
}

fn raw_connection_moves_to_the_owner(driver: &str) {
    let (_fake, p) = start(driver);
    let sid = initialize(&p, ALICE, "/mcp");
    let owner = owner(&sid);

    // A connection on the other worker; its first call (pipelined with a
    // second one in the same send) moves it, the rest are served there.
    let (mut s, mut r, port) = connection_off_owner(&p, &sid);
    let before = moved(&p);
    let (first, m1) = echo_bytes(&sid, 1);
    let (second, m2) = echo_bytes(&sid, 2);
    s.write_all(format!("{first}{second}").as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 1"), 1, &m1);
    assert_echoed(&read_response(&mut r).expect("answer 2"), 2, &m2);
    for id in 3..=5 {
        let (bytes, msg) = echo_bytes(&sid, id);
        s.write_all(bytes.as_bytes()).unwrap();
        assert_echoed(&read_response(&mut r).expect("an answer"), id, &msg);
    }
    // Two more pipelined, now that the connection lives on the owner.
    let (a, m6) = echo_bytes(&sid, 6);
    let (b, m7) = echo_bytes(&sid, 7);
    s.write_all(format!("{a}{b}").as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 6"), 6, &m6);
    assert_echoed(&read_response(&mut r).expect("answer 7"), 7, &m7);
    // A body in several sends.
    let (bytes, m8) = echo_bytes(&sid, 8);
    send_in_pieces(&mut s, bytes.as_bytes());
    assert_echoed(&read_response(&mut r).expect("answer 8"), 8, &m8);

    let workers = call_workers(&p, port, 8);
    assert_eq!(workers.len(), 8, "{workers:?}");
    assert!(
        workers.iter().all(|w| *w == owner),
        "every call answered by the owner {owner}: {workers:?}"
    );
    assert_eq!(moved(&p), before + 1.0, "one move for the connection");
    drop((s, r));

    // A fresh connection whose first call names the session, its body
    // split so that the rest arrives after the head (and the move).
    let (mut s, mut r, port) = connection_off_owner(&p, &sid);
    let before = moved(&p);
    let (bytes, m9) = echo_bytes(&sid, 9);
    send_in_pieces(&mut s, bytes.as_bytes());
    assert_echoed(&read_response(&mut r).expect("answer 9"), 9, &m9);
    let (bytes, m10) = echo_bytes(&sid, 10);
    s.write_all(bytes.as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 10"), 10, &m10);
    assert_eq!(
        call_workers(&p, port, 2),
        vec![owner.clone(), owner.clone()]
    );
    assert_eq!(
        moved(&p),
        before + 1.0,
        "one move for the second connection"
    );
}

/// Writes the head in one send and the body in three more.
fn send_in_pieces(s: &mut TcpStream, bytes: &[u8]) {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &bytes[head_end..];
    let third = body.len() / 3;
    let pieces = [
        &bytes[..head_end],
        &body[..third],
        &body[third..2 * third],
        &body[2 * third..],
    ];
    for piece in pieces {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        // Pacing, so the pieces tend to arrive in separate reads; the answer
        // must be the same however they arrive.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn python_sdk_session_with_two_workers(driver: &str) {
    let (_fake, p) = start(driver);
    let url = format!("http://{}/mcp", p.addr());
    let args = [
        "--url",
        &url,
        "--source-ip",
        ALICE,
        "--scenario",
        "full",
        "--mode",
        "legacy",
        "--steps",
        "3",
        "--duration",
        "0.3",
        "--timeout",
        "60",
    ];
    let v = peer_client("mcp_client.py", &args);
    assert_full_scenario(&v);
    // Every request naming the session was answered by its owner, whichever
    // worker accepted its connection.
    let sid = v["session_id"].as_str().expect("session id");
    p.wait_log(|l| l.contains(sid) && l.contains("http.method=DELETE"))
        .expect("the DELETE's access line");
    let named: Vec<String> = p
        .logs()
        .into_iter()
        .filter(|l| l.contains(&format!("mcp.session.id={sid}")))
        .filter(|l| !l.contains("mcp.method.name=initialize"))
        .collect();
    assert!(named.len() >= 4, "{named:#?}");
    for l in &named {
        assert_eq!(field(l, "worker").unwrap(), owner(sid), "{l}");
    }
}

/// The owner at `maxConnectionsPerWorker` declines the move: the call is
/// handed over as before (answered, logged by the worker that accepted it),
/// and once the owner has room again the next call moves the connection.
fn a_full_owner_declines(driver: &str) {
    const LIMIT: usize = 3;
    let (_fake, p) = start_with(driver, &format!("maxConnectionsPerWorker: {LIMIT}"));
    let sid = initialize(&p, ALICE, "/mcp");
    let owner = owner(&sid);
    let mut keeper = None;
    let mut on_owner = Vec::new();
    for _ in 0..TRIES {
        if keeper.is_some() && on_owner.len() == LIMIT {
            break;
        }
        match probed(&p) {
            Some((c, w)) if w == owner => on_owner.push(c),
            Some((c, _)) if keeper.is_none() => keeper = Some(c),
            _ => {}
        }
    }
    assert_eq!(on_owner.len(), LIMIT, "the owner is full");
    let (mut s, mut r, port) = keeper.expect("a connection on the other worker");
    let declined = "ringgate_connection_moves_declined_total";
    let (moved_before, declined_before) = (moved(&p), metric(&p, declined).unwrap());

    let (bytes, m1) = echo_bytes(&sid, 1);
    s.write_all(bytes.as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 1"), 1, &m1);
    let workers = call_workers(&p, port, 1);
    assert_ne!(workers, vec![owner.clone()], "served where it was accepted");
    assert_eq!(metric(&p, declined).unwrap(), declined_before + 1.0);
    assert_eq!(moved(&p), moved_before);

    // Room again on the owner: the next call moves the connection.
    drop(on_owner.pop());
    // The other worker's connection and the owner's remaining ones.
    let open = LIMIT as f64;
    assert!(
        wait_until(WAIT, || metric(&p, "ringgate_connections_open")
            == Some(open)),
        "the closed connection is gone"
    );
    let (bytes, m2) = echo_bytes(&sid, 2);
    s.write_all(bytes.as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 2"), 2, &m2);
    assert_eq!(call_workers(&p, port, 2)[1], owner);
    assert_eq!(moved(&p), moved_before + 1.0);
}

#[test]
fn a_full_owner_declines_the_move_io_uring() {
    a_full_owner_declines("io_uring");
}

#[test]
fn a_full_owner_declines_the_move_epoll() {
    a_full_owner_declines("epoll");
}

/// A connection accepted before a reload keeps its config; the owner runs
/// the new one, so it declines, and the call is handed over as before. A
/// connection accepted after the reload moves.
#[test]
fn a_reload_in_between_keeps_the_connection_where_it_is() {
    let (_fake, p) = start("io_uring");
    let sid = initialize(&p, ALICE, "/mcp");
    let owner = owner(&sid);
    let (mut s, mut r, port) = connection_off_owner(&p, &sid);
    let declined = "ringgate_connection_moves_declined_total";
    let (moved_before, declined_before) = (moved(&p), metric(&p, declined).unwrap());
    p.signal(libc::SIGHUP);
    p.wait_log_nth(1, |l| l.contains("config applied"))
        .expect("both workers applied the reload");

    let (bytes, m1) = echo_bytes(&sid, 1);
    s.write_all(bytes.as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 1"), 1, &m1);
    assert_ne!(call_workers(&p, port, 1), vec![owner.clone()]);
    assert_eq!(metric(&p, declined).unwrap(), declined_before + 1.0);
    assert_eq!(moved(&p), moved_before);

    let (mut s, mut r, port) = connection_off_owner(&p, &sid);
    let (bytes, m2) = echo_bytes(&sid, 2);
    s.write_all(bytes.as_bytes()).unwrap();
    assert_echoed(&read_response(&mut r).expect("answer 2"), 2, &m2);
    assert_eq!(call_workers(&p, port, 1), vec![owner]);
    assert_eq!(moved(&p), moved_before + 1.0);
}

#[test]
fn a_connection_moves_to_the_session_owner_io_uring() {
    raw_connection_moves_to_the_owner("io_uring");
}

#[test]
fn a_connection_moves_to_the_session_owner_epoll() {
    raw_connection_moves_to_the_owner("epoll");
}

#[test]
fn python_sdk_session_on_two_workers_io_uring() {
    python_sdk_session_with_two_workers("io_uring");
}

#[test]
fn python_sdk_session_on_two_workers_epoll() {
    python_sdk_session_with_two_workers("epoll");
}
