use super::*;

const MAX_HEAD: usize = 1024;
const MAX_BODY: usize = 4096;

type Outcome = Result<(CheckResponse, bool), String>;

/// Feeds the pieces in order, then EOF if the parser still wants bytes;
/// the bool is whether the connection could be reused.
fn run(pieces: &[&[u8]]) -> Outcome {
    parse_answer(pieces.iter().copied(), MAX_HEAD, MAX_BODY, false)
        .map_err(|e| e.kind().to_string())
}

fn assert_split_invariant(input: &[u8]) -> Outcome {
    let whole = run(&[input]);
    for cut in 0..=input.len() {
        assert_eq!(run(&[&input[..cut], &input[cut..]]), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(&bytes), whole, "byte by byte");
    whole
}

#[test]
fn content_length_answer() {
    let input =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
    let (resp, reusable) = assert_split_invariant(input).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"{\"a\":1}");
    assert_eq!(resp.header("content-type"), Some(&b"application/json"[..]));
    assert!(reusable);
}

#[test]
fn chunked_answer_with_extension_and_trailer() {
    let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
    let (resp, reusable) = assert_split_invariant(input).unwrap();
    assert_eq!(resp.body, b"Wikipedia");
    assert!(reusable);
}

#[test]
fn eof_framed_answer_is_not_reusable() {
    let input = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno match for IP:port\n";
    let (resp, reusable) = assert_split_invariant(input).unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body, b"no match for IP:port\n");
    assert!(!reusable);
}

#[test]
fn interim_answers_are_skipped_and_bodiless_statuses_have_no_body() {
    let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
    let (resp, reusable) = assert_split_invariant(input).unwrap();
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
    assert_eq!(resp.headers.len(), 1);
    assert!(reusable);
}

#[test]
fn head_answer_ignores_length() {
    let mut p = AnswerParser::new(MAX_HEAD, MAX_BODY, true);
    let r = p
        .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    assert_eq!(r, Progress::Done { reusable: true });
}

#[test]
fn close_and_http10_and_trailing_bytes_prevent_reuse() {
    for input in [
        &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1",
    ] {
        let (_, reusable) = run(&[input]).unwrap();
        assert!(!reusable, "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn duplicate_content_length_must_agree() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 02\r\n\r\nhi";
    assert_eq!(run(&[ok]).unwrap().0.body, b"hi");
}

#[test]
fn bad_framings_are_rejected() {
    let cases: &[(&[u8], &str)] = &[
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nhi", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", "malformed"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "malformed"),
        (b"HTTP/1.1 600 Odd\r\n\r\n", "malformed"),
        (b"HTTP/1.1 099 Odd\r\n\r\n", "malformed"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "malformed"),
        (b"HTTP/2 200 OK\r\n\r\n", "malformed"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n", "too_large"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1001\r\n", "too_large"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi", "closed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhi", "closed"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed"),
        (b"", "closed"),
    ];
    for (input, want) in cases {
        let got = assert_split_invariant(input);
        assert_eq!(
            got,
            Err(want.to_string()),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

/// Found by `fuzz/whois_answer`: a bare LF past the head limit was
/// reported as malformed when it came in the same read, and as too large
/// when the read ended before it.
#[test]
fn head_limit_does_not_depend_on_read_boundaries() {
    let input = format!("HTTP/1.1 200 OK\r\nX: {}\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(
        assert_split_invariant(input.as_bytes()),
        Err("too_large".into())
    );
    let bare_lf_within = format!("HTTP/1.1 200 OK\r\nX: a\n{}", "a".repeat(MAX_HEAD));
    assert_eq!(
        assert_split_invariant(bare_lf_within.as_bytes()),
        Err("malformed".into())
    );
}

#[test]
fn size_limits() {
    let big_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(run(&[big_head.as_bytes()]), Err("too_large".into()));
    let no_end = "a".repeat(MAX_HEAD + 1);
    assert_eq!(run(&[no_end.as_bytes()]), Err("too_large".into()));
    let many: String = (0..=MAX_ANSWER_HEADERS)
        .map(|i| format!("X{i}: 1\r\n"))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(run(&[many.as_bytes()]), Err("too_large".into()));
    let eof_body = format!("HTTP/1.1 200 OK\r\n\r\n{}", "b".repeat(MAX_BODY + 1));
    assert_eq!(run(&[eof_body.as_bytes()]), Err("too_large".into()));
    let interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD / 25 + 1);
    assert_eq!(run(&[interim.as_bytes()]), Err("too_large".into()));
}
