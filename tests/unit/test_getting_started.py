"""The README's getting started, as a newcomer follows it in a checkout (issue 30, items 1-2):
`kafkaworker` is on the PATH when first typed, and `make run` never meets the tutorial."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

README = (ROOT / "README.md").read_text()
GETTING_STARTED = README.split("## Getting started", 1)[1].split("\n## ", 1)[0]


def test_the_virtualenv_is_activated_before_kafkaworker_is_first_typed() -> None:
    commands = re.findall(r"^\s*\$ (.+)$", GETTING_STARTED, re.MULTILINE)
    first = next(i for i, c in enumerate(commands) if c.split()[0] == "kafkaworker")
    assert "source .venv/bin/activate" in commands[:first]
    # ... and it works as written: make install made the .venv this suite runs from.
    shown = GETTING_STARTED.split("$ kafkaworker --version\n", 1)[1].splitlines()[0].strip()
    result = subprocess.run(
        ["bash", "-c", "source .venv/bin/activate && kafkaworker --version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == shown


def test_make_run_has_names_of_its_own() -> None:
    """The tutorial's worker left running beside `make run` split its partitions and handled
    its records: the demo runs the example app under other names."""
    from apps.orders.app import app  # noqa: PLC0415
    from kafkaworker import load_settings  # noqa: PLC0415
    from kafkaworker.handlers import resolve_specs  # noqa: PLC0415
    from tools import demo  # noqa: PLC0415

    names = r'App\("([^"]+)"\).*?@app\.handler\("([^"]+)".*?dlq="([^"]+)"'
    tutorial = re.search(names, GETTING_STARTED, re.S)
    assert tutorial is not None
    [spec] = resolve_specs(app, load_settings(ROOT / demo.SETTINGS))
    ran = {spec.group or app.name, *spec.topics, spec.dlq, spec.output}
    assert ran == {demo.GROUP, demo.TOPIC, demo.DLQ, demo.OUTPUT}  # what it shows is what runs
    assert not ran & set(tutorial.groups()), (ran, tutorial.groups())


def test_the_demos_closing_line_names_the_broker_only_when_it_started_one() -> None:
    from tools import demo  # noqa: PLC0415

    started = demo.where_to_look("http://127.0.0.1:9400/metrics", started_broker=True)
    reused = demo.where_to_look("http://127.0.0.1:9400/metrics", started_broker=False)
    assert started.splitlines()[-1].endswith("generator, and the broker it started.")
    assert reused.splitlines()[-1].endswith("load generator.")
    assert "broker" not in reused.splitlines()[-1]
    assert f"--settings {demo.SETTINGS}" in reused  # the hints show the demo's own names


def test_make_kafka_and_make_run_leave_the_registry_out() -> None:
    for target in ("kafka", "run"):
        planned = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        assert "kafkaworker.testing.broker fetch" in planned, target
        assert "kafkaworker.testing.registry" not in planned, target
    planned = subprocess.run(
        ["make", "-n", "jars"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "kafkaworker.testing.registry fetch" in planned  # the suite's still gets both


def test_the_first_fetch_names_the_cache_it_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafkaworker.testing import broker, registry  # noqa: PLC0415
    from kafkaworker.testing.jvm import fetch_notice  # noqa: PLC0415

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for cache in (broker.cache_dir(), registry.cache_dir()):
        assert cache.parent == tmp_path / "kafkaworker"
        notice = fetch_notice(cache, "them")
        assert notice == f"fetching them into {cache} (once)"
        cache.mkdir(parents=True)
        (cache / ".complete").touch()
        assert fetch_notice(cache, "them") is None  # fetched already: nothing said


def test_the_dev_broker_says_whether_its_data_outlives_it(tmp_path: Path) -> None:
    from kafkaworker.testing import broker  # noqa: PLC0415

    kept = broker.Cluster(1, data_dir=tmp_path / "data")
    temporary = broker.Cluster(1)
    try:
        assert "is kept after it stops" in broker.data_note(kept)
        assert "is deleted when it stops; --data DIR keeps it" in broker.data_note(temporary)
    finally:
        kept.cleanup()
        temporary.cleanup()
    assert not temporary.data_dir.exists()
