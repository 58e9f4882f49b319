#!/usr/bin/env python3
"""Loopback-only logging TCP proxy, for re-checking FACTS.md.

    python3 tap_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT2 --log FILE [--seconds 60]

Logs every connection (id, client port, open/close) and the bytes in both
directions (request heads/bodies in full, response bodies truncated per chunk).
Stops by itself after --seconds. Refuses non-loopback addresses.
"""
import argparse
import asyncio
import ipaddress
import itertools
import time

T0 = time.monotonic()
IDS = itertools.count(1)


def loopback(hostport: str) -> tuple[str, int]:
    host, port = hostport.rsplit(":", 1)
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        raise SystemExit(f"refusing non-loopback address {host}")
    return host.strip("[]"), int(port)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-chunk-log", type=int, default=600)
    a = ap.parse_args()
    lh, lp = loopback(a.listen)
    uh, up = loopback(a.upstream)
    log = open(a.log, "a", buffering=1)

    def w(cid, tag, data=""):
        log.write(f"{(time.monotonic() - T0) * 1000:9.1f}ms c{cid} {tag} {data}\n")

    async def pipe(cid, tag, r, wr, limit):
        try:
            while chunk := await r.read(65536):
                text = chunk.decode("utf-8", "replace")
                w(cid, tag, repr(text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit})"))
                wr.write(chunk)
                await wr.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                wr.write_eof()
            except (OSError, RuntimeError):
                pass

    async def handle(cr, cw):
        cid = next(IDS)
        peer = cw.get_extra_info("peername")
        w(cid, "OPEN", f"from {peer[0]}:{peer[1]}")
        try:
            ur, uw = await asyncio.open_connection(uh, up)
        except OSError as e:
            w(cid, "UPSTREAM-FAIL", str(e))
            cw.close()
            return
        await asyncio.gather(pipe(cid, ">>", cr, uw, 100000), pipe(cid, "<<", ur, cw, a.max_chunk_log))
        w(cid, "CLOSE")
        cw.close()
        uw.close()

    async def run():
        srv = await asyncio.start_server(handle, lh, lp)
        async with srv:
            await asyncio.sleep(a.seconds)

    asyncio.run(run())


if __name__ == "__main__":
    main()
