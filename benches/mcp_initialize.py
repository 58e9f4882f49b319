#!/usr/bin/env python3
"""initialize latency through ringgate: warm pool versus cold spawn.

Starts ringgate (release build) on loopback with server-everything as the
stdio child, once with `minIdle: 1` (a child is spawned ahead of demand) and
once with `minIdle: 0` (every initialize spawns its child), for `node` and
for `npx` as the command. For each it opens and closes N sessions with raw
HTTP and prints the median and spread of the initialize round trip, then the
live child count after all sessions were closed.

    cargo build --release && tests/peers/setup.sh
    python3 benches/mcp_initialize.py [--runs 7]
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "tests", "peers")
SERVER_JS = os.path.join(PEERS, "node_modules/@modelcontextprotocol/server-everything/dist/index.js")
BIN = os.path.join(ROOT, "target", "release", "ringgate")

INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}},
})
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def start(min_idle, cmd, args):
    cfg = f"""
config:
  workerThreads: 1
  mcp: {{minIdle: {min_idle}, stopGrace: 500ms}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp: {{targets: [{{name: everything, stdio: {{cmd: {json.dumps(cmd)}, args: {json.dumps(args)}}}}}]}}
"""
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(cfg)
    f.close()
    proc = subprocess.Popen([BIN, "-f", f.name], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUST_LOG": "info"})
    deadline = time.time() + 10
    port = None
    while time.time() < deadline and port is None:
        line = proc.stderr.readline()
        m = re.search(r"bind\.addr=127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
    if port is None:
        proc.kill()
        sys.exit("ringgate did not start")
    return proc, port, f.name


def one_session(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    c.request("POST", "/mcp", INIT, HEADERS)
    r = c.getresponse()
    sid = r.getheader("mcp-session-id")
    body = r.read()  # the stream ends after the initialize answer
    ms = (time.perf_counter() - t0) * 1000
    if r.status != 200 or b'"result"' not in body:
        raise RuntimeError(f"initialize failed: {r.status} {body[:200]!r}")
    c.close()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid})
    c.getresponse().read()
    c.close()
    return ms


def live_children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return len(out.stdout.split())


def measure(label, min_idle, cmd, args, runs, settle):
    proc, port, cfg = start(min_idle, cmd, args)
    try:
        time.sleep(settle)  # let the warm pool fill
        times = []
        for _ in range(runs):
            times.append(one_session(port))
            time.sleep(settle)  # and refill between sessions
        time.sleep(1.5)  # stops (stdin EOF, then signals) are asynchronous
        live = live_children(proc.pid)
        print(f"{label:<26} median {statistics.median(times):8.1f} ms   "
              f"min {min(times):8.1f}   max {max(times):8.1f}   "
              f"children after {runs} sessions: {live} (pool minIdle {min_idle})")
        return statistics.median(times)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between sessions")
    a = ap.parse_args()
    if not os.path.exists(BIN) or not os.path.exists(SERVER_JS):
        sys.exit("build first: cargo build --release && tests/peers/setup.sh")
    npx = ["--offline", "--prefix", PEERS, "mcp-server-everything"]
    warm_node = measure("node, warm pool", 1, "node", [SERVER_JS], a.runs, a.settle)
    cold_node = measure("node, cold spawn", 0, "node", [SERVER_JS], a.runs, a.settle)
    warm_npx = measure("npx, warm pool", 1, "npx", npx, a.runs, a.settle)
    cold_npx = measure("npx, cold spawn", 0, "npx", npx, a.runs, a.settle)
    print(f"cold/warm ratio: node {cold_node / warm_node:.1f}x, npx {cold_npx / warm_npx:.1f}x")


if __name__ == "__main__":
    main()
