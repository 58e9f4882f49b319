#!/usr/bin/env python3
"""A deliberately broken stdio MCP server for ringgate's fault tests
(tests/child_faults.rs). Standard library only.

Usage: fault_server.py MODE

It answers `initialize`, accepts notifications, and answers `tools/call` of
the tool `ok` normally (the text "ok:" plus the `message` argument). Any
other `tools/call` meets the fault of MODE:

  crash         exits with status 3 at once, without answering
  hang          never answers (keeps reading stdin); the tool `late` is
                answered after `delay` seconds instead, during which the
                server reads nothing (a child slow to take its input); it
                says `fault-server: late for <delay> s` on stderr first
  garbage       writes a line that is not JSON
  endless       writes one line that never ends (64 KiB blocks, no newline)
  stderr-flood  answers, but from start-up floods stderr without pause
  ignore-term   answers; ignores SIGTERM and stays alive after stdin EOF

Every `notifications/cancelled` it receives is reported on stderr as
`fault-server: cancelled <requestId>` so the proxy's log shows it.
"""

import json
import os
import signal
import sys
import threading
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "hang"
OUT = sys.stdout.buffer


def send(obj):
    OUT.write(json.dumps(obj).encode() + b"\n")
    OUT.flush()


def log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def flood():
    n = 0
    while True:
        n += 1
        try:
            sys.stderr.write(f"fault-server: stderr flood line {n} " + "e" * 100 + "\n")
            if n % 64 == 0:
                sys.stderr.flush()
        except OSError:
            return


def text_result(rid, text):
    send({"jsonrpc": "2.0", "id": rid,
          "result": {"content": [{"type": "text", "text": text}]}})


def main():
    if MODE == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "stderr-flood":
        threading.Thread(target=flood, daemon=True).start()
    log(f"fault-server: mode {MODE} pid {os.getpid()}")
    for raw in sys.stdin.buffer:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        method = msg.get("method")
        rid = msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": f"fault-{MODE}", "version": "1"}}})
        elif method == "notifications/cancelled":
            log(f"fault-server: cancelled {json.dumps(params.get('requestId'))}")
        elif method == "tools/call":
            name = params.get("name")
            args = params.get("arguments") or {}
            if name == "ok":
                text_result(rid, "ok:" + str(args.get("message", "")))
            elif MODE == "crash":
                os._exit(3)
            elif MODE == "hang" and name == "late":
                delay = float(args.get("delay", 1))
                log(f"fault-server: late for {delay:g} s")
                time.sleep(delay)
                text_result(rid, "late")
            elif MODE == "hang":
                log(f"fault-server: hanging on request {json.dumps(rid)}")
            elif MODE == "garbage":
                OUT.write(b"this is not JSON-RPC at all\n")
                OUT.flush()
            elif MODE == "endless":
                block = b"x" * 65536
                while True:
                    OUT.write(block)
                    OUT.flush()
            else:
                text_result(rid, "ok:" + str(args.get("message", "")))
        elif rid is not None and method is not None:
            send({"jsonrpc": "2.0", "id": rid,
                  "error": {"code": -32601, "message": "Method not found"}})
    if MODE == "ignore-term":
        # Stdin closed: a well-behaved server would exit now.
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
