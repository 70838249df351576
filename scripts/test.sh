#!/usr/bin/env bash
# Run the test suite against real servers (mosquitto, PostgreSQL + TimescaleDB, OPC UA) started by the suite.
#
#   bash scripts/test.sh [pytest arguments]     e.g. bash scripts/test.sh -k mqtt -x
#
# Prepares the machine first (scripts/setup.sh: idempotent, a few seconds once done), then runs ruff and
# pytest. The exit code is pytest's; ruff's findings are printed. CI runs this through .ci/run.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

if [[ $EUID -eq 0 ]]; then
  bash scripts/setup.sh || { echo "scripts/setup.sh failed; not running the tests" >&2; exit 1; }
  # setup.sh installed every server: a missing one is an error here, not a reason to skip tests.
  export VALVOJA_TEST_REQUIRE_SERVERS="${VALVOJA_TEST_REQUIRE_SERVERS:-1}"
elif [[ ! -x .venv/bin/python ]]; then
  echo "no .venv yet: run 'sudo bash scripts/setup.sh' once (it installs Debian packages and TimescaleDB)" >&2
  exit 1
else
  echo "==> not root: skipping scripts/setup.sh (tests whose servers are missing are skipped)"
fi

echo "==> ruff check ."
if .venv/bin/ruff check --quiet .; then
  ruff_status="clean"
else
  ruff_status="FOUND PROBLEMS (listed above)"
fi

# Two workers (pytest-xdist): most tests wait on servers and processes, so two at once on CI's 2 cores take about
# 2/3 of the time of one. Each worker starts its own servers; tests marked xdist_group share a worker.
# VALVOJA_TEST_WORKERS=0 runs everything in this process (one at a time).
workers="${VALVOJA_TEST_WORKERS:-2}"
echo "==> pytest -n $workers --dist loadgroup $*"
start=$SECONDS
.venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
status=$?
echo "==> pytest exit code $status in $((SECONDS - start)) s; ruff: $ruff_status"
exit "$status"
