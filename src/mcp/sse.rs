//! Server-sent events as MCP streams them: one JSON-RPC message per event.

/// `event: message\ndata: <json>\n\n`. The JSON must be one line, which
/// child output and our own messages always are; stray CR/LF bytes are split
/// into further `data:` lines so they cannot end the event early.
pub fn event(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: message\n");
    for line in json.split(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// A comment line that keeps idle streams (and the proxies between) alive.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Reassembles the `data` of each event in an SSE byte stream (test helper,
/// and the inverse used by the fuzz round trip). As the SSE spec says, every
/// `data` line adds its value and a LF, and the last LF goes at dispatch, so
/// empty `data` lines count too.
pub fn decode(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    for line in stream.split(|b| *b == b'\n') {
        if line.is_empty() {
            if let Some(mut d) = data.take() {
                d.pop();
                events.push(d);
            }
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            let d = data.get_or_insert_with(Vec::new);
            d.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
            d.push(b'\n');
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = event(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!(
            e,
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
        );
        let mut s = e.clone();
        s.extend_from_slice(KEEPALIVE);
        s.extend_from_slice(&event(b"two\nlines"));
        assert_eq!(
            decode(&s),
            vec![
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_vec(),
                b"two\nlines".to_vec()
            ]
        );
    }

    /// Found by `fuzz/sse`: empty lines at the start of a message were lost
    /// on decoding, because an empty `data` line added nothing.
    #[test]
    fn empty_lines_survive_the_round_trip() {
        for msg in [&b"\n\nx\n"[..], b"", b"\n", b"a\n\nb"] {
            assert_eq!(decode(&event(msg)), [msg.to_vec()]);
        }
    }
}
