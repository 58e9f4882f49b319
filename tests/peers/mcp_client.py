#!/usr/bin/env python3
"""Real MCP streamable-HTTP client for ringgate's end-to-end tests.

Drives the official Python `mcp` SDK (pinned in requirements.txt) against a URL
and prints exactly ONE JSON object on stdout describing what happened. Exit code
0 when every step succeeded, 1 otherwise (the error is in the JSON), 2 on bad
arguments.

    tests/peers/.venv/bin/python tests/peers/mcp_client.py --url http://127.0.0.1:PORT/mcp
        [--scenario full|initialize-only|raw-session] [--source-ip 127.0.0.2] [--mode auto|legacy]

Scenarios:
  full             initialize, tools/list, echo, get-sum, trigger-long-running-operation
                   (with a progress callback), then close (the SDK sends DELETE).
  initialize-only  initialize, then close; for latency measurement.
  raw-session      initialize and print the session id; the session is NOT deleted
                   (terminate_on_close=False) so the caller can reuse the id with raw
                   HTTP requests.
  authz            initialize, tools/list, prompts/list, resources/list, then call every
                   tool named in --try-tools (echo, get-sum or any tool taking no
                   arguments) and record for each whether it worked or the JSON-RPC
                   error code it got; then close. Refusals are results, not errors.

Everything is bounded by --timeout (whole run) and per-call read timeouts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

SCENARIOS = ("full", "initialize-only", "raw-session", "authz")
# Request headers worth asserting on in the proxy's tests.
INTERESTING_REQ_HEADERS = (
    "accept",
    "content-type",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "last-event-id",
    "cache-control",
    "origin",
    "connection",
)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _flatten(exc: BaseException) -> list[str]:
    """Readable messages of an exception, unwrapping anyio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[str] = []
        for sub in exc.exceptions:
            out.extend(_flatten(sub))
        return out
    if isinstance(exc, TimeoutError):
        return [f"TimeoutError: {str(exc) or 'deadline exceeded'}"]
    return [f"{type(exc).__name__}: {exc}"]


