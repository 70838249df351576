#!/usr/bin/env bash
# Prepare this machine for the test suite (and the demo): Debian packages, TimescaleDB built from Debian's
# source package (DESIGN.md §3), and the project's virtualenv. Idempotent: a second run only checks and
# takes a few seconds. Runs as root on Debian bookworm; needs network only to the Debian mirrors and PyPI.
#
#   bash scripts/setup.sh            # VALVOJA_BUILD_DIR overrides the build cache (default /var/cache/valvoja-build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${VALVOJA_BUILD_DIR:-/var/cache/valvoja-build}"
PG_MAJOR=15
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
TRIXIE_SRC="deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main"
APT_PACKAGES=(
  mosquitto mosquitto-clients                               # MQTT broker for the tests
  "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"  # database server + headers for TimescaleDB
  cmake gcc make libssl-dev dpkg-dev xz-utils patch         # TimescaleDB build from the source package
  openssl ca-certificates python3 python3-venv util-linux
  chromium                                                  # headless browser for the console tests
  podman runc debootstrap                                   # container image tests (docker/localbuild.py)
  golang-github-containernetworking-plugin-dnsname          # compose stack test: service names between containers (CNI)
)

T_START=$SECONDS
LOG="$(mktemp -t valvoja-setup.XXXXXX.log)"
policy_added=""
build_pid=""
base_pid=""
node_pid=""
step() { printf '==> %s\n' "$*"; }
done_step() { printf '    %s done (%d s)\n' "$1" "$((SECONDS - $2))"; }
# Run a noisy command with its output in $LOG; show the tail of the log if it fails.
quiet() {
  if ! "$@" >>"$LOG" 2>&1; then
    printf 'FAILED: %s\n--- last lines of %s ---\n' "$*" "$LOG" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
cleanup() {
  [[ -z "$policy_added" ]] || rm -f /usr/sbin/policy-rc.d
  # Each background job is its own process group (set -m below): kill the whole group, so a `make -j`, `npm ci`
  # or debootstrap under it does not run on (holding no lock: the jobs do not inherit fd 9) after a failure.
  local pid
  for pid in "$build_pid" "$base_pid" "$node_pid"; do
    [[ -z "$pid" ]] || kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
}

apt_packages() {
  local p t missing=()
  installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }
  for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    step "apt: all ${#APT_PACKAGES[@]} packages present"
    return
  fi
  t=$SECONDS
  step "apt: installing ${missing[*]}"
  # Package scripts must not start system-wide daemons (mosquitto on 1883, the "main" PostgreSQL cluster):
  # the tests start their own servers. policy-rc.d is Debian's switch for that; only ours is removed again.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  # --force-unsafe-io: dpkg skips its fsync per file, which dominates unpacking time on slow disks.
  apt_install() { apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io "${missing[@]}"; }
  # apt-get update only when the package lists cannot satisfy the install (fresh image, stale lists).
  if ! apt_install >>"$LOG" 2>&1; then
    step "apt: refreshing package lists"
    quiet apt-get update -q
    quiet apt_install
  fi
  if [[ -n "$policy_added" ]]; then rm -f /usr/sbin/policy-rc.d; policy_added=""; fi
  done_step apt "$t"
}

