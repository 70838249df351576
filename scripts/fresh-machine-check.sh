#!/usr/bin/env bash
# Prove that `bash .ci/run` works on a fresh Debian bookworm machine: build a minimal bookworm root with
# debootstrap, copy the working tree into it (what `git ls-files -co --exclude-standard` lists: tracked files
# plus new ones not ignored, i.e. a clean clone of what would be committed) and ../shared beside it, then run
# .ci/run inside it as root and report the times. Nothing on this machine is installed or changed
# except the root dir (default /var/tmp/valvoja-fresh, removed afterwards unless KEEP_ROOT=1).
#
#   sudo bash scripts/fresh-machine-check.sh [pytest arguments]
#
# The chroot gets this machine's DNS, extra CA certificates and pip configuration (package proxies, wheel
# dirs bound read-only), as a CI machine of the same kind would have. Needs debootstrap and mount rights.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="$(cd "$ROOT/.." && pwd)/shared"
FRESH="${FRESH_ROOT:-/var/tmp/valvoja-fresh}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mounts=()

cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  # Mounts made inside the root (podman's overlay storage, containers' file systems), deepest first.
  awk -v root="$FRESH" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [[ "${KEEP_ROOT:-0}" != 1 ]]; then rm -rf --one-file-system "$FRESH"; else echo "kept $FRESH"; fi
}

bind() {  # bind <source> <target inside FRESH> [ro]
  mkdir -p "$FRESH$2"
  mount --bind "$1" "$FRESH$2"
  mounts+=("$FRESH$2")
  [[ "${3:-}" == ro ]] && mount -o remount,bind,ro "$FRESH$2"
  return 0
}

main() {
  [[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  if [[ -z "${VALVOJA_FRESH_NS:-}" ]]; then
    # A private mount namespace: the bind mounts below cannot leak to (or be unmounted from) this machine,
    # and they vanish with the namespace whatever happens.
    exec env VALVOJA_FRESH_NS=1 unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$@"
  fi
  trap cleanup EXIT
  local t=$SECONDS
  if [[ -n "${REUSE_ROOT:-}" && -x "$FRESH/usr/bin/apt-get" ]]; then
    echo "==> using the pristine root already in $FRESH (REUSE_ROOT)"
  else
    rm -rf --one-file-system "$FRESH"
    echo "==> debootstrap bookworm (minbase) into $FRESH"
    debootstrap --variant=minbase bookworm "$FRESH" "$MIRROR" >"$FRESH.debootstrap.log" 2>&1 \
      || { tail -20 "$FRESH.debootstrap.log"; exit 1; }
    rm -f "$FRESH.debootstrap.log"
    echo "    done ($((SECONDS - t)) s)"
  fi

  # The root a mount point of its own, as a machine's / is: podman's layer unpacking remounts / (private) and
  # fails with EINVAL on a plain dir; pivot_root (below) needs it too.
  mount --bind "$FRESH" "$FRESH"
  mounts+=("$FRESH")

  # What a CI machine of this kind has besides Debian: the full bookworm sources, DNS, CAs, pip settings.
  [[ -f /etc/apt/sources.list.d/debian.sources ]] && cp /etc/apt/sources.list.d/debian.sources "$FRESH/etc/apt/sources.list.d/" \
    && rm -f "$FRESH/etc/apt/sources.list"
  cp -L /etc/resolv.conf "$FRESH/etc/resolv.conf"
  mkdir -p "$FRESH/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$FRESH/usr/local/share/ca-certificates/" 2>/dev/null || true
  [[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$FRESH/etc/pip.conf"
  for d in /opt/wheels /opt/pypi /opt/pypi-more; do [[ -d $d ]] && bind "$d" "$d" ro; done

  bind /proc /proc
  bind /sys /sys ro
  # The container tests (podman, cgroupfs manager) create cgroups: the cgroup hierarchy, writable.
  if mountpoint -q /sys/fs/cgroup; then
    mount --rbind /sys/fs/cgroup "$FRESH/sys/fs/cgroup" && mounts+=("$FRESH/sys/fs/cgroup")
  fi
  bind /dev /dev
  bind /dev/pts /dev/pts
  mkdir -p "$FRESH/dev/shm" && mount -t tmpfs -o mode=1777 shm "$FRESH/dev/shm" && mounts+=("$FRESH/dev/shm")

  echo "==> copying the working tree (as a clean clone would have it) and ../shared"
  mkdir -p "$FRESH/ci/main"
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$FRESH/ci/main" -xf -
  [[ -d "$SHARED" ]] && bind "$SHARED" /ci/shared ro

  echo "==> bash .ci/run $* (inside the fresh root)"
  t=$SECONDS
  set +e
  # The fresh root becomes the root of a mount namespace of its own (pivot_root, then the old root detached),
  # not just a chroot: `podman exec` (the container tests' health checks) fails inside a plain chroot.
  unshare --mount --propagation private /bin/sh -c 'cd "$1" && mkdir -p .oldroot && pivot_root . .oldroot \
      && shift && exec /usr/sbin/chroot . "$@"' pivot "$FRESH" \
    /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    /bin/bash -c 'umount -l /.oldroot && cd /ci/main && bash .ci/run "$@"' ci-run "$@"
  local status=$?
  set -e
  echo "==> .ci/run exit code $status after $((SECONDS - t)) s in the fresh root"
  return "$status"
}

main "$@"
