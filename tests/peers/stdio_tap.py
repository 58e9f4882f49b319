#!/usr/bin/env python3
"""A stdio tap between ringgate and a stdio MCP server (tests/transparent.rs).

    python3 stdio_tap.py LOG_PREFIX CMD [ARG...]

Runs CMD and copies its stdin and stdout through, byte for byte. Every line
read on stdin is appended to LOG_PREFIX.in before CMD gets it, and every line
CMD writes is appended to LOG_PREFIX.out before ringgate gets it, so once a
client holds an answer both lines are in the logs. Each line goes in with one
write(2) on an O_APPEND file, so taps of several pooled children can share a
prefix. Standard library only.

CMD stays in the tap's process group (ringgate signals the whole group) and
is also killed by the kernel if the tap dies first.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def copy(src, dst, log_path: str, close_dst: bool) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for line in iter(src.readline, b""):
            os.write(log, line if line.endswith(b"\n") else line + b"\n")
            try:
                dst.write(line)
                dst.flush()
            except (BrokenPipeError, ValueError):
                break
    finally:
        os.close(log)
        if close_dst:
            try:
                dst.close()
            except (BrokenPipeError, ValueError):
                pass


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    prefix, cmd = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    # stdin EOF (ringgate closed the session) closes the child's stdin.
    threading.Thread(
        target=copy,
        args=(sys.stdin.buffer, child.stdin, prefix + ".in", True),
        daemon=True,
    ).start()
    copy(child.stdout, sys.stdout.buffer, prefix + ".out", False)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
