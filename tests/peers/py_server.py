#!/usr/bin/env python3
"""A stdio MCP server built on the official Python SDK 2.x (`MCPServer`),
for tests/modern_py_child.rs, and the modern client that talks to it through
ringgate.

    py_server.py                       serve on stdio (the child)
    py_server.py client --url URL [--source-ip IP]

The server has one tool, `echo` (`{"message": str}`), answering the text
`Echo: <message>`. Run by ringgate, it is initialized with `initialize`
(the handshake era), and the SDK then refuses any request that carries the
2026-07-28 `_meta` envelope: ringgate must take the envelope out.

The client is `Client(mode="2026-07-28")`: it lists the tools and calls
`echo`, and prints ONE JSON object {ok, protocol_version, tools, echo,
errors}.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any


def serve() -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("py-child")

    @server.tool()
    def echo(message: str) -> str:
        """Echoes the message back."""
        return f"Echo: {message}"

    server.run("stdio")


async def client(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import httpx2
    import mcp_types as types
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    kwargs: dict[str, Any] = {"timeout": httpx2.Timeout(30, read=60)}
    if args.source_ip:
        kwargs["transport"] = httpx2.AsyncHTTPTransport(local_address=args.source_ip)
    async with httpx2.AsyncClient(**kwargs) as http:
        async with Client(
            streamable_http_client(args.url, http_client=http),
            mode="2026-07-28",
            read_timeout_seconds=60,
            client_info=types.Implementation(name="ringgate-py-child-peer", version="1"),
        ) as c:
            out["protocol_version"] = c.protocol_version
            out["stage"] = "list_tools"
            out["tools"] = [t.name for t in (await c.list_tools()).tools]
            out["stage"] = "echo"
            r = await c.call_tool("echo", {"message": "h\u00e9llo child"})
            text = "".join(x.text for x in r.content if isinstance(x, types.TextContent))
            out["echo"] = {"text": text, "is_error": bool(r.is_error)}
            out["stage"] = "done"


def main() -> int:
    if sys.argv[1:2] != ["client"]:
        serve()
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--source-ip", default=None)
    args = p.parse_args(sys.argv[2:])
    out: dict[str, Any] = {"errors": []}
    import anyio

    try:
        anyio.run(client, args, out)
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001
        out["ok"] = False
        out["errors"].append(f"{type(e).__name__}: {e}")
        out["traceback"] = traceback.format_exc()[-3000:]
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