class HttpRecorder:
    """httpx2 event hooks: one record per HTTP exchange, in request order."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.session_ids: list[str] = []

    async def on_request(self, request: httpx2.Request) -> None:
        rpc: Any = None
        if request.method == "POST":
            try:
                body = json.loads(request.content or b"null")
                if isinstance(body, dict):
                    rpc = body.get("method") or ("response" if "result" in body or "error" in body else None)
                elif isinstance(body, list):
                    rpc = [m.get("method") for m in body if isinstance(m, dict)]
            except (ValueError, httpx2.RequestNotRead):
                rpc = "?"
        rec = {
            "method": request.method,
            "rpc": rpc,
            "req_headers": {k: v for k, v in request.headers.items() if k.lower() in INTERESTING_REQ_HEADERS},
            "status": None,
        }
        request.extensions["ringgate_rec"] = rec
        self.exchanges.append(rec)

    async def on_response(self, response: httpx2.Response) -> None:
        rec = response.request.extensions.get("ringgate_rec")
        if rec is None:  # pragma: no cover - every request passes on_request first
            return
        rec["status"] = response.status_code
        rec["content_type"] = response.headers.get("content-type")
        sid = response.headers.get("mcp-session-id")
        if sid:
            rec["resp_session_id"] = sid
            if sid not in self.session_ids:
                self.session_ids.append(sid)
        stream = response.extensions.get("network_stream")
        if stream is not None:
            try:
                addr = stream.get_extra_info("client_addr")
                if addr:
                    rec["local_addr"] = f"{addr[0]}:{addr[1]}"
            except Exception:  # noqa: BLE001 - diagnostics only
                pass

    def summary(self) -> dict[str, Any]:
        locals_ = [e["local_addr"] for e in self.exchanges if "local_addr" in e]
        deletes = [e for e in self.exchanges if e["method"] == "DELETE"]
        gets = [e for e in self.exchanges if e["method"] == "GET"]
        return {
            "http": self.exchanges,
            "tcp_connections": len(set(locals_)),
            "local_ips": sorted({a.rsplit(":", 1)[0] for a in locals_}),
            "get_stream_opened": any(g["status"] == 200 for g in gets),
            "delete_sent": bool(deletes),
            "delete_status": deletes[-1]["status"] if deletes else None,
        }


def build_http_client(args: argparse.Namespace, rec: HttpRecorder) -> httpx2.AsyncClient:
    # Same timeouts shape as the SDK's create_mcp_http_client, but bounded for tests.
    timeout = httpx2.Timeout(args.http_timeout, read=args.timeout)
    kwargs: dict[str, Any] = {
        "timeout": timeout,
        "event_hooks": {"request": [rec.on_request], "response": [rec.on_response]},
    }
    if args.source_ip:
        kwargs["transport"] = httpx2.AsyncHTTPTransport(local_address=args.source_ip)
    return httpx2.AsyncClient(**kwargs)


async def run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    rec = HttpRecorder()
    out["_rec"] = rec
    timings: dict[str, float] = out["timings_ms"]
    notifications: dict[str, int] = out["notifications"]
    server_requests: dict[str, int] = out["server_requests"]
    progress_events: list[dict[str, Any]] = []

    async def message_handler(message: Any) -> None:
        if isinstance(message, Exception):
            out["errors"].append(f"transport: {type(message).__name__}: {message}")
            return
        method = getattr(getattr(message, "root", message), "method", type(message).__name__)
        notifications[method] = notifications.get(method, 0) + 1

    async def list_roots(_ctx: Any) -> types.ListRootsResult:
        server_requests["roots/list"] = server_requests.get("roots/list", 0) + 1
        return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/ringgate-peer", name="peer")])

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progress_events.append({"progress": progress, "total": total, "message": message})

    t_total = time.perf_counter()
    async with build_http_client(args, rec) as http:
        transport = streamable_http_client(
            args.url,
            http_client=http,
            terminate_on_close=args.scenario != "raw-session",
        )
        client = Client(
            transport,
            mode=args.mode,
            read_timeout_seconds=args.call_timeout,
            message_handler=message_handler,
            list_roots_callback=list_roots if args.roots else None,
            client_info=types.Implementation(name="ringgate-e2e-peer", version="1"),
        )
        out["stage"] = "initialize"
        t0 = time.perf_counter()
        await client.__aenter__()
        try:
            timings["initialize"] = _ms(t0)
            out["protocol_version"] = client.protocol_version
            info = client.server_info
            if info is not None:
                out["server"] = {"name": info.name, "version": info.version, "title": getattr(info, "title", None)}
            out["session_id"] = rec.session_ids[0] if rec.session_ids else None

            if args.scenario == "full":
                out["stage"] = "list_tools"
                t0 = time.perf_counter()
                tools = await client.list_tools()
                timings["list_tools"] = _ms(t0)
                out["tools"] = [t.name for t in tools.tools]

                out["stage"] = "echo"
                t0 = time.perf_counter()
                r = await client.call_tool("echo", {"message": args.message})
                timings["echo"] = _ms(t0)
                out["echo"] = {"text": _text_of(r), "is_error": bool(r.is_error)}

                out["stage"] = "get_sum"
                t0 = time.perf_counter()
                r = await client.call_tool("get-sum", {"a": args.a, "b": args.b})
                timings["get_sum"] = _ms(t0)
                out["get_sum"] = {"text": _text_of(r), "is_error": bool(r.is_error)}

                out["stage"] = "long_running"
                t0 = time.perf_counter()
                r = await client.call_tool(
                    "trigger-long-running-operation",
                    {"duration": args.duration, "steps": args.steps},
                    progress_callback=on_progress,
                )
                timings["long_running"] = _ms(t0)
                out["long_running"] = {
                    "text": _text_of(r),
                    "is_error": bool(r.is_error),
                    "steps": args.steps,
                    "duration_s": args.duration,
                    "progress_notifications": len(progress_events),
                    "progress": progress_events,
                }
                for key in ("echo", "get_sum", "long_running"):
                    if out[key]["is_error"]:
                        out["errors"].append(f"{key}: tool returned isError: {out[key]['text']}")
            if args.scenario == "authz":
                out["stage"] = "list_tools"
                out["tools"] = [t.name for t in (await client.list_tools()).tools]
                out["stage"] = "list_prompts"
                out["prompts"] = [p.name for p in (await client.list_prompts()).prompts]
                out["stage"] = "list_resources"
                out["resources"] = [r.uri for r in (await client.list_resources()).resources]
                out["calls"] = {}
                for name in [t for t in args.try_tools.split(",") if t]:
                    out["stage"] = f"call {name}"
                    arguments = {"echo": {"message": args.message}, "get-sum": {"a": args.a, "b": args.b}}
                    try:
                        r = await client.call_tool(name, arguments.get(name, {}))
                        out["calls"][name] = {"ok": not r.is_error, "text": _text_of(r)}
                    except Exception as exc:  # noqa: BLE001 - a refusal is the result
                        error = getattr(exc, "error", None)
                        out["calls"][name] = {
                            "ok": False,
                            "code": getattr(error, "code", None),
                            "message": getattr(error, "message", str(exc)),
                            "exception": type(exc).__name__,
                        }
            if args.linger > 0:
                out["stage"] = "linger"
                await anyio.sleep(args.linger)
        except BaseException:
            out.setdefault("failed_stage", out["stage"])
            raise
        finally:
            out["stage"] = "close"
            t0 = time.perf_counter()
            # Closing runs the transport's finally: DELETE (unless raw-session), then cancel GET.
            await client.__aexit__(None, None, None)
            timings["close"] = _ms(t0)
    timings["total"] = _ms(t_total)
    out["stage"] = "done"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    p.add_argument("--scenario", default="full", choices=SCENARIOS)
    p.add_argument("--source-ip", default=None, help="local address to connect from (e.g. 127.0.0.2)")
    p.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "legacy"),
        help="SDK negotiation: auto (SDK default: server/discover probe, then initialize) or legacy (initialize only)",
    )
    p.add_argument(
        "--roots",
        action="store_true",
        help="declare the roots capability and answer roots/list (server-everything asks "
        "~350 ms after notifications/initialized: add --linger 1 to short runs)",
    )
    p.add_argument("--linger", type=float, default=0.0, help="seconds to stay connected before closing")
    p.add_argument("--message", default="hello from ringgate e2e")
    p.add_argument("--try-tools", default="", help="authz scenario: comma-separated tools to call")
    p.add_argument("--a", type=float, default=2)
    p.add_argument("--b", type=float, default=3)
    p.add_argument("--duration", type=float, default=0.5, help="long-running op duration (s)")
    p.add_argument("--steps", type=int, default=5, help="long-running op steps (= progress notifications)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline for the whole run (s)")
    p.add_argument("--call-timeout", type=float, default=15.0, help="read timeout of each MCP request (s)")
    p.add_argument("--http-timeout", type=float, default=5.0, help="connect/write/pool timeout (s)")
    args = p.parse_args()
    # Integral numbers keep get-sum's text stable ("The sum of 2 and 3 is 5.").
    args.a = int(args.a) if float(args.a).is_integer() else args.a
    args.b = int(args.b) if float(args.b).is_integer() else args.b

    out: dict[str, Any] = {
        "ok": False,
        "scenario": args.scenario,
        "url": args.url,
        "mode": args.mode,
        "source_ip": args.source_ip,
        "server": None,
        "protocol_version": None,
        "session_id": None,
        "tools": None,
        "echo": None,
        "get_sum": None,
        "long_running": None,
        "notifications": {},
        "server_requests": {},
        "timings_ms": {},
        "stage": "start",
        "errors": [],
    }

    async def bounded() -> None:
        with anyio.fail_after(args.timeout):
            await run(args, out)

    try:
        anyio.run(bounded)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported in the JSON
        if isinstance(exc, KeyboardInterrupt):
            out["errors"].append("interrupted")
        else:
            out["errors"].extend(_flatten(exc))
            out["traceback"] = traceback.format_exception(exc)[-6:]

    rec: HttpRecorder | None = out.pop("_rec", None)
    if rec is not None:
        out.update(rec.summary())
        if out["session_id"] is None and rec.session_ids:
            out["session_id"] = rec.session_ids[0]
    out["ok"] = not out["errors"]
    if not out["ok"]:
        # Where it failed: the step that was running when the error hit.
        out.setdefault("failed_stage", out["stage"])

    if args.scenario == "raw-session":
        out = {k: out.get(k) for k in ("ok", "scenario", "session_id", "protocol_version", "errors", "timings_ms")}

    sys.stdout.write(json.dumps(out, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
