#!/usr/bin/env python3
"""Build and run the Valvoja image with Debian's podman on a machine that reaches no image registry.

    python3 docker/localbuild.py base      # the stand-in base image (debootstrap; cached)
    python3 docker/localbuild.py base --check   # exit 0 if it is there already, 1 if not (builds nothing)
    python3 docker/localbuild.py build     # base + the image from docker/Dockerfile, prints the timings
    python3 docker/localbuild.py env       # shell exports to use `podman` on the same private storage
    python3 docker/localbuild.py standins  # stand-ins for compose.yaml's TimescaleDB and mosquitto images
    .venv/bin/python docker/localbuild.py lock   # rewrite docker/requirements.lock from the project's venv

Why each step is needed is in ../shared/notes/containers.md; in short: the base image
``docker.io/library/python:3.11-slim-bookworm`` cannot be pulled, so a stand-in with the same name is
made from Debian's packages (debootstrap, python3 + venv, the host's extra CA certificates so pip
trusts an intercepting proxy); podman gets private configuration (runc, cgroupfs, ulimits, file event
log) and storage under ``$VALVOJA_BUILD_DIR/podman`` (default /var/cache/valvoja-build), which keeps
the base image and the layer cache between runs. The Dockerfile itself stays the one used with a
registry. ``standins`` makes local images under the names of the compose stack's third-party images
(docker/standins/: Debian's packages, TimescaleDB copied from this machine's PostgreSQL 15 as
scripts/setup.sh built it), so ``podman-compose up`` runs the stack unchanged here; they are not the
real images (each Dockerfile says how they differ). Standard library only (runs before the project's
venv exists); root only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/var/cache/valvoja-build")
CACHE = Path(os.environ.get("VALVOJA_BUILD_DIR", DEFAULT_CACHE))
PODMAN_DIR = CACHE / "podman"
# Runtime state: tmpfs, gone after a reboot (as podman expects); one per storage (another VALVOJA_BUILD_DIR).
RUN_DIR = Path("/run/valvoja-podman" if CACHE == DEFAULT_CACHE
               else f"/run/valvoja-podman-{hashlib.sha256(str(CACHE).encode()).hexdigest()[:8]}")
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
BASE_TAR = CACHE / "python-3.11-bookworm-rootfs.tar"
IMAGE = "localhost/valvoja:dev"
COMPOSE_FILE = ROOT / "docker/compose.yaml"
STANDINS = ROOT / "docker/standins"
# Where scripts/setup.sh installs TimescaleDB (Debian's PostgreSQL 15 layout); the stand-in copies it.
PG_LIB = Path("/usr/lib/postgresql/15/lib")
PG_EXTENSION = Path("/usr/share/postgresql/15/extension")
MIRROR = os.environ.get("VALVOJA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""
CONTAINERS_CONF = """\
[containers]
# setrlimit beyond the session's hard limits fails; stay below them.
default_ulimits = ["nofile=20000:20000", "nproc=8192:8192"]
log_driver = "k8s-file"

[engine]
# crun refuses hybrid cgroups here; runc with cgroupfs works (no systemd in the session).
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp_dir}"
"""


def env() -> dict[str, str]:
    """Environment for podman with the private configuration and storage (files written on first use)."""
    PODMAN_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    storage = PODMAN_DIR / "storage.conf"
    containers = PODMAN_DIR / "containers.conf"
    want_storage = STORAGE_CONF.format(graphroot=PODMAN_DIR / "storage", runroot=RUN_DIR / "run")
    want_containers = CONTAINERS_CONF.format(tmp_dir=RUN_DIR / "libpod")
    for path, text in ((storage, want_storage), (containers, want_containers)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage), "CONTAINERS_CONF": str(containers),
            "BUILDAH_FORMAT": "docker"}


def podman(*args: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run podman with the private environment; on failure raise with its output."""
    res = subprocess.run(["podman", *args], env=env(), text=True, capture_output=capture, **kw)
    if check and res.returncode:
        out = (res.stdout or "") + (res.stderr or "")
        raise RuntimeError(f"podman {' '.join(args)} failed ({res.returncode}):\n{out[-4000:]}")
    return res