# The OPC UA interoperability tests' second, independent implementation: node-opcua from npm
# (tests/node_opcua, pinned by its package-lock.json). Node itself from Debian where none is installed.
node_peer() {
  local t=$SECONDS dir="$ROOT/tests/node_opcua" log="$BUILD_DIR/node-opcua.log"
  if [[ -d "$dir/node_modules/node-opcua" && "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]]; then
    step "node-opcua: present"
    return 0
  fi
  if ! command -v npm >/dev/null; then
    apt-get install -y -q --no-install-recommends nodejs npm >"$log" 2>&1 || return 1
  fi
  npm ci --prefix "$dir" --no-audit --no-fund >>"$log" 2>&1 || return 1
  done_step "node-opcua (npm ci)" "$t"
}

build_timescaledb() {
  local t=$SECONDS ext_dir="$1"
  # trixie's deb-src in apt state of its own, so the system's sources, lists and caches stay untouched.
  local apt_dir="$BUILD_DIR/apt" src_dir="$BUILD_DIR/src" dsc tree
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d" "$apt_dir/cache/archives/partial" "$src_dir"
  echo "$TRIXIE_SRC" >"$apt_dir/sources.list"
  apt_trixie() {
    apt-get -q -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
      -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o APT::Sandbox::User=root "$@"
  }
  if ! compgen -G "$src_dir/timescaledb_*.dsc" >/dev/null; then
    step "timescaledb: fetching the trixie source index and package"
    quiet apt_trixie update
    (cd "$src_dir" && quiet apt_trixie source --download-only timescaledb)
  fi
  dsc="$(ls -1 "$src_dir"/timescaledb_*.dsc | sort -V | tail -n 1)"
  tree="$src_dir/tree"
  if [[ ! -x "$tree/bootstrap" ]]; then
    rm -rf "$tree"
    # apt verified the files against the signed trixie index; dpkg-source need not check the .dsc signature.
    quiet dpkg-source --no-check -x "$dsc" "$tree"
  fi
  step "timescaledb: compiling $(basename "$dsc" .dsc) (Apache-2 edition) against PostgreSQL $PG_MAJOR"
  rm -rf "$tree/build"
  (cd "$tree" && quiet ./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DPG_CONFIG="$PG_CONFIG")
  quiet make -C "$tree/build" -j"$(nproc)"
  quiet make -C "$tree/build" install
  [[ -f "$ext_dir/timescaledb.control" ]] || { echo "timescaledb.control not installed in $ext_dir" >&2; exit 1; }
  done_step timescaledb "$t"
}

python_env() {
  local t venv="$ROOT/.venv" stamp want
  if [[ ! -x "$venv/bin/python" ]]; then
    t=$SECONDS
    step "python: creating $venv"
    quiet python3 -m venv "$venv"
    done_step venv "$t"
  fi
  # Reinstall only when what decides the install changed: pyproject.toml and the interpreter.
  stamp="$venv/.valvoja-setup-stamp"
  want="$(cat "$ROOT/pyproject.toml" "$venv/pyvenv.cfg" | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && "$venv/bin/python" -c 'import edge, pytest' 2>/dev/null; then
    step "python: .venv up to date"
    return
  fi
  t=$SECONDS
  step "python: pip install -e '.[dev]'"
  quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
  echo "$want" >"$stamp"
  done_step pip "$t"
}

# Parsed in full before anything runs (bash otherwise reads a script lazily, line by line, while it runs).
main() {
  if [[ $EUID -ne 0 ]]; then
    echo "scripts/setup.sh installs Debian packages and must run as root (try: sudo bash scripts/setup.sh)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$BUILD_DIR"
  # Two setups at once (parallel test runs) would fight over apt and the build tree: take turns.
  exec 9>"$BUILD_DIR/setup.lock"
  flock 9
  trap cleanup EXIT

  apt_packages

  local ext_dir
  ext_dir="$("$PG_CONFIG" --sharedir)/extension"
  if [[ -f "$ext_dir/timescaledb.control" ]]; then
    step "timescaledb: installed ($(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$ext_dir/timescaledb.control"))"
  else
    step "timescaledb: building from Debian trixie's source package (in the background, log in $BUILD_DIR)"
    # The compile is CPU-bound, pip mostly waits on the network and disk: doing both at once saves a minute.
    set -m  # job control: each background job gets a process group of its own (see cleanup)
    (LOG="$BUILD_DIR/timescaledb-build.log" && : >"$LOG" && build_timescaledb "$ext_dir") 9>&- &
    build_pid=$!
  fi

  # The container tests' stand-in base image (debootstrap + podman import, ~60 s once, then cached in
  # $BUILD_DIR/podman): mostly network and disk, so it overlaps with the compile and pip.
  if python3 "$ROOT/docker/localbuild.py" base --check >/dev/null 2>&1; then
    step "container base image: cached"
  else
    step "container base image: building in the background (log in $BUILD_DIR/base-image.log)"
    set -m
    (VALVOJA_BUILD_DIR="$BUILD_DIR" python3 "$ROOT/docker/localbuild.py" base >"$BUILD_DIR/base-image.log" 2>&1) 9>&- &
    base_pid=$!
  fi

  set -m
  node_peer 9>&- &
  node_pid=$!
  set +m

  python_env

  if ! wait "$node_pid"; then
    echo "WARNING: node-opcua not installed (log: $BUILD_DIR/node-opcua.log); the OPC UA interop tests will skip" >&2
  fi
  node_pid=""

  if [[ -n "$build_pid" ]]; then
    if ! wait "$build_pid"; then
      build_pid=""
      echo "TimescaleDB build failed (log: $BUILD_DIR/timescaledb-build.log)" >&2
      exit 1
    fi
    build_pid=""
  fi
  if [[ -n "$base_pid" ]]; then
    if wait "$base_pid"; then
      step "container base image: $(tail -n 1 "$BUILD_DIR/base-image.log")"
    else
      # Not fatal here: the container tests build it again and report the error where it belongs.
      echo "WARNING: container base image failed (log: $BUILD_DIR/base-image.log); the container tests will retry" >&2
    fi
    base_pid=""
  fi
  rm -f "$LOG"
  step "setup finished in $((SECONDS - T_START)) s"
}

main "$@"
