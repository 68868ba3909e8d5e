"""Debian packages for the test set-up (tools/install_chromium.py, tools/install_prometheus.py):
installed with apt-get as root, the package lists fetched only when the first try fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable


def can_install() -> bool:
    """Root on a machine with apt-get: what installing a package here needs."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(*packages: str) -> None:
    """`apt-get install` the packages (no recommends); raises CalledProcessError."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        # A fresh image has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(command, env=env, check=True)


def setup_step(name: str, install: Callable[[], str]) -> int:
    """A CI set-up step's exit code: what `install()` found or installed is printed; one that
    cannot install (not root, no apt-get: SystemExit) fails only when CI is set, so that a
    developer's machine goes on and the tests that need it skip."""
    try:
        print(install())
    except SystemExit as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1 if os.environ.get("CI") else 0
    except subprocess.CalledProcessError as exc:
        print(f"{name}: {' '.join(exc.cmd)} exited {exc.returncode}", file=sys.stderr)
        return 1
    return 0
