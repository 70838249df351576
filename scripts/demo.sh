#!/usr/bin/env bash
# Run the demo on a fresh Debian machine: installs what it needs, then `valvoja demo`.
# Arguments are passed to `valvoja demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "== installing mosquitto (Debian package) for the embedded MQTT broker"
  $SUDO apt-get install -y -q mosquitto >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q mosquitto >/dev/null; }
  # The Debian package starts a system broker on :1883; the demo runs its own on a free port.
fi
if [ ! -x .venv/bin/valvoja ]; then
  echo "== creating .venv and installing Valvoja (pip)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
fi
exec .venv/bin/valvoja demo "$@"
