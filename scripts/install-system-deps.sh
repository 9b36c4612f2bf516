#!/usr/bin/env bash
# Install the Debian packages Menwei needs when they are missing (mosquitto, libzbar0,
# python3-venv; with --test also chromium and postgresql). Uses sudo when not root; says clearly what to do when neither works.
set -euo pipefail

missing=()
# Debian's mosquitto package holds the broker (/usr/sbin), mosquitto_passwd (/usr/bin) and
# /etc/mosquitto/mosquitto.conf: the shipped-broker test runs all three.
if ! { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } \
    || ! command -v mosquitto_passwd >/dev/null 2>&1 || [ ! -f /etc/mosquitto/mosquitto.conf ]; then
    missing+=(mosquitto)
fi
# Not grep -q: it exits at the first match, ldconfig then dies of SIGPIPE and pipefail would
# report libzbar0 missing (about one run in three).
ldconfig -p 2>/dev/null | grep 'libzbar\.so' >/dev/null || missing+=(libzbar0)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The test suite drives the dashboard in a real browser: Debian's chromium (never a download).
if [ "${1:-}" = "--test" ]; then
    command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
    # The store tests run against a real PostgreSQL too (a throwaway cluster made with initdb;
    # menwei/postgres.py). A site that keeps the SQLite store never needs it.
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 \
        || missing+=(postgresql)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "Installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
    SUDO="sudo"
else
    echo "error: need root to install ${missing[*]}." >&2
    echo "Run: sudo apt-get install -y ${missing[*]}   (then run make again)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
# The Debian package enables a system-wide broker on port 1883; Menwei's demo and tests start
# their own on free ports, so the system one is left as the distribution configured it.
