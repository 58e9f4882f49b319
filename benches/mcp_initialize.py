#!/usr/bin/env python3
"""initialize latency through ringgate: warm pool versus cold spawn.

Starts ringgate (release build) on loopback with server-everything as the
stdio child, once with `minIdle: 1` (a child is spawned ahead of demand) and
once with `minIdle: 0` (every initialize spawns its child), for `node` and
for `npx` as the command. For each it opens and closes N sessions with raw
HTTP and prints the median and spread of the initialize round trip, then the
live child count after all sessions were closed.

With `--burst`, it measures bursts instead (issue #16): N concurrent
initializes (N = 1, 4, 16) against server-everything run by node, with two
workers, each burst repeated `--rounds` times `--burst-settle` seconds apart; it
prints p50 / p99 of the initialize round trip, and the most live children
seen right after a burst. Configurations: `minIdle: 2` (what the old
per-worker `minIdle: 1` kept with two workers) and `minIdle: 16` (a user
expecting bursts of 16).

    cargo build --release && tests/peers/setup.sh
    python3 benches/mcp_initialize.py [--runs 7]
    python3 benches/mcp_initialize.py --burst [--rounds 3]
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
import threading
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


def start(min_idle, cmd, args, workers=1):
    cfg = f"""
config:
  workerThreads: {workers}
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


def open_session(port):
    """initialize; (milliseconds, session id)."""
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
    return ms, sid


def close_session(port, sid):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid})
    c.getresponse().read()
    c.close()


def one_session(port):
    ms, sid = open_session(port)
    close_session(port, sid)
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


def percentile(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def burst(label, min_idle, n, rounds, settle):
    proc, port, cfg = start(min_idle, "node", [SERVER_JS], workers=2)
    try:
        time.sleep(settle)  # let the warm pool fill
        times, live_after, rounds_p50 = [], [], []
        for _ in range(rounds):
            out = [None] * n

            def run(i):
                out[i] = open_session(port)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(o is None for o in out):
                raise RuntimeError("an initialize failed")
            times += [ms for ms, _ in out]
            rounds_p50.append(round(statistics.median(ms for ms, _ in out)))
            live_after.append(live_children(proc.pid))
            for _, sid in out:
                close_session(port, sid)
            time.sleep(settle)  # sessions stopped, pool refilled
        print(f"{label:<30} N={n:<3} p50 {percentile(times, 50):8.1f} ms   "
              f"p99 {percentile(times, 99):8.1f} ms   "
              f"p50 by round {rounds_p50}   live children after each burst: {live_after}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between sessions")
    ap.add_argument("--burst", action="store_true", help="concurrent initializes instead")
    ap.add_argument("--rounds", type=int, default=3, help="bursts per configuration")
    ap.add_argument("--burst-settle", type=float, default=10.0,
                    help="seconds for the pool to (re)fill and its node children to start")
    a = ap.parse_args()
    if not os.path.exists(BIN) or not os.path.exists(SERVER_JS):
        sys.exit("build first: cargo build --release && tests/peers/setup.sh")
    if a.burst:
        for n in (1, 4, 16):
            burst("minIdle 2 (old 1 per worker)", 2, n, a.rounds, a.burst_settle)
        burst("minIdle 16", 16, 16, a.rounds, a.burst_settle)
        return
    npx = ["--offline", "--prefix", PEERS, "mcp-server-everything"]
    warm_node = measure("node, warm pool", 1, "node", [SERVER_JS], a.runs, a.settle)
    cold_node = measure("node, cold spawn", 0, "node", [SERVER_JS], a.runs, a.settle)
    warm_npx = measure("npx, warm pool", 1, "npx", npx, a.runs, a.settle)
    cold_npx = measure("npx, cold spawn", 0, "npx", npx, a.runs, a.settle)
    print(f"cold/warm ratio: node {cold_node / warm_node:.1f}x, npx {cold_npx / warm_npx:.1f}x")


if __name__ == "__main__":
    main()
