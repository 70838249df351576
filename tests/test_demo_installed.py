"""`valvoja demo` from an installed gateway (the venv of docs/operations.md, the container image): its site file
must be in the installed package. It was read from the source tree's config/ folder, which neither install has:
`valvoja demo: .../site-packages/config/demo.toml: No such file or directory`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_package_has_the_demo_configuration(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    # What docker/Dockerfile copies and installs; caches and build folders left out.
    for package in ("edge", "collectors", "models", "maintenance", "emissions", "console"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
    lib = tmp_path / "lib"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(lib), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code = ("from pathlib import Path; from edge.demo import DEMO_CONFIG, demo_config; print(DEMO_CONFIG); "
            "print(demo_config(Path('state'), 4840, '127.0.0.1', 1883).site)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"})
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(lib)), probe.stdout  # the installed copy, not the source tree's
