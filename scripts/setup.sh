#!/usr/bin/env bash
# Prepare this checkout to run and test sctl. Safe to run again: it only does what is missing.
#
#   bash scripts/setup.sh [dev|run]
#
#   - var/log/   runtime files (supervisord socket and logs, router journal); git-ignored
#   - .venv      python3 >= 3.11 (set $PYTHON to use another interpreter)
#   - pip install -e '.[dev]' (dev, the default: sctl and the test tools; scripts/test.sh) or
#     pip install -e . (run: sctl alone; scripts/run.sh), when pyproject.toml changed since the
#     last install or the installed set is smaller than the one asked for
#   - mosquitto  Debian package (tests start their own brokers; the system service is not started)
#
# Called by scripts/run.sh (run) and scripts/test.sh (dev).
set -euo pipefail

MODE="${1:-dev}"
case "$MODE" in
    dev) EXTRAS='.[dev]' ;;
    run) EXTRAS='.' ;;
    *) printf 'setup: usage: bash scripts/setup.sh [dev|run] (got %s)\n' "$MODE" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command quietly; on failure show the end of its output and stop.
quiet() {
    if ! "$@" >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "failed: $*"
    fi
}

is_root() { [ "$(id -u)" = 0 ]; }

# Root for apt-get: we are root, or sudo works without a password, or there is a terminal for
# sudo to ask on.
can_root() {
    is_root || { command -v sudo >/dev/null && { sudo -n true 2>/dev/null || [ -t 0 ]; }; }
}

# apt-get install without starting any service the packages ship: a temporary
# /usr/sbin/policy-rc.d that says "no" (Debian's protocol; an existing policy file is left alone).
apt_install() {
    local sudo=()
    is_root || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive sh -ec '
        added=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            added=1
        fi
        trap "[ -z \"\$added\" ] || rm -f /usr/sbin/policy-rc.d" EXIT
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "$@"
    ' apt_install "$@"
}

mkdir -p "$ROOT/var/log"

# Serialise concurrent runs (run.sh and test.sh started together on a fresh clone).
if command -v flock >/dev/null; then
    exec 9>"$ROOT/var/.setup.lock"
    flock 9
fi

# --- Python ---------------------------------------------------------------------------------------
command -v "$PY" >/dev/null \
    || die "$PY not found. Install Python >= 3.11 (Debian: apt-get install -y python3 python3-venv)"
ver="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "sctl needs Python >= 3.11, but $PY is $ver ($(command -v "$PY")). Install a newer" \
           "Python and run again with PYTHON=/path/to/python3.11-or-later"

# An existing .venv is kept when its interpreter works and is new enough.
if [ -e "$ROOT/.venv" ] && ! "$ROOT/.venv/bin/python" -c \
        'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "removing unusable .venv"
    rm -rf "$ROOT/.venv"
fi

if [ ! -x "$ROOT/.venv/bin/python" ]; then
    # Debian ships venv's ensurepip separately (python3-venv): check first rather than leave a
    # half-made .venv without pip behind.
    if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        if is_root && command -v apt-get >/dev/null; then
            say "installing python3-venv (apt-get)"
            quiet apt_install python3-venv
        else
            die "Python's venv module is missing ($PY $ver). Run: sudo apt-get install -y python3-venv"
        fi
    fi
    say "creating .venv (Python $ver)"
    if ! "$PY" -m venv "$ROOT/.venv" >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        rm -rf "$ROOT/.venv"
        die "'$PY -m venv .venv' failed (Debian: sudo apt-get install -y python3-venv)"
    fi
fi

# --- sctl (and its dev tools) ---------------------------------------------------------------------
# The stamp holds the hash of pyproject.toml and what was installed: "dev" covers "run" too.
stamp="$ROOT/.venv/.sctl-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
installed=
case "$have" in
    "$want dev" | "$want") installed=1 ;;
    "$want run") [ "$MODE" = run ] && installed=1 ;;
esac
if [ -z "$installed" ] || [ ! -x "$ROOT/.venv/bin/sctl" ]; then
    say "installing sctl into .venv (pip install -e '$EXTRAS')"
    cd "$ROOT"
    quiet .venv/bin/python -m pip install --disable-pip-version-check --no-input -q -e "$EXTRAS"
    echo "$want $MODE" >"$stamp"
fi

# --- Debian packages ------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    command -v apt-get >/dev/null \
        || die "mosquitto (MQTT broker) is missing; install it with your package manager"
    can_root \
        || die "mosquitto (MQTT broker) is missing and installing it needs root. Run:" \
               "sudo apt-get update && sudo apt-get install -y --no-install-recommends mosquitto"
    say "installing mosquitto (apt-get; the system service is not started)"
    quiet apt_install mosquitto
fi

# The monitoring tests' real peers (dev only): Prometheus scraping `sctl metrics`, and headless
# Chromium with its WebDriver loading the status page. The prometheus service is not started.
if [ "$MODE" = dev ]; then
    missing=()
    command -v prometheus >/dev/null || missing+=(prometheus)
    # openssl: the tests make their own certificate authorities (TLS to devices and brokers)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    # mosquitto_sub / mosquitto_pub: the MQTT clients of the mqtt-bridge tests and benchmark
    command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
    if [ "${#missing[@]}" -gt 0 ]; then
        command -v apt-get >/dev/null \
            || die "${missing[*]} (for the tests) missing; install with your package manager"
        can_root \
            || die "${missing[*]} (for the tests) missing and installing needs root. Run:" \
                   "sudo apt-get update && sudo apt-get install -y --no-install-recommends" \
                   "${missing[*]}"
        say "installing ${missing[*]} (apt-get, for the tests)"
        quiet apt_install "${missing[@]}"
    fi
fi
