//! Tests of the fake tailscaled itself, through a plain blocking std client,
//! so that tests of ringgate built on it stand on checked ground.

mod support;

use support::fake_tailscaled;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use fake_tailscaled::{FakeTailscaled, Fault, Node, LOCALAPI_HOST};

const ALICE: &str = "100.84.21.7";
const CI: &str = "100.88.7.6";
const ALICE_V6: &str = "fd7a:115c:a1e0::b901:2c4d";

fn fake() -> FakeTailscaled {
    FakeTailscaled::builder()
        .node(
            Node::user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
                .with_addr(ALICE_V6),
        )
        .tagged(CI, "ci-runner.tail1234.ts.net.", &["tag:ci", "tag:builder"])
        .port_miss_delay(Duration::from_millis(150))
        .start()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(fake: &FakeTailscaled) -> Client {
        let stream = UnixStream::connect(fake.path()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    fn get(&mut self, target: &str, host: &str, extra: &str) -> Answer {
        self.send_raw(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes());
        self.read_answer().expect("an answer")
    }

    fn whois(&mut self, addr: &str) -> Answer {
        self.get(
            &format!("/localapi/v0/whois?addr={addr}"),
            LOCALAPI_HOST,
            "",
        )
    }

    /// `None` on EOF before a status line.
    fn read_answer(&mut self) -> Option<Answer> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).expect("read status") == 0 {
            return None;
        }
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read header");
            let l = line.strip_suffix("\r\n").expect("CRLF line ends");
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(": ").expect("header");
            headers.push((n.to_string(), v.to_string()));
        }
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if a.header("transfer-encoding") == Some("chunked") {
            a.body = self.read_chunked();
        } else {
            let n: usize = a.header("content-length").expect("length").parse().unwrap();
            a.body = vec![0; n];
            self.reader.read_exact(&mut a.body).expect("body");
        }
        Some(a)
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).expect("chunk size");
            if size == 0 {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                assert_eq!(line, "\r\n", "no trailers expected");
                return body;
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..]).unwrap();
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).unwrap();
            assert_eq!(&crlf, b"\r\n");
        }
    }

    /// Everything until EOF.
    fn read_rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to EOF");
        rest
    }
}

#[test]
fn whois_of_a_user_has_the_real_shape() {
    let fake = fake();
    let a = Client::connect(&fake).whois(ALICE);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str())
    );
    assert!(a.header("date").is_some_and(|d| d.ends_with(" GMT")));
    assert!(a.body.ends_with(b"}\n"), "Go's encoder ends with LF");
    assert_eq!(a.body, fake.whois_body(ALICE).unwrap().as_bytes());
    let j = a.json();
    let node = &j["Node"];
    assert_eq!(node["Name"], "alice-laptop.tail1234.ts.net.");
    assert!(node["Name"].as_str().unwrap().ends_with('.'));
    let id = node["ID"].as_u64().expect("integer ID");
    assert_eq!(id, (1 << 53) + 1, "exact, beyond f64 precision");
    assert_ne!(id as f64 as u64, id);
    assert!(node["Key"].as_str().unwrap().starts_with("nodekey:"));
    assert_eq!(node["Addresses"][0], format!("{ALICE}/32"));
    assert_eq!(node["Addresses"][1], format!("{ALICE_V6}/128"));
    assert_eq!(node["AllowedIPs"], node["Addresses"]);
    assert_eq!(node["ComputedName"], "alice-laptop");
    assert!(node["Hostinfo"]["OS"].is_string());
    assert!(node.get("Tags").is_none());
    let profile = &j["UserProfile"];
    assert_eq!(profile["LoginName"], "alice@example.com");
    assert_eq!(profile["DisplayName"], "Alice");
    assert_eq!(profile["ID"].as_u64(), node["User"].as_u64());
    assert!(profile["ID"].as_u64().unwrap() > 1 << 53);
    assert!(j["CapMap"].is_null());
}

#[test]
fn whois_of_a_tagged_node() {
    let fake = fake();
    let j = Client::connect(&fake).whois(CI).json();
    assert_eq!(j["Node"]["Name"], "ci-runner.tail1234.ts.net.");
    assert_eq!(
        j["Node"]["Tags"],
        serde_json::json!(["tag:ci", "tag:builder"])
    );
    assert_eq!(j["UserProfile"]["LoginName"], "tagged-devices");
    assert_eq!(
        j["UserProfile"]["ID"].as_u64(),
        Some(31_234_567_890_123_457)
    );
    assert!(j["CapMap"].is_null());
    assert!(j["Node"].get("KeyExpiry").is_none());
}

#[test]
fn addr_forms() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    for addr in [
        format!("{ALICE}:41641"),
        ALICE_V6.to_string(),
        format!("[{ALICE_V6}]:443"),
        format!("%5B{}%5D%3A443", ALICE_V6.replace(':', "%3A")),
    ] {
        let a = c.whois(&addr);
        assert_eq!(a.status, 200, "{addr}");
        assert_eq!(a.json()["UserProfile"]["LoginName"], "alice@example.com");
    }
    assert_eq!(fake.whois_calls_for(ALICE), 1);
    assert_eq!(fake.whois_calls_for(ALICE_V6), 3);
}

