"""Install the browser the dashboard's browser tests drive: Debian's `chromium` package.

`python -m tools.install_chromium` (what CI's set-up runs): prints the binary's path and
exits 0 when it is there already (idempotent); else, as root on Debian or Ubuntu, installs it
with apt-get (about 130 MB); else says how, and exits 1 when CI is set (0 elsewhere: the
browser tests then skip, saying the same). Playwright drives this binary through
`executable_path`; `playwright install` is never needed (and cannot download here).

The binary is KAFKAWORKER_CHROMIUM when set, else /usr/lib/chromium/chromium (the real
binary: /usr/bin/chromium is a shell wrapper that Playwright's launcher does not need).
"""

from __future__ import annotations

import os
from pathlib import Path

from tools.debian import apt_install, can_install, setup_step

DEBIAN_BINARY = "/usr/lib/chromium/chromium"
HOW = (
    "install Chromium for the browser tests: sudo python -m tools.install_chromium "
    "(Debian's chromium package) and pip install playwright"
)


def chromium_path() -> str | None:
    """The Chromium binary to drive, if installed."""
    configured = os.environ.get("KAFKAWORKER_CHROMIUM")
    candidates = [configured] if configured else [DEBIAN_BINARY]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install() -> str:
    """The binary's path, installing the package first when it is missing (root only)."""
    found = chromium_path()
    if found is not None:
        return found
    if not can_install():
        raise SystemExit(f"no Chromium at {DEBIAN_BINARY}: {HOW}")
    apt_install("chromium")
    found = chromium_path()
    if found is None:
        raise SystemExit(f"apt-get installed chromium but {DEBIAN_BINARY} is missing")
    return found


def main() -> int:
    """The CI set-up step: a missing browser that cannot be installed (not root, no apt-get)
    fails it only when CI is set; a developer's machine goes on and the browser tests skip."""
    return setup_step("install_chromium", install)


if __name__ == "__main__":
    raise SystemExit(main())
