#!/usr/bin/env bash
# Run the demo on a fresh Debian machine: installs what it needs, then `valvoja demo`.
# Arguments are passed to `valvoja demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# ensurepip is missing without python3-venv (Debian splits it out), and `python3 -m venv` fails then.
[ -x .venv/bin/valvoja ] || python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages)"
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
  # The mosquitto package starts a system broker on :1883; the demo runs its own on a free port.
fi
if [ ! -x .venv/bin/valvoja ]; then
  echo "== creating .venv and installing Valvoja (pip)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
fi
exec .venv/bin/valvoja demo "$@"
