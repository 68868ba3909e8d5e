"""The dashboard page's files, served from the package by the metrics server: no CDN, the
metrics server's own paths untouched, and without dashboard.control no action endpoint."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.dashboard.conftest import Worker
from tests.metrics_support import get

pytestmark = pytest.mark.kafka


def test_static_files_and_no_control_by_default(
    topic: Callable[[int], str], worker: Callable[..., Worker]
) -> None:
    one = worker(topic(1))
    one.wait_ready()
    status, page = get(one.port, "/")
    assert status == 200 and b'<script src="dashboard.js"' in page
    assert b"https://" not in page  # no CDN
    for path in ("/dashboard.js", "/common.js", "/dashboard.css"):
        assert get(one.port, path)[0] == 200
    assert get(one.port, "/nothing-here")[0] == 404
    assert get(one.port, "/metrics")[0] == 200  # the metrics server's own paths still work
    # Control is off: its endpoints do not exist.
    assert get(one.port, "/api/control/pause")[0] == 404


def test_the_page_files_are_in_the_package() -> None:
    from importlib import resources  # noqa: PLC0415

    static = resources.files("kafkaworker.observability.dashboard").joinpath("static")
    names = sorted(p.name for p in static.iterdir())
    assert names == ["common.js", "dashboard.css", "dashboard.js", "index.html"]
    for script in ("common.js", "dashboard.js"):
        # Record data is written as text, never as HTML.
        assert "innerHTML" not in static.joinpath(script).read_text()