#[test]
fn error_answers_are_go_text() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    let cases = [
        (
            "/localapi/v0/whois?addr=100.64.0.99",
            404,
            "no match for IP:port\n",
        ),
        ("/localapi/v0/whois", 400, "missing 'addr' parameter\n"),
        (
            "/localapi/v0/whois?addr=",
            400,
            "missing 'addr' parameter\n",
        ),
        (
            "/localapi/v0/whois?other=1",
            400,
            "missing 'addr' parameter\n",
        ),
        (
            "/localapi/v0/whois?addr=bogus",
            400,
            "invalid 'addr' parameter\n",
        ),
        (
            "/localapi/v0/whois?addr=100.64.0.1:99999",
            400,
            "invalid 'addr' parameter\n",
        ),
        ("/localapi/v0/status", 404, "404 page not found\n"),
        ("/", 404, "404 page not found\n"),
    ];
    for (target, status, body) in cases {
        let a = c.get(target, LOCALAPI_HOST, "");
        assert_eq!((a.status, a.text()), (status, body), "{target}");
        assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(fake.connections(), 1, "errors keep the connection alive");
}

#[test]
fn a_miss_with_a_port_is_slow() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    assert_eq!(c.whois("100.64.0.99").status, 404);
    // Only the lower bound is checked: a sleep guarantees it, while an upper
    // bound on the fast case would fail on a busy machine.
    let t = Instant::now();
    assert_eq!(c.whois("100.64.0.99:1234").status, 404);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[test]
fn host_origin_and_referer_rules() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    let whois = format!("/localapi/v0/whois?addr={ALICE}");
    let denied = [
        ("localhost", ""),
        ("local-tailscaled.sock:80", ""),
        ("LOCAL-TAILSCALED.SOCK", ""),
        (LOCALAPI_HOST, "Origin: http://local-tailscaled.sock\r\n"),
        (LOCALAPI_HOST, "Referer: http://evil.example/\r\n"),
        ("", "Origin: null\r\n"),
    ];
    for (host, extra) in denied {
        let a = c.get(&whois, host, extra);
        assert_eq!(
            (a.status, a.text()),
            (403, "invalid localapi request\n"),
            "{host:?} {extra:?}"
        );
        assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    assert_eq!(fake.whois_calls(), 0, "refused before routing");
    assert_eq!(c.get(&whois, "", "").status, 200, "empty Host is fine");
    assert_eq!(c.get(&whois, LOCALAPI_HOST, "").status, 200);
    // No Host header at all is an HTTP/1.1 error, answered by net/http.
    c.send_raw(format!("GET {whois} HTTP/1.1\r\n\r\n").as_bytes());
    let rest = String::from_utf8(c.read_rest()).unwrap();
    assert!(rest.starts_with("HTTP/1.1 400 Bad Request"), "{rest}");
}

#[test]
fn keep_alive_and_pipelining() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    assert_eq!(c.whois(ALICE).status, 200);
    assert_eq!(c.whois(CI).status, 200);
    let req = format!("GET /localapi/v0/whois?addr={CI} HTTP/1.1\r\nHost: {LOCALAPI_HOST}\r\n\r\n");
    c.send_raw(format!("{req}{req}").as_bytes());
    assert_eq!(c.read_answer().unwrap().status, 200);
    assert_eq!(c.read_answer().unwrap().status, 200);
    assert_eq!(fake.connections(), 1);
    assert_eq!(fake.requests(), 4);
    assert_eq!(fake.whois_calls(), 4);
    assert_eq!(fake.whois_calls_for(CI), 3);

    // `Connection: close` is honoured, as Go does.
    let a = c.get(
        &format!("/localapi/v0/whois?addr={ALICE}"),
        LOCALAPI_HOST,
        "Connection: close\r\n",
    );
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.read_rest().is_empty());
}

#[test]
fn large_answers_are_chunked() {
    let caps: Vec<String> = (0..100)
        .map(|i| format!("\"example.com/cap/{i}\":[{{\"role\":\"r{i}\"}}]"))
        .collect();
    let cap_map = format!("{{{}}}", caps.join(","));
    let fake = FakeTailscaled::builder()
        .node(
            Node::user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
                .with_cap_map(&cap_map),
        )
        .start();
    let a = Client::connect(&fake).whois(ALICE);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert!(a.header("content-length").is_none());
    assert!(a.body.len() > 2048);
    assert_eq!(a.json()["CapMap"]["example.com/cap/99"][0]["role"], "r99");
}

