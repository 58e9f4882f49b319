#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (checked in; rerun after edits).
Reads the whois answers in ../shared/reference and the configs in config/.

Targets with a control prefix (see fuzz_targets/common.rs) get three bytes
before the bytes under test: a selector, then a split point (big-endian)."""
import json, os, re, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, ".."))
corpus = os.path.join(here, "corpus")
shared = os.path.join(root, "..", "shared", "reference")


def write(target, name, data, prefix=None):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    if prefix is not None:
        data = bytes(prefix) + data
    assert len(data) < 4096, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Selector 0x7f: 512-byte head, 184-byte URI, 8 headers, 64-byte body.
HTTP = 0x7F
http = {
    "get": "GET /a HTTP/1.1\r\nHost: t\r\n\r\n",
    "pipelined": "GET /a HTTP/1.1\r\nHost: t\r\n\r\nPOST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "chunked": "POST /mcp HTTP/1.1\r\nHost: example.com:3000\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n4;ext=\"v\"\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "mcp-post": "POST /mcp HTTP/1.1\r\nHost: 100.84.21.1:3000\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}",
    "absolute-form": "GET http://h:1/x?y HTTP/1.1\r\nHost: other\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "cl-te": "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "te-te": "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n",
    "te-fold": "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "cl-dup": "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    "chunk-tricks": "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000001;a=b\r\nx\r\nffffffffffffffff\r\n",
    "bare-lf": "GET /a HTTP/1.1\nHost: t\n\n",
    "http10-te": "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}
for name, req in http.items():
    write("http_request", name, req, [HTTP, 0x00, len(req) // 2])

chunked = {
    "simple": "4\r\nWiki\r\n5;name=val\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1",
    "quoted-ext": "a;x=\"q;\\\"\"\r\n0123456789\r\n1\r\nZ\r\n0\r\n\r\n",
    "overflow": "ffffffffffffffff0\r\n",
    "bad": "1\nA\r\n0x1\r\n-1\r\n",
    "trailers": "1\r\nA\r\n0\r\nX-One: 12345678\r\nX-Two: abc\r\n\r\n",
}
for name, body in chunked.items():
    write("chunked", name, body, [0x3E, 0x00, 0x07])
# Mode bit 0x40: encode these bytes, then decode.
write("chunked", "roundtrip", "some payload that gets chunked\x00\xff", [0x40 | 0x80, 0x12, 0x34])

client = {
    "initialize": '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"},"_meta":{"progressToken":"p1"}}}',
    "batch": '[{"jsonrpc":"2.0","method":"notifications/initialized"},\n {"jsonrpc":"2.0","id":"a","result":{}}, {"jsonrpc":"2.0","id":-1.5e3,"error":{"code":1,"message":"x"}}]',
    "tools-call": '{"jsonrpc":"2.0","id":"\\u2028x\\n","method":"tools/call","params":{"name":"echo","arguments":{"message":"line\\r\\nbreak"}}}',
    "invalid": '{"jsonrpc":"2.0","id":{},"method":"x"}',
    "pretty": '\r\n{\n  "method" : "tools/call",\n\t"jsonrpc": "2.0", "id": 123456789012345678901234567890,\r\n  "params": {"name": "echo", "arguments": {"z": -0, "a": 1.10, "e": 1e400, "s": "caf\\u00e9\\n"}}\n}\n',
    "duplicate": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\\u0061me":"other"}}',
}
for name, body in client.items():
    write("jsonrpc_client", name, body)

child = {
    "response": '{"jsonrpc":"2.0","id":7,"result":{"content":[]}}',
    "progress": '{"method":"notifications/progress","params":{"progressToken":"p1","progress":1},"jsonrpc":"2.0"}',
    "request": '{"jsonrpc":"2.0","id":0,"method":"roots/list"}',
    "init-answer": '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}',
    "null-id-error": '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
    "positional": '[7,null,null,{}]',
}
for name, body in child.items():
    write("jsonrpc_child", name, body)

write("sse", "json", child["response"])
write("sse", "newlines", "a\nb\r\nc\rd\n\n")
write("sse", "empty-lines", "\n\nx\n")

def go_answer(status, body, chunked=False):
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nDate: Sat, 28 Nov 2026 12:47:03 GMT\r\n"
    if chunked:
        b = body.encode()
        out = head + "Transfer-Encoding: chunked\r\n\r\n"
        parts = [b[i:i + 800] for i in range(0, len(b), 800)]
        wire = out.encode() + b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
        return wire
    return (head + f"Content-Length: {len(body.encode())}\r\n\r\n" + body).encode()

WHOIS = 0x7F  # 568-byte head, 1024-byte body, GET
for name in ["whois-alice.json", "whois-tagged.json"]:
    body = json.dumps(json.load(open(os.path.join(shared, name))), separators=(",", ":"))
    stem = name[:-5]
    write("whois_answer", stem, go_answer("200 OK", body), [WHOIS, 0x01, 0x00])
alice = json.dumps(json.load(open(os.path.join(shared, "whois-alice.json"))), separators=(",", ":"))
write("whois_answer", "alice-chunked", go_answer("200 OK", alice, chunked=True), [WHOIS, 0x00, 0x50])
write("whois_answer", "not-found", "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n\r\nno match for IP:port\n", [WHOIS, 0x00, 0x20])
write("whois_answer", "interim", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", [WHOIS, 0x00, 0x10])

for name in ["tailscale.yaml", "demo.yaml"]:
    write("config_yaml", name[:-5], open(os.path.join(root, "config", name)).read())
write("config_yaml", "limits", """config:
  workerThreads: 2
  ioDriver: epoll
  logging: {level: info, format: json}
  http: {maxHeadBytes: 4096, maxUriBytes: 1024, maxHeaders: 32, maxBodyBytes: 1024, headerReadTimeout: 400ms, idleTimeout: 2s}
  mcp: {minIdle: 0, maxLive: 4, sessionIdleTimeout: 1m}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - name: l
    hostname: "*.example.com"
    routes:
    - name: a
      matches: [{path: {exact: /a}}]
      policies: {directResponse: {body: "route a", status: 201}}
""")
