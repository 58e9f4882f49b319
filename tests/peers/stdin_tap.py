#!/usr/bin/env python3
"""Stdio MCP server wrapper that records every line the server is sent.

    python3 stdin_tap.py --log-dir DIR -- CMD [ARGS...]

Starts CMD with its stdin and stdout on pipes of their own, and its stderr
shared with this process. (ringgate hands a child one socket as both fd 0 and
fd 1; a server given only the fd 1 end could read from it too, so it never
gets the socket: its stdout is copied to ours by a thread.) Every line read on this process's stdin is appended to
DIR/stdin-<this process's pid>.log (one file per server, so that a test can
tell sessions apart by the pid ringgate logs) and flushed before it is passed
on, so a test that has an answer also has the
line that asked for it. When stdin ends, the server's stdin is closed and its
exit status becomes this process's. SIGTERM and SIGINT are passed on to the
server. Standard library only.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def pump() -> None:
        out = sys.stdout.fileno()
        src = child.stdout.fileno()
        while True:
            chunk = os.read(src, 65536)
            if not chunk:
                break
            while chunk:
                chunk = chunk[os.write(out, chunk):]

    copier = threading.Thread(target=pump, daemon=True)
    copier.start()

    def forward(signum, _frame):
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    path = os.path.join(args.log_dir, f"stdin-{os.getpid()}.log")
    with open(path, "ab", buffering=0) as log:
        for line in sys.stdin.buffer:
            log.write(line)
            try:
                child.stdin.write(line)
                child.stdin.flush()
            except BrokenPipeError:
                break
    try:
        child.stdin.close()
    except BrokenPipeError:
        pass
    code = child.wait()
    copier.join()
    return code


if __name__ == "__main__":
    sys.exit(main())
