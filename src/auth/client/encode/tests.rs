use super::*;

#[test]
fn request_encoding() {
    let mut req = CheckRequest::get(
        "/localapi/v0/whois?addr=100.64.0.1",
        "local-tailscaled.sock",
    );
    req.headers = vec![
        ("Origin".into(), "https://evil.example".into()),
        ("referer".into(), "x".into()),
        ("Host".into(), "other".into()),
        ("Content-Length".into(), "5".into()),
        ("X-Trace".into(), "abc".into()),
    ];
    assert_eq!(
        encode_request(&req).unwrap(),
        b"GET /localapi/v0/whois?addr=100.64.0.1 HTTP/1.1\r\nHost: local-tailscaled.sock\r\nX-Trace: abc\r\n\r\n"
    );
    let post = CheckRequest {
        method: "POST".into(),
        ..CheckRequest::get("/check", "")
    };
    assert_eq!(
        encode_request(&post).unwrap(),
        b"POST /check HTTP/1.1\r\nHost: \r\nContent-Length: 0\r\n\r\n"
    );
    let bad = |f: &dyn Fn(&mut CheckRequest)| {
        let mut r = CheckRequest::get("/x", "h");
        f(&mut r);
        matches!(encode_request(&r), Err(ClientError::InvalidRequest(_)))
    };
    assert!(bad(&|r| r.method = "GE T".into()));
    assert!(bad(&|r| r.path = "x".into()));
    assert!(bad(&|r| r.path = "/a b".into()));
    assert!(bad(&|r| r.authority = "a\r\nX: y".into()));
    assert!(bad(&|r| r
        .headers
        .push(("X".into(), "a\r\nInjected: 1".into()))));
    assert!(bad(&|r| r.headers.push(("X Y".into(), "1".into()))));
}
