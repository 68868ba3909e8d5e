"""Fetching a test dependency from Maven Central once into the user's cache: the Kafka broker
jars (broker.py) and the Schema Registry app (registry.py).

The version is pinned in the dependency's POM, the single place it is written. What Maven
fetches lands in a temporary sibling directory renamed into place only when Maven succeeds
(and the result passes `check`), so an interrupted download is never mistaken for a complete
one; `.complete` marks it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def pinned_version(pom: Path, prop: str, error: type[Exception]) -> str:
    """The version pinned in `pom` as the property `prop`."""
    match = re.search(rf"<{re.escape(prop)}>([^<]+)</{re.escape(prop)}>", pom.read_text())
    if match is None:
        raise error(f"{pom} has no <{prop}>; restore it from git")
    return match.group(1)


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kafkaworker" / name


def fetch(
    pom: Path,
    goal: list[str],
    *,
    target: Path,
    what: str,
    error: type[Exception],
    check: Callable[[Path], bool] = lambda _: True,
) -> Path:
    """Run the Maven `goal` of `pom` into `target` unless it is complete already.

    Maven works from a copy of the POM in the staging directory: its target/ (unpack markers,
    which would make a later fetch skip the unpacking) then never lands in the source tree,
    and goes with the staging directory.
    """
    if (target / ".complete").exists():
        return target
    for tool, hint in (
        ("java", "install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless)"),
        ("mvn", "install Maven (Debian: apt-get install maven)"),
    ):
        if shutil.which(tool) is None:
            raise error(f"'{tool}' is not on PATH, needed to run {what}: {hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    build = staging / ".maven"
    build.mkdir()
    shutil.copyfile(pom, build / "pom.xml")
    cmd = ["mvn", "-q", "-B", "-f", str(build / "pom.xml"), *goal, f"-DoutputDirectory={staging}"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    shutil.rmtree(build, ignore_errors=True)
    if result.returncode != 0 or not check(staging):
        shutil.rmtree(staging, ignore_errors=True)
        tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise error(
            f"could not fetch {what} with Maven (exit {result.returncode}): "
            f"{tail or 'not what was expected in the download'}; check that Maven Central "
            "is reachable"
        )
    (staging / ".complete").write_text(target.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
