"""What the alert tests share: promtool and the Prometheus server from Debian's `prometheus`
package (tools/install_prometheus.py installs it, as root, idempotently). Without them the
tests skip saying how to install them; with CI set that is a failure (CI must run them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import install_in_ci, unavailable
from tools.install_prometheus import HOW, binaries, install

ROOT = Path(__file__).resolve().parent.parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"


@pytest.fixture(scope="session")
def prometheus_binaries() -> dict[str, str]:
    """{"prometheus": path, "promtool": path}."""
    found = install_in_ci(binaries(), install, "Prometheus")
    if found is None:
        unavailable("Prometheus", HOW)
    return found


def promtool(binaries: dict[str, str], *args: str, cwd: Path = RULES_DIR) -> str:
    """Run promtool; its output, failing the test with it when it exits non-zero."""
    result = subprocess.run(
        [binaries["promtool"], *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