def available() -> str | None:
    """None when this machine can build images, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (podman with private storage, debootstrap)"
    for tool in ("podman", "runc", "debootstrap"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install podman runc debootstrap; scripts/setup.sh does)"
    return None


@contextlib.contextmanager
def _lock(name: str):
    """One build at a time per cache (parallel test runs share it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _rootfs_tar(log) -> None:
    """debootstrap a minimal bookworm with python3 and venv, trust the host's CAs, tar it to BASE_TAR."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with tempfile.TemporaryDirectory(prefix="valvoja-rootfs-", dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        t0 = time.monotonic()
        subprocess.run([debootstrap, "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES), "bookworm",
                        str(rootfs), MIRROR], check=True, capture_output=True)
        log(f"debootstrap: {time.monotonic() - t0:.1f} s")
        # Extra CAs of this machine (a TLS-intercepting proxy to the package registries), as a system trusts them.
        extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        dest = rootfs / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for crt in extra:
            shutil.copy2(crt, dest / crt.name)
        subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
        # Where the official python image has its interpreter.
        for name in ("python3", "python"):
            link = rootfs / "usr/local/bin" / name
            link.unlink(missing_ok=True)
            link.symlink_to("/usr/bin/python3")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        part = BASE_TAR.with_suffix(".part")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."], check=True)
        part.replace(BASE_TAR)


def ensure_base(log=print) -> float:
    """Make the stand-in base image unless it exists; returns the seconds spent (0 when cached)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return 0.0
    with _lock("base"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return 0.0
        t0 = time.monotonic()
        if not BASE_TAR.exists():
            _rootfs_tar(log)
        with open(BASE_TAR, "rb") as f:
            podman("import",
                   "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "--change", "ENV LANG=C.UTF-8",
                   # pip (in the image's venvs) uses its own CA bundle unless told to use the system's.
                   "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                   "--change", 'CMD ["python3"]',
                   "-", BASE_IMAGE, stdin=f)
        spent = time.monotonic() - t0
        log(f"base image {BASE_IMAGE}: {spent:.1f} s")
        return spent


def build(tag: str = IMAGE, log=print) -> dict[str, float]:
    """Base (if missing) and the project image; returns the timings in seconds."""
    base_s = ensure_base(log)
    with _lock("build"):
        old = _image_id(tag)
        t0 = time.monotonic()
        podman("build", "--pull=never", "--format", "docker", "--network", "host", "--layers",
               "-f", str(ROOT / "docker/Dockerfile"), "-t", tag, str(ROOT), timeout=1800)
        build_s = time.monotonic() - t0
        if old and old != _image_id(tag):
            # The previous image only (not `image prune`: that also drops the layer cache of the build stages).
            podman("rmi", old, check=False)
    log(f"image {tag}: {build_s:.1f} s")
    return {"base_s": round(base_s, 1), "build_s": round(build_s, 1)}


def compose_image(repository: str) -> str:
    """The full image name compose.yaml gives the image of ``repository`` (e.g. ``timescale/timescaledb``)."""
    names = re.findall(r"^\s*image:\s*(\S+)\s*$", COMPOSE_FILE.read_text(), re.MULTILINE)
    found = [n for n in names if n.rsplit(":", 1)[0].endswith("/" + repository)]
    if len(found) != 1:
        raise RuntimeError(f"{COMPOSE_FILE}: expected one image of {repository}, found {found or 'none'}")
    return found[0]


def build_standins(log=print) -> dict[str, float]:
    """The stand-ins of compose.yaml's TimescaleDB and mosquitto images (docker/standins/*.Dockerfile), tagged
    with the names compose.yaml uses; returns the build time of each in seconds (layers are cached)."""
    timescale = sorted(PG_LIB.glob("timescaledb*.so")), sorted(PG_EXTENSION.glob("timescaledb*"))
    if not timescale[0] or not timescale[1]:
        raise RuntimeError(f"TimescaleDB is not installed in {PG_LIB} and {PG_EXTENSION} "
                           "(scripts/setup.sh builds it): the timescaledb stand-in copies it from there")
    ensure_base(log)
    timings = {}
    with _lock("build"), tempfile.TemporaryDirectory(prefix="valvoja-standins-", dir=CACHE) as tmp:
        context = Path(tmp)
        for sub, files in zip(("lib", "extension"), timescale, strict=True):
            (context / sub).mkdir()
            for f in files:
                shutil.copy2(f, context / sub / f.name)
        shutil.copy2(STANDINS / "timescaledb-entrypoint.sh", context)
        for name, repository in (("timescaledb", "timescale/timescaledb"), ("mosquitto", "eclipse-mosquitto")):
            tag = compose_image(repository)
            old = _image_id(tag)
            t0 = time.monotonic()
            podman("build", "--pull=never", "--format", "docker", "--network", "host", "--layers",
                   "-f", str(STANDINS / f"{name}.Dockerfile"), "-t", tag, str(context), timeout=1800)
            timings[name] = round(time.monotonic() - t0, 1)
            if old and old != _image_id(tag):
                podman("rmi", old, check=False)
            log(f"stand-in {tag}: {timings[name]:.1f} s")
    return timings


def _image_id(tag: str) -> str | None:
    res = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return res.stdout.strip() or None if res.returncode == 0 else None


def lock(out: Path = ROOT / "docker/requirements.lock") -> list[str]:
    """Exact versions of the runtime dependency closure of the installed project (run with the venv's python)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement

    def canon(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    seen: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [("valvoja", frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canon(name), extras) in done:
            continue
        done.add((canon(name), extras))
        dist = metadata.distribution(name)
        if canon(name) != "valvoja":
            seen[canon(name)] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in envs):
                todo.append((req.name, frozenset(req.extras)))
    lines = [f"{n}=={v}" for n, v in sorted(seen.items())]
    out.write_text("# Runtime dependency closure of valvoja with exact versions, for docker/Dockerfile.\n"
                   "# Regenerate after changing pyproject.toml: .venv/bin/python docker/localbuild.py lock\n"
                   + "\n".join(lines) + "\n")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["base", "build", "env", "lock", "standins"])
    p.add_argument("--tag", default=IMAGE)
    p.add_argument("--check", action="store_true", help="base: only say whether the base image exists")
    args = p.parse_args()
    if args.action == "lock":
        print(f"{len(lock())} packages written to docker/requirements.lock")
        return 0
    if args.action == "env":
        e = env()
        for k in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "BUILDAH_FORMAT"):
            print(f"export {k}={e[k]}")
        return 0
    reason = available()
    if reason:
        print(f"cannot build here: {reason}", file=sys.stderr)
        return 1
    if args.action == "base" and args.check:
        return 0 if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0 else 1
    if args.action == "base":
        ensure_base()
    elif args.action == "standins":
        build_standins()
    else:
        build(args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
