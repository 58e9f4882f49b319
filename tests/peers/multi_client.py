#!/usr/bin/env python3
"""Official Python MCP SDK against several targets behind one ringgate route.

Prints ONE JSON object on stdout; exit 0 when every step worked.

    multi_client.py --url URL --scenario two-servers|twins|never|paginate
                    [--mode legacy|auto|2026-07-28] [--source-ip IP]

Scenarios:
  two-servers  targets `everything` (server-everything) and `memory`
               (server-memory): list tools, prompts and resources; call
               everything_echo; create a memory entity and read it back with
               memory_open_nodes; read the first resource by its listed URI.
  twins        targets `a` and `b`, both server-everything, with roots
               declared: a_echo and b_echo, and a_/b_trigger-long-running-operation
               with different step counts and their own progress callbacks, all
               at once; then linger so both children ask roots/list.
  never        prefixMode never over server-everything and server-memory:
               list tools, call `echo` and `read_graph` by their own names.
  paginate     walk every page of resources/list and tools/list (following
               nextCursor, at most 100 pages each): reports every URI and
               tool name in the order served, and the number of pages.

--mode: `legacy` initializes a session, `2026-07-28` speaks the stateless
revision only, `auto` lets the SDK choose (it probes server/discover).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(r: types.CallToolResult) -> str:
    return "".join(c.text for c in r.content if isinstance(c, types.TextContent))


async def run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    roots_asked: list[str] = []
    both_asked = anyio.Event()
    notes: dict[str, int] = {}

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            out["errors"].append(f"transport: {type(message).__name__}: {message}")
            return
        m = getattr(getattr(message, "root", message), "method", type(message).__name__)
        notes[m] = notes.get(m, 0) + 1

    async def list_roots(_ctx: Any) -> types.ListRootsResult:
        roots_asked.append("roots/list")
        if len(roots_asked) >= 2:
            both_asked.set()
        return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/ringgate-multi", name="multi")])

    kwargs: dict[str, Any] = {"timeout": httpx2.Timeout(5.0, read=args.timeout)}
    if args.source_ip:
        kwargs["transport"] = httpx2.AsyncHTTPTransport(local_address=args.source_ip)
    async with httpx2.AsyncClient(**kwargs) as http:
        client = Client(
            streamable_http_client(args.url, http_client=http),
            mode=args.mode,
            read_timeout_seconds=args.timeout,
            message_handler=on_message,
            list_roots_callback=list_roots if args.scenario == "twins" else None,
            client_info=types.Implementation(name="ringgate-multi-peer", version="1"),
        )
        out["stage"] = "initialize"
        await client.__aenter__()
        try:
            info = client.server_info
            out["server"] = info.name if info else None
            out["protocol_version"] = client.protocol_version
            out["stage"] = "list_tools"
            out["tools"] = [t.name for t in (await client.list_tools()).tools]
            if args.scenario == "two-servers":
                out["stage"] = "list_prompts"
                out["prompts"] = [p.name for p in (await client.list_prompts()).prompts]
                out["stage"] = "list_resources"
                resources = (await client.list_resources()).resources
                out["resources"] = [str(r.uri) for r in resources]
                out["stage"] = "echo"
                r = await client.call_tool("everything_echo", {"message": "hi everything"})
                out["echo"] = text_of(r)
                out["stage"] = "create"
                entity = {"name": "ringgate", "entityType": "proxy", "observations": ["multiplexes"]}
                r = await client.call_tool("memory_create_entities", {"entities": [entity]})
                out["created"] = {"text": text_of(r), "is_error": bool(r.is_error)}
                out["stage"] = "read back"
                r = await client.call_tool("memory_open_nodes", {"names": ["ringgate"]})
                out["read_back"] = {"text": text_of(r), "is_error": bool(r.is_error)}
                if resources:
                    out["stage"] = "read resource"
                    rr = await client.read_resource(resources[0].uri)
                    out["resource_read"] = len(rr.contents)
                    out["resource_read_uri"] = str(rr.contents[0].uri)
            if args.scenario == "twins":
                progress: dict[str, list[float]] = {"a": [], "b": []}
                texts: dict[str, str] = {}

                def on_progress(who: str):
                    async def cb(p: float, _total: float | None, _msg: str | None) -> None:
                        progress[who].append(p)

                    return cb

                async def long(who: str, steps: int) -> None:
                    r = await client.call_tool(
                        f"{who}_trigger-long-running-operation",
                        {"duration": args.duration, "steps": steps},
                        progress_callback=on_progress(who),
                    )
                    texts[f"{who}_long"] = text_of(r)

                async def echo(who: str) -> None:
                    r = await client.call_tool(f"{who}_echo", {"message": f"from {who}"})
                    texts[f"{who}_echo"] = text_of(r)

                out["stage"] = "concurrent calls"
                async with anyio.create_task_group() as tg:
                    tg.start_soon(long, "a", 3)
                    tg.start_soon(long, "b", 5)
                    for _ in range(3):
                        tg.start_soon(echo, "a")
                        tg.start_soon(echo, "b")
                out["texts"] = texts
                out["progress"] = progress
                out["stage"] = "linger"
                # Both children ask for roots after notifications/initialized;
                # wait for the second request (bounded).
                with anyio.move_on_after(args.linger):
                    await both_asked.wait()
            if args.scenario == "paginate":
                for what in ("resources", "tools"):
                    out["stage"] = f"paginate {what}"
                    items: list[str] = []
                    pages, cursor = 0, None
                    while pages < 100:
                        if what == "resources":
                            r = await client.list_resources(cursor=cursor)
                            items += [str(x.uri) for x in r.resources]
                        else:
                            r = await client.list_tools(cursor=cursor)
                            items += [x.name for x in r.tools]
                        pages += 1
                        cursor = r.next_cursor
                        if not cursor:
                            break
                    out[f"{what}_all"] = items
                    out[f"{what}_pages"] = pages
            if args.scenario == "never":
                out["stage"] = "echo"
                out["echo"] = text_of(await client.call_tool("echo", {"message": "unprefixed"}))
                out["stage"] = "read_graph"
                r = await client.call_tool("read_graph", {})
                out["read_graph"] = {"text": text_of(r), "is_error": bool(r.is_error)}
        finally:
            out["stage"] = "close"
            await client.__aexit__(None, None, None)
    out["roots_asked"] = len(roots_asked)
    out["notifications"] = notes
    out["stage"] = "done"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--scenario", required=True, choices=("two-servers", "twins", "never", "paginate"))
    p.add_argument("--source-ip", default=None)
    p.add_argument("--mode", default="legacy", choices=("legacy", "auto", "2026-07-28"))
    p.add_argument("--duration", type=float, default=0.5)
    p.add_argument("--linger", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    out: dict[str, Any] = {"ok": False, "scenario": args.scenario, "stage": "start", "errors": []}

    async def bounded() -> None:
        with anyio.fail_after(args.timeout * 2):
            await run(args, out)

    try:
        anyio.run(bounded)
    except BaseException as exc:  # noqa: BLE001 - reported in the JSON
        out["errors"].append(f"{type(exc).__name__}: {exc}")
        out["traceback"] = traceback.format_exception(exc)[-6:]
    out["ok"] = not out["errors"]
    sys.stdout.write(json.dumps(out, separators=(",", ":")) + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
