//! The HTTP/1.1 server through the real binary, in raw bytes: keep-alive,
//! pipelining, split writes, framing violations, limits and timeouts.

mod support;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use support::*;

fn config(http: &str) -> String {
    format!(
        r#"
config:
  http:
    headerReadTimeout: 400ms
    idleTimeout: 2s
    maxBodyBytes: 1024
    maxHeadBytes: 2048
    {http}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - name: test
    routes:
    - name: a
      matches: [{{path: {{exact: /a}}}}]
      policies: {{directResponse: {{body: "route a"}}}}
    - name: b
      matches: [{{path: {{pathPrefix: /b}}}}]
      policies: {{directResponse: {{body: "route b", status: 201}}}}
    - name: mcp
      matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp: {{targets: [{{name: t, stdio: {{cmd: "true"}}}}]}}
"#
    )
}

fn proxy() -> Proxy {
    Proxy::start(&config(""), &["--threads", "1"])
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let p = proxy();
    let s = connect(p.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..5 {
        let path = if i % 2 == 0 { "/a" } else { "/b/x" };
        write!(w, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let resp = read_response(&mut r).expect("response");
        assert_eq!(resp.header("connection"), None);
        if i % 2 == 0 {
            assert_eq!((resp.status, resp.text().as_str()), (200, "route a"));
        } else {
            assert_eq!((resp.status, resp.text().as_str()), (201, "route b"));
        }
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let p = proxy();
    let req = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\
POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
POST /nope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /mcp HTTP/1.1\r\nHost: t\r\n\r\n\
GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let resps = exchange(p.addr(), req);
    let got: Vec<(u16, String)> = resps.iter().map(|r| (r.status, r.text())).collect();
    assert_eq!(
        got,
        [
            (200, "route a".into()),
            (201, "route b".into()),
            (404, "no route matches this request".into()),
            (
                406,
                "Not Acceptable: Client must accept text/event-stream".into()
            ),
            (200, "route a".into()),
        ]
    );
    assert_eq!(resps[4].header("connection"), Some("close"));
}

#[test]
fn a_request_split_at_every_byte_gives_the_same_answer() {
    let p = proxy();
    let req: &[u8] = b"POST /b/split HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n0\r\nX-Trailer: y\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let whole: Vec<Resp> = exchange(p.addr(), req)
        .iter()
        .map(Resp::without_date)
        .collect();
    assert_eq!(whole.len(), 2);
    assert_eq!(whole[0].status, 201);
    for cut in 1..req.len() {
        let mut s = connect(p.addr());
        s.write_all(&req[..cut]).unwrap();
        s.flush().unwrap();
        // Long enough that the two pieces arrive in separate reads.
        std::thread::sleep(Duration::from_millis(2));
        s.write_all(&req[cut..]).unwrap();
        let mut r = BufReader::new(s);
        let got: Vec<Resp> = std::iter::from_fn(|| read_response(&mut r))
            .map(|r| r.without_date())
            .collect();
        assert_eq!(got, whole, "split at byte {cut}");
    }
}

#[test]
fn framing_violations_get_their_status_and_a_closed_connection() {
    let p = proxy();
    let cases: &[(&str, &[u8], u16)] = &[
        ("CL and TE together", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("two different Content-Length", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
        ("malformed Content-Length", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        ("bad chunk size", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400),
        ("chunk data longer than its size", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 400),
        ("over-long chunk extension", &[b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1;".as_slice(), &[b'x'; 300], b"\r\na\r\n0\r\n\r\n"].concat(), 400),
        ("bare LF", b"GET /a HTTP/1.1\nHost: t\n\n", 400),
        ("bare LF after headers", b"GET /a HTTP/1.1\r\nHost: t\r\n\n", 400),
        ("missing Host", b"GET /a HTTP/1.1\r\n\r\n", 400),
        ("duplicate Host", b"GET /a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400),
        ("invalid Host", b"GET /a HTTP/1.1\r\nHost: t u\r\n\r\n", 400),
        ("oversized head", &[b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: ".as_slice(), &[b'x'; 3000], b"\r\n\r\n"].concat(), 431),
        ("oversized target", &[b"GET /".as_slice(), &[b'x'; 3000], b" HTTP/1.1\r\nHost: t\r\n\r\n"].concat(), 414),
        ("oversized body by Content-Length", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", 413),
        ("oversized chunked body", &[b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".as_slice(), &[b'x'; 2048], b"\r\n0\r\n\r\n"].concat(), 413),
        ("HTTP/1.0 with Transfer-Encoding", b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("unknown transfer coding", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("chunked not final", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        ("obs-fold", b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\r\n  b\r\n\r\n", 400),
        ("space before colon", b"GET /a HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc", 400),
        ("NUL in a header", b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n", 400),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        ("unsupported Expect", b"GET /a HTTP/1.1\r\nHost: t\r\nExpect: x\r\n\r\n", 417),
    ];
    for (name, bytes, status) in cases {
        let (resps, closed) = exchange_open(p.addr(), bytes);
        assert_eq!(
            resps.len(),
            1,
            "{name}: exactly one response, got {resps:?}"
        );
        assert_eq!(resps[0].status, *status, "{name}: {:?}", resps[0].text());
        assert_eq!(resps[0].header("connection"), Some("close"), "{name}");
        assert_eq!(
            resps[0].header("content-type"),
            Some("text/plain"),
            "{name}"
        );
        assert!(closed, "{name}: ringgate must close the connection");
    }
}

#[test]
fn a_rejected_request_never_lets_a_smuggled_one_through() {
    let p = proxy();
    let req = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n";
    let (resps, closed) = exchange_open(p.addr(), req);
    assert_eq!(resps.len(), 1);
    assert_eq!(resps[0].status, 400);
    assert!(closed);
}

#[test]
fn head_answers_carry_the_length_but_no_body() {
    let p = proxy();
    let s = connect(p.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_response_to(&mut r, true).unwrap();
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("7"))
    );
    // The next bytes are the GET's answer, so the HEAD answer had no body.
    assert_eq!(read_response(&mut r).unwrap().text(), "route a");
}

#[test]
fn slow_header_is_closed_at_the_deadline() {
    let p = proxy();
    let mut s = connect(p.addr());
    let start = Instant::now();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r).expect("a 408 before the close");
    let elapsed = start.elapsed();
    assert_eq!(resp.status, 408);
    assert!(closed_after(&mut r));
    // The configured deadline is 400 ms: not before it, and well before WAIT.
    assert!(
        elapsed >= Duration::from_millis(350),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "closed late: {elapsed:?}");
}

#[test]
fn dribbling_bytes_does_not_extend_the_header_deadline() {
    let p = proxy();
    let mut s = connect(p.addr());
    let start = Instant::now();
    let mut closed = false;
    // One byte every 50 ms would take 2 s for this head; the deadline is 400 ms.
    for b in b"GET /a HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r);
    assert!(
        closed || resp.as_ref().is_some_and(|r| r.status == 408),
        "slowloris must be cut: {resp:?}"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let p = proxy();
    let s = connect(p.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    let start = Instant::now();
    assert!(
        read_response(&mut r).is_none(),
        "no 408 for an idle connection"
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn expect_100_continue_and_http10() {
    let p = proxy();
    let s = connect(p.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 100);
    w.write_all(b"abc").unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 200);

    let resps = exchange(p.addr(), b"GET /a HTTP/1.0\r\n\r\n");
    assert_eq!(resps.len(), 1);
    assert_eq!(resps[0].header("connection"), Some("close"));
    let (resps, _) = exchange_open(
        p.addr(),
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /a HTTP/1.0\r\n\r\n",
    );
    assert_eq!(resps.len(), 2);
    assert_eq!(resps[0].header("connection"), Some("keep-alive"));
}

#[test]
fn connections_over_the_worker_limit_get_503() {
    let p = Proxy::start(&config("maxConnectionsPerWorker: 2"), &["--threads", "1"]);
    let held: Vec<_> = (0..2).map(|_| connect(p.addr())).collect();
    // Make sure both are accepted before the third arrives.
    for s in &held {
        let mut w = s.try_clone().unwrap();
        w.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 200);
    }
    let (resps, closed) = exchange_open(p.addr(), b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resps[0].status, 503);
    assert_eq!(resps[0].header("retry-after"), Some("1"));
    assert!(closed);
    drop(held);
    // Once the held connections are gone, new ones are served again.
    let deadline = Instant::now() + WAIT;
    loop {
        let resps = exchange(p.addr(), b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
        if resps.first().is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        std::thread::sleep(Duration::from_millis(20));
    }
}
