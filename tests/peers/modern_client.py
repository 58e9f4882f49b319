#!/usr/bin/env python3
"""Official Python MCP SDK 2.x clients speaking 2026-07-28 to ringgate.

Prints ONE JSON object on stdout. Scenarios:
  full     one Client(mode=--mode): protocol version, tools/list, echo, get-sum,
           trigger-long-running-operation with a progress callback, resources/list
           and resources/read of the first resource.
  many     --clients concurrent Client(mode="2026-07-28"), each calling echo
           --calls times with its own messages; reports every call's outcome, so
           the caller can check that no answer crossed and every call came back.
  slow     --clients concurrent clients each calling trigger-long-running-operation
           (--duration, --steps); reports per client whether the call succeeded or
           failed with which error (used while a shared child is killed).
  elicit   one Client(mode=--mode) with an elicitation callback (unless
           --no-elicitation) calls trigger-elicitation-request; reports what the
           callback was asked, the tool's text, and every HTTP exchange (the
           InputRequiredResult round trip is two POSTs of tools/call).
  listen   one Client(mode=--mode) opens client.listen(tools_list_changed=True),
           reports the honored subset (and with --events 1 waits for the first event).
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


def _text(r: types.CallToolResult) -> str:
    return "".join(c.text for c in r.content if isinstance(c, types.TextContent))


def _http(args: argparse.Namespace, rec: list[dict[str, Any]]) -> httpx2.AsyncClient:
    async def on_request(request: httpx2.Request) -> None:
        rec.append({"method": request.method, "headers": {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("mcp")}})

    async def on_response(response: httpx2.Response) -> None:
        rec[-1]["status"] = response.status_code

    kwargs: dict[str, Any] = {
        "timeout": httpx2.Timeout(30, read=args.timeout),
        "event_hooks": {"request": [on_request], "response": [on_response]},
    }
    if args.source_ip:
        kwargs["transport"] = httpx2.AsyncHTTPTransport(local_address=args.source_ip)
    return httpx2.AsyncClient(**kwargs)


def _client(args: argparse.Namespace, http: httpx2.AsyncClient, mode: str, **kw: Any) -> Client:
    return Client(
        streamable_http_client(args.url, http_client=http),
        mode=mode,
        read_timeout_seconds=args.timeout,
        client_info=types.Implementation(name="ringgate-modern-peer", version="1"),
        **kw,
    )


async def elicit(args: argparse.Namespace, out: dict[str, Any]) -> None:
    rec: list[dict[str, Any]] = []
    asked: list[dict[str, Any]] = []

    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        asked.append({"message": getattr(params, "message", None)})
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    kw: dict[str, Any] = {} if args.no_elicitation else {"elicitation_callback": on_elicit}
    async with _http(args, rec) as http:
        async with _client(args, http, args.mode, **kw) as c:
            out["protocol_version"] = c.protocol_version
            out["stage"] = "call"
            try:
                r = await c.call_tool("trigger-elicitation-request", {})
                out["result"] = {"text": _text(r), "is_error": bool(r.is_error)}
            except Exception as e:  # noqa: BLE001
                out["call_error"] = f"{type(e).__name__}: {e}"
            out["stage"] = "done"
    out["asked"] = asked
    out["http"] = rec


async def listen(args: argparse.Namespace, out: dict[str, Any]) -> None:
    rec: list[dict[str, Any]] = []
    async with _http(args, rec) as http:
        async with _client(args, http, args.mode) as c:
            out["stage"] = "listen"
            async with c.listen(tools_list_changed=True) as sub:
                out["honored"] = str(getattr(sub, "honored", None))
                if args.events:
                    out["stage"] = "event"
                    with anyio.fail_after(args.timeout):
                        async for event in sub:
                            out["event"] = type(event).__name__ + ": " + str(event)
                            break
            out["stage"] = "done"
    out["http"] = rec


async def full(args: argparse.Namespace, out: dict[str, Any]) -> None:
    rec: list[dict[str, Any]] = []
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with _http(args, rec) as http:
        async with _client(args, http, args.mode) as c:
            out["protocol_version"] = c.protocol_version
            out["stage"] = "list_tools"
            out["tools"] = [t.name for t in (await c.list_tools()).tools]
            out["stage"] = "echo"
            r = await c.call_tool("echo", {"message": "hello modern"})
            out["echo"] = {"text": _text(r), "is_error": bool(r.is_error)}
            out["stage"] = "get_sum"
            r = await c.call_tool("get-sum", {"a": 2, "b": 3})
            out["get_sum"] = {"text": _text(r), "is_error": bool(r.is_error)}
            out["stage"] = "long_running"
            r = await c.call_tool(
                "trigger-long-running-operation",
                {"duration": args.duration, "steps": args.steps},
                progress_callback=on_progress,
            )
            out["long_running"] = {"is_error": bool(r.is_error), "progress": progress}
            out["stage"] = "resources"
            res = await c.list_resources()
            out["resources"] = [str(x.uri) for x in res.resources]
            if res.resources:
                rr = await c.read_resource(res.resources[0].uri)
                out["read"] = {
                    "uri": str(res.resources[0].uri),
                    "contents": len(rr.contents),
                    "text": getattr(rr.contents[0], "text", None) if rr.contents else None,
                }
            out["stage"] = "done"
    out["http"] = rec
    out["session_ids"] = sorted({e["headers"].get("mcp-session-id") for e in rec} - {None})


async def many(args: argparse.Namespace, out: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = []

    async def one(n: int) -> None:
        rec: list[dict[str, Any]] = []
        try:
            async with _http(args, rec) as http:
                async with _client(args, http, "2026-07-28") as c:
                    for k in range(args.calls):
                        msg = f"client {n} call {k}"
                        try:
                            r = await c.call_tool("echo", {"message": msg})
                            results.append({"client": n, "call": k, "sent": msg, "got": _text(r), "is_error": bool(r.is_error)})
                        except Exception as e:  # noqa: BLE001
                            results.append({"client": n, "call": k, "sent": msg, "error": f"{type(e).__name__}: {e}"})
        except Exception as e:  # noqa: BLE001
            results.append({"client": n, "fatal": f"{type(e).__name__}: {e}"})

    async with anyio.create_task_group() as tg:
        for n in range(args.clients):
            tg.start_soon(one, n)
    out["results"] = results


async def slow(args: argparse.Namespace, out: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = []

    async def one(n: int) -> None:
        rec: list[dict[str, Any]] = []
        progress: list[float] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        try:
            async with _http(args, rec) as http:
                async with _client(args, http, "2026-07-28") as c:
                    try:
                        r = await c.call_tool(
                            "trigger-long-running-operation",
                            {"duration": args.duration, "steps": args.steps},
                            progress_callback=on_progress,
                        )
                        results.append({"client": n, "ok": not r.is_error, "progress": len(progress)})
                    except Exception as e:  # noqa: BLE001
                        results.append({"client": n, "ok": False, "error": f"{type(e).__name__}: {e}", "progress": len(progress)})
        except Exception as e:  # noqa: BLE001
            results.append({"client": n, "ok": False, "fatal": f"{type(e).__name__}: {e}"})

    async with anyio.create_task_group() as tg:
        for n in range(args.clients):
            tg.start_soon(one, n)
    out["results"] = results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--source-ip", default=None)
    p.add_argument("--scenario", choices=("full", "many", "slow", "elicit", "listen"), default="full")
    p.add_argument("--no-elicitation", action="store_true")
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--mode", default="2026-07-28")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--duration", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    out: dict[str, Any] = {"scenario": args.scenario, "mode": args.mode, "errors": []}
    fn = {"full": full, "many": many, "slow": slow, "elicit": elicit, "listen": listen}[args.scenario]
    try:
        anyio.run(fn, args, out)
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001
        out["ok"] = False
        out["errors"].append(f"{type(e).__name__}: {e}")
        out["traceback"] = traceback.format_exc()[-3000:]
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
