#!/usr/bin/env python3
"""One MCP session through the official Python `mcp` SDK: an `echo` whose
request is too large for the proxy, then a small `echo` in the same client.

    tests/peers/.venv/bin/python tests/peers/big_echo.py --url http://127.0.0.1:PORT/mcp --size 8388608

Prints ONE JSON object: {"initialized": bool, "big": OUTCOME, "small": OUTCOME,
"errors": [...]}, where OUTCOME is {"ok": true, "text_len": N} or
{"ok": false, "type": exception class, "code": JSON-RPC code or null,
"message": text}. Exit 0 once the JSON is written; the caller judges it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_flatten(sub))
        return out
    return [exc]


def _outcome_of(exc: BaseException) -> dict[str, Any]:
    leaf = _flatten(exc)[0]
    code = leaf.error.code if isinstance(leaf, MCPError) else None
    return {"ok": False, "type": type(leaf).__name__, "code": code, "message": str(leaf)}


async def _echo(client: Client, message: str) -> dict[str, Any]:
    try:
        r = await client.call_tool("echo", {"message": message})
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        return _outcome_of(exc)
    text = "".join(c.text for c in r.content if isinstance(c, types.TextContent))
    return {"ok": not r.is_error, "text_len": len(text), "text": text[:64]}


async def run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    timeout = httpx2.Timeout(5.0, read=args.timeout)
    async with httpx2.AsyncClient(timeout=timeout) as http:
        transport = streamable_http_client(args.url, http_client=http)
        client = Client(transport, mode="legacy", read_timeout_seconds=args.timeout)
        await client.__aenter__()
        try:
            out["initialized"] = True
            out["big"] = await _echo(client, "b" * args.size)
            out["small"] = await _echo(client, "small after big")
        finally:
            await client.__aexit__(None, None, None)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()
    out: dict[str, Any] = {"initialized": False, "big": None, "small": None, "errors": []}

    async def bounded() -> None:
        with anyio.fail_after(args.timeout * 2):
            await run(args, out)

    try:
        anyio.run(bounded)
    except BaseException as exc:  # noqa: BLE001 - every failure goes into the JSON
        out["errors"].extend(f"{type(e).__name__}: {e}" for e in _flatten(exc))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
