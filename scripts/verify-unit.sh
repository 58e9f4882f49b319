#!/usr/bin/env bash
# Checks config/ringgate.service with `systemd-analyze verify`, then scores its
# sandbox with `systemd-analyze security --offline`. Exits non-zero on any
# problem. Works without systemd as PID 1 (CI containers), and installs
# systemd's tools with apt-get when `systemd-analyze` is missing.
#
#   scripts/verify-unit.sh [UNIT_FILE]
#
# Environment:
#   RINGGATE_UNIT_MAX_EXPOSURE  highest accepted overall exposure score
#                               (default 2.0; the unit scores 1.1 with systemd 252)
#
# How it works without a running systemd. `systemd-analyze verify` loads the
# unit in a private, offline manager; nothing talks to PID 1. Two things still
# depend on the machine it runs on:
#  - it fails when an Exec*= command does not exist or is not executable, and
#    /usr/local/bin/ringgate is not installed on a build machine;
#  - it resolves the unit's default dependencies (sysinit.target, ...) from
#    the unit directories.
# So it runs with --root=SCRATCH: a temporary tree holding a copy of the
# distribution's unit directory, the unit file (copied unchanged to
# /etc/systemd/system, where --root looks for it: with --root, a unit file
# outside the tree is "not found") and an executable stub at the path of every
# Exec*= command. Nothing is installed outside the scratch tree.
#
# `systemd-analyze verify` exits 0 even when it ignores a line it cannot parse
# (an unknown key, a bad value); it only prints a warning. Any output counts
# as a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=${1:-config/ringgate.service}
max_exposure=${RINGGATE_UNIT_MAX_EXPOSURE:-2.0}

if [[ ! -f $unit ]]; then
    echo "verify-unit: no such file: $unit" >&2
    exit 1
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-unit: systemd-analyze not found; installing the systemd package"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends systemd
fi
echo "verify-unit: $(systemd-analyze --version | head -n1)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The distribution's units, for the default dependencies. /lib is often a
# symlink to /usr/lib; copy each real directory once.
copied=""
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    [[ -d $dir ]] || continue
    real=$(readlink -f "$dir")
    case " $copied " in *" $real "*) continue ;; esac
    mkdir -p "$scratch$dir"
    cp -a "$real/." "$scratch$dir/"
    copied="$copied $real"
done
if [[ -z $copied ]]; then
    echo "verify-unit: no systemd unit directory found (is the systemd package installed?)" >&2
    exit 1
fi

# A stub for each Exec*= command. Prefixes such as "-" or "+" are not part of
# the path; a bare name is looked up by systemd in /usr/bin and friends.
stubs=()
while IFS= read -r cmd; do
    cmd=${cmd#"${cmd%%[!-@:+!]*}"}
    [[ -n $cmd ]] || continue
    [[ $cmd == /* ]] || cmd=/usr/bin/$cmd
    mkdir -p "$scratch$(dirname "$cmd")"
    printf '#!/bin/sh\nexit 0\n' >"$scratch$cmd"
    chmod 0755 "$scratch$cmd"
    stubs+=("$cmd")
done < <(sed -nE 's/^[[:space:]]*Exec[A-Za-z]*=[[:space:]]*([^[:space:]]+).*/\1/p' "$unit" | sort -u)
echo "verify-unit: stubs in the scratch root: ${stubs[*]:-none}"

name=$(basename "$unit")
mkdir -p "$scratch/etc/systemd/system"
cp "$unit" "$scratch/etc/systemd/system/$name"
copy=$scratch/etc/systemd/system/$name
# Diagnostics name the copy; show the file they are about.
shown() { sed -e "s|$copy|$unit|g" -e "s|$scratch|SCRATCH|g"; }

status=0

echo "verify-unit: systemd-analyze verify --root=SCRATCH --man=no $unit"
set +e
out=$(systemd-analyze verify --root="$scratch" --man=no "$copy" 2>&1)
rc=$?
set -e
if [[ $rc -ne 0 || -n $out ]]; then
    printf '%s\n' "$out" | shown
    echo "verify-unit: FAIL: systemd-analyze verify (exit $rc, $(printf '%s\n' "$out" | grep -c .) line(s) of diagnostics)" >&2
    status=1
else
    echo "verify-unit: verify OK (no diagnostics)"
fi

# `security --offline` and `--threshold` exist since systemd 250.
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    echo "verify-unit: systemd-analyze security --offline=yes --root=SCRATCH $unit"
    set +e
    report=$(systemd-analyze security --offline=yes --root="$scratch" --no-pager \
        "$copy" 2>&1)
    rc=$?
    set -e
    # The settings that add to the score, then the total.
    printf '%s\n' "$report" | grep -E '^✗|Overall exposure' | shown || true
    score=$(printf '%s\n' "$report" | sed -nE 's/.*Overall exposure level for [^:]*: ([0-9.]+).*/\1/p')
    if [[ $rc -ne 0 || -z $score ]]; then
        printf '%s\n' "$report" | tail -n 5 | shown >&2
        echo "verify-unit: FAIL: systemd-analyze security (exit $rc)" >&2
        status=1
    elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
        echo "verify-unit: FAIL: exposure $score is above $max_exposure" >&2
        status=1
    else
        echo "verify-unit: exposure $score (limit $max_exposure)"
    fi
else
    echo "verify-unit: this systemd-analyze has no 'security --offline'; skipping the score"
fi

exit $status
