"""Peer frameworks, each installed from PyPI into a virtualenv of its own by the suite itself.

The environments live in benchmarks/.venvs/ (git ignores them) and are reused across runs.
A peer that cannot be installed is reported and left out; it never fails the run.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.run import Contender

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

# name -> (pip requirements, contender script). Versions unpinned on purpose: the newest of
# each, as a user choosing today would get.
PEERS: dict[str, tuple[list[str], str]] = {
    "faststream": (["faststream[confluent]", "orjson"], "faststream_app.py"),
    "faust": (["faust-streaming", "orjson"], "faust_app.py"),
    "quixstreams": (["quixstreams", "orjson"], "quix_app.py"),
    "arroyo": (["sentry-arroyo", "orjson"], "arroyo_app.py"),
}

# Each peer's documented concurrency option, checked against the installed sources
# (faststream 0.7.8, faust-streaming 0.15.3, sentry-arroyo 2.48.0, quixstreams 3.28.1). S2 runs
# a peer that has one at 8, 32 and 128 and reports its best; the contender scripts take it as
# --concurrency N. Quix Streams has none: an Application handles one message at a time and
# scales by running more processes (its documented way), so S2 runs it once, as it comes.
CONCURRENCY: dict[str, str | None] = {
    "faststream": "subscriber(max_workers=N)",
    "faust": "agent(concurrency=N)",
    "quixstreams": None,
    "arroyo": "RunTaskInThreads(concurrency=N)",
}


def python_of(name: str, requirements: list[str], log: Callable[[str], None]) -> str | None:
    env = VENVS / name
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if stamp.exists() and stamp.read_text() == repr(requirements):
        return str(python)
    log(f"peers: installing {name} ({', '.join(requirements)}) into {env}")
    venv.create(env, with_pip=True, clear=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *requirements],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log(f"peers: {name} could not be installed: {result.stderr.strip().splitlines()[-1:]}")
        return None
    stamp.write_text(repr(requirements))
    return str(python)


def contenders(selection: str, log: Callable[[str], None]) -> list[Contender]:
    from benchmarks.run import Contender  # noqa: PLC0415 - avoids an import cycle

    if selection == "none":
        return []
    wanted = list(PEERS) if selection == "all" else selection.split(",")
    chosen = []
    for name in wanted:
        if name not in PEERS:
            log(f"peers: unknown peer {name!r} (known: {', '.join(PEERS)})")
            continue
        requirements, script = PEERS[name]
        if not (HERE / "contenders" / script).exists():
            continue
        python = python_of(name, requirements, log)
        if python is not None:
            chosen.append(Contender(name, script, python, {}, CONCURRENCY.get(name)))
    return chosen


if __name__ == "__main__":
    for peer in contenders(sys.argv[1] if len(sys.argv) > 1 else "all", print):
        print(peer.name, peer.python)
