#!/usr/bin/env bash
# Installs ringgate's real end-to-end test peers, idempotently:
#   - tests/peers/node_modules  via `npm ci` (server-everything, pinned by package-lock.json)
#   - tests/peers/.venv         Python venv with requirements.txt (the official `mcp` SDK)
# Skips each part when it is already up to date (stamps hold the hash of the inputs).
# Needs: node >= 20 + npm, python3 >= 3.10. On Debian, installs python3-venv with
# apt-get when `python3 -m venv` cannot bootstrap pip (run as root).
# Prints one line on success; on failure prints the failing step's log to stderr.
# Env: PYTHON (default python3), PEERS_FORCE=1 to reinstall both parts.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
LOG="$(mktemp -t ringgate-peers-setup.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
START=$(date +%s)

fail() {
  echo "tests/peers/setup.sh: $1" >&2
  [ -s "$LOG" ] && tail -n 60 "$LOG" >&2
  exit 1
}

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Serialize concurrent runs (parallel test binaries may all call this).
exec 9>"$DIR/.setup.lock"
flock -w 900 9 || fail "timed out waiting for another setup.sh run"

# ---------------------------------------------------------------- node peer
command -v node >/dev/null || fail "node not found (need Node >= 20)"
command -v npm >/dev/null || fail "npm not found"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || fail "Node $(node --version) is too old (need >= 20)"

SERVER_JS="$DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
NPM_STAMP="$DIR/node_modules/.ringgate-setup.sha256"
NPM_WANT="$(hash_of "$DIR/package.json" "$DIR/package-lock.json")-node$NODE_MAJOR"
if [ -z "${PEERS_FORCE:-}" ] && [ -f "$SERVER_JS" ] && [ "$(cat "$NPM_STAMP" 2>/dev/null)" = "$NPM_WANT" ]; then
  NPM_DID="node_modules up to date"
else
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$LOG" 2>&1 || fail "npm ci failed"
  [ -f "$SERVER_JS" ] || fail "npm ci did not install $SERVER_JS"
  echo "$NPM_WANT" >"$NPM_STAMP"
  NPM_DID="npm ci done"
fi
SE_VERSION=$(node -p "require('$DIR/node_modules/@modelcontextprotocol/server-everything/package.json').version")

# -------------------------------------------------------------- python peer
command -v "$PY" >/dev/null || fail "$PY not found (need Python >= 3.10)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "$("$PY" --version 2>&1) is too old (need >= 3.10)"
VENV="$DIR/.venv"
VENV_STAMP="$VENV/.ringgate-setup.sha256"
VENV_WANT="$(hash_of "$DIR/requirements.txt")-$("$PY" -c 'import sys; print(sys.version.split()[0])')"

venv_ok() {
  [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV_STAMP" 2>/dev/null)" = "$VENV_WANT" ] \
    && "$VENV/bin/python" -c 'import mcp, httpx2, anyio' >/dev/null 2>&1
}

make_venv() {
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" >>"$LOG" 2>&1
}

if [ -z "${PEERS_FORCE:-}" ] && venv_ok; then
  VENV_DID="venv up to date"
else
  VENV_DID="venv built"
  if ! make_venv; then
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) separately.
    command -v apt-get >/dev/null || fail "python3 -m venv failed and apt-get is not available"
    PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python$PYVER-venv" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    } >>"$LOG" 2>&1 || fail "apt-get install python3-venv failed"
    make_venv || fail "python3 -m venv failed even after installing python3-venv"
    VENV_DID="python3-venv installed, venv built"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
    -r "$DIR/requirements.txt" >>"$LOG" 2>&1 || fail "pip install -r requirements.txt failed"
  "$VENV/bin/python" -c 'import mcp, httpx2, anyio' >>"$LOG" 2>&1 || fail "venv cannot import the mcp SDK"
  echo "$VENV_WANT" >"$VENV_STAMP"
fi
MCP_VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))')

echo "tests/peers: $NPM_DID (server-everything $SE_VERSION), $VENV_DID (mcp $MCP_VERSION) in $(( $(date +%s) - START ))s"
