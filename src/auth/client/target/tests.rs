use super::*;

#[test]
fn target_parse() {
    let ok = |s: &str| Target::parse(s).unwrap();
    assert_eq!(
        ok("unix:/run/tailscale/tailscaled.sock"),
        Target::Unix("/run/tailscale/tailscaled.sock".into())
    );
    assert_eq!(
        ok("127.0.0.1:9000"),
        Target::Tcp {
            host: "127.0.0.1".into(),
            port: 9000
        }
    );
    assert_eq!(
        ok("authz.internal:80"),
        Target::Tcp {
            host: "authz.internal".into(),
            port: 80
        }
    );
    assert_eq!(
        ok("[::1]:8080"),
        Target::Tcp {
            host: "::1".into(),
            port: 8080
        }
    );
    for s in ["unix:/a.sock", "localhost:1", "[fd7a:115c:a1e0::1]:65535"] {
        assert_eq!(ok(s).to_string(), s);
    }
    for bad in [
        "",
        "unix:",
        "localhost",
        "localhost:",
        "localhost:0",
        "localhost:65536",
        "localhost:+80",
        ":80",
        "::1:80",
        "[::1:80",
        "[nope]:80",
        "http://localhost:80",
        "a b:80",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
    }
    let long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH_BYTES));
    assert!(Target::parse(&long).is_err());
}

/// The messages are the config error texts users see; typing them must not
/// change a word.
#[test]
fn target_error_texts() {
    let err = |s: &str| Target::parse(s).unwrap_err().to_string();
    assert_eq!(err("unix:"), r#""unix:": expected unix:/path/to/socket"#);
    assert_eq!(
        err("localhost"),
        r#""localhost": expected unix:/path/to/socket or host:port"#
    );
    assert_eq!(
        err("http://a:1"),
        r#""http://a:1": expected unix:/path/to/socket or host:port, not a URL"#
    );
    assert_eq!(err("a:0"), r#""a:0": port must be 1-65535"#);
    assert_eq!(err("[nope]:80"), r#""[nope]:80": bad IPv6 literal"#);
    assert_eq!(
        err("::1:80"),
        r#""::1:80": expected unix:/path/to/socket or host:port; IPv6 goes in brackets"#
    );
    assert_eq!(
        err(&format!("unix:/{}", "a".repeat(MAX_UNIX_PATH_BYTES)))
            .split(": ")
            .nth(1),
        Some("a socket path must be at most 107 bytes, without NUL")
    );
}
