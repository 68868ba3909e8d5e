"""Install what the alert tests run: Debian's `prometheus` package (the server and promtool).

`python -m tools.install_prometheus` (a step of `make test`): prints the two binaries' paths
and exits 0 when they are there already (idempotent); else, as root on Debian or Ubuntu,
installs the package with apt-get (about 100 MB; no daemon is started where there is no
systemd, and the tests start their own server); else says how, and exits 1 when CI is set
(0 elsewhere: the alert tests then skip, saying the same).
"""

from __future__ import annotations

import shutil

from tools.debian import apt_install, can_install, setup_step

HOW = (
    "install Prometheus for the alert tests: sudo python -m tools.install_prometheus "
    "(Debian's prometheus package: prometheus and promtool)"
)
BINARIES = ("prometheus", "promtool")


def binaries() -> dict[str, str] | None:
    """The paths of prometheus and promtool, if both are installed."""
    found = {name: shutil.which(name) for name in BINARIES}
    if any(path is None for path in found.values()):
        return None
    return {name: str(path) for name, path in found.items()}


def install() -> dict[str, str]:
    """The binaries' paths, installing the package first when one is missing (root only)."""
    found = binaries()
    if found is not None:
        return found
    if not can_install():
        raise SystemExit(f"no {' or '.join(BINARIES)} on PATH: {HOW}")
    apt_install("prometheus")
    found = binaries()
    if found is None:
        raise SystemExit("apt-get installed prometheus but prometheus or promtool is missing")
    return found


def main() -> int:
    return setup_step("install_prometheus", lambda: " ".join(install().values()))


if __name__ == "__main__":
    raise SystemExit(main())
