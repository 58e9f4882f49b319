#!/usr/bin/env python3
"""A stdio MCP server whose lists come in pages, for ringgate's merged-list
pagination tests (tests/modern_multi.rs): server-everything and
server-memory answer every list in one page, so they cannot show that a
merged list loses no page. Standard library only, so the pages are exactly
what the tests say.

    paging_server.py [--resources N] [--tools N] [--page K]

- `resources/list`: N resources `page://item/<i>` (i = 0..N-1), K per page;
  the cursor is the opaque string `after-<i>` (the next index).
- `tools/list`: N tools `tool<i>`, max(1, K/4) per page, the same cursors.
- `resources/read` of `page://item/<i>` answers the text `item <i>`;
  `tools/call` of `tool<i>` answers `tool <i>`.
- A cursor it did not make gets JSON-RPC -32602; an unknown method -32601.
"""

import argparse
import json
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resources", type=int, default=25)
    p.add_argument("--tools", type=int, default=5)
    p.add_argument("--page", type=int, default=10)
    args = p.parse_args()

    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def page(params, total, size):
        cursor = (params or {}).get("cursor")
        start = 0
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.startswith("after-") or not cursor[6:].isdigit():
                raise ValueError(f"bad cursor {cursor!r}")
            start = int(cursor[6:])
        end = min(total, start + size)
        return range(start, end), (f"after-{end}" if end < total else None)

    def answer(method, params):
        if method == "initialize":
            return {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"resources": {}, "tools": {}},
                "serverInfo": {"name": "paging", "version": "1"},
            }
        if method == "resources/list":
            r, nxt = page(params, args.resources, args.page)
            out = {"resources": [{"uri": f"page://item/{i}", "name": f"item{i}"} for i in r]}
        elif method == "tools/list":
            r, nxt = page(params, args.tools, max(1, args.page // 4))
            out = {"tools": [{"name": f"tool{i}", "inputSchema": {"type": "object"}} for i in r]}
        elif method == "resources/read":
            uri = params["uri"]
            return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": f"item {uri.rsplit('/', 1)[-1]}"}]}
        elif method == "tools/call":
            return {"content": [{"type": "text", "text": f"tool {params['name'][4:]}"}]}
        elif method == "ping":
            return {}
        else:
            raise LookupError(method)
        if nxt is not None:
            out["nextCursor"] = nxt
        return out

    for line in sys.stdin:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if "id" not in m or "method" not in m:
            continue
        try:
            send({"jsonrpc": "2.0", "id": m["id"], "result": answer(m["method"], m.get("params"))})
        except ValueError as e:
            send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32602, "message": str(e)}})
        except LookupError as e:
            send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32601, "message": f"Method not found: {e}"}})


if __name__ == "__main__":
    main()