#[test]
fn counters() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    c.whois(ALICE);
    c.whois(ALICE);
    c.whois("100.64.0.9");
    c.whois("nonsense");
    c.get("/other", "", "");
    drop(c);
    Client::connect(&fake).whois(CI);
    assert_eq!(fake.whois_calls(), 5);
    assert_eq!(fake.whois_calls_for(ALICE), 2);
    assert_eq!(fake.whois_calls_for("100.64.0.9"), 1);
    assert_eq!(fake.whois_calls_for(CI), 1);
    assert_eq!(fake.requests(), 6);
    assert_eq!(fake.connections(), 2);
    fake.reset_counters();
    assert_eq!(
        (fake.whois_calls(), fake.requests(), fake.connections()),
        (0, 0, 0)
    );
}

#[test]
fn fault_slow() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    fake.set_fault(Fault::Slow(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(c.whois(ALICE).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    fake.set_fault(Fault::None);
    let t = Instant::now();
    assert_eq!(c.whois(ALICE).status, 200);
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn fault_hang_never_answers_and_drop_still_returns() {
    let fake = fake();
    fake.set_fault(Fault::Hang);
    let mut c = Client::connect(&fake);
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_raw(
        format!("GET /localapi/v0/whois?addr={ALICE} HTTP/1.1\r\nHost: \r\n\r\n").as_bytes(),
    );
    let mut byte = [0u8; 1];
    let err = c.reader.read(&mut byte).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(fake.whois_calls(), 1, "the request was read");
    // A second, idle client too: drop must not wait for either.
    let _idle = Client::connect(&fake);
    let t = Instant::now();
    drop(fake);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(c.reader.read(&mut byte).unwrap(), 0, "closed by drop");
}

#[test]
fn fault_status_500_and_back() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    fake.set_fault(Fault::Status500);
    let a = c.whois(ALICE);
    assert_eq!(a.status, 500);
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    fake.set_fault(Fault::None);
    assert_eq!(c.whois(ALICE).status, 200);
}

#[test]
fn fault_malformed_json() {
    let fake = fake();
    fake.set_fault(Fault::MalformedJson);
    let a = Client::connect(&fake).whois(ALICE);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(serde_json::from_slice::<serde_json::Value>(&a.body).is_err());
}

#[test]
fn fault_oversized_is_chunked_valid_json() {
    let fake = fake();
    fake.set_fault(Fault::Oversized(3 << 20));
    let a = Client::connect(&fake).whois(ALICE);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.body.len(), 3 << 20);
    assert!(a.json()["Pad"].is_string());
}

#[test]
fn fault_close_mid_answer() {
    let fake = fake();
    fake.set_fault(Fault::CloseMidAnswer);
    let mut c = Client::connect(&fake);
    c.send_raw(
        format!("GET /localapi/v0/whois?addr={ALICE} HTTP/1.1\r\nHost: \r\n\r\n").as_bytes(),
    );
    let got = c.read_rest();
    let full = fake.whois_body(ALICE).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(got.len() < full.len(), "cut short: {} bytes", got.len());
}

#[test]
fn fault_missing_and_refused_come_back_on_the_same_path() {
    let fake = fake();
    let mut old = Client::connect(&fake);
    assert_eq!(old.whois(ALICE).status, 200);
    fake.set_fault(Fault::Missing);
    assert!(!fake.path().exists());
    let err = UnixStream::connect(fake.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(old.read_rest().is_empty(), "open connections are closed");

    fake.set_fault(Fault::Refused);
    assert!(fake.path().exists());
    let err = UnixStream::connect(fake.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    fake.set_fault(Fault::None);
    assert_eq!(Client::connect(&fake).whois(ALICE).status, 200);
    fake.set_fault(Fault::Missing);
    fake.set_fault(Fault::None);
    assert_eq!(Client::connect(&fake).whois(CI).status, 200);
}

#[test]
fn close_connections_leaves_clients_with_eof() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    assert_eq!(c.whois(ALICE).status, 200);
    assert_eq!(fake.open_connections(), 1);
    fake.close_connections();
    assert!(c.read_rest().is_empty());
}

#[test]
fn drop_removes_the_socket_and_its_directory() {
    let fake = fake();
    let path = fake.path().to_path_buf();
    let dir = path.parent().unwrap().to_path_buf();
    assert!(path.exists());
    let _c = Client::connect(&fake);
    drop(fake);
    assert!(!path.exists());
    assert!(!dir.exists());
}

#[test]
fn head_requests_and_request_bodies() {
    let fake = fake();
    let mut c = Client::connect(&fake);
    c.send_raw(
        format!("HEAD /localapi/v0/whois?addr={ALICE} HTTP/1.1\r\nHost: \r\n\r\n").as_bytes(),
    );
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        c.reader.read_line(&mut head).unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 200 OK"));
    // A body sent with the request is skipped, not taken for the next one.
    c.send_raw(format!("POST /localapi/v0/whois?addr={CI} HTTP/1.1\r\nHost: \r\nContent-Length: 5\r\n\r\nhello").as_bytes());
    assert_eq!(c.read_answer().unwrap().status, 200);
    assert_eq!(c.whois(ALICE).status, 200);
}
