"""The dashboard page in a real Chromium against a real worker process and the real broker:
it updates without a reload, a partition's lag appears and falls to 0, the handler row's
counts equal /metrics, and a dead-lettered record shows in recent failures with its error,
traceback and headers. Control is off by default: no buttons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.dashboard.conftest import Worker, send
from tests.metrics_support import total

pytestmark = [pytest.mark.kafka, pytest.mark.browser]

HANDLER = "handle_order"
# The page polls once a second and the worker refreshes its view once a second.
SHOWN = 10_000  # ms


def count(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_page_follows_the_worker_live(
    kafka_bootstrap: str,
    topic: Callable[[int], str],
    worker: Callable[..., Worker],
    page: Any,
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415 - optional, see conftest

    name = topic(2)
    one = worker(name, DASH_SLEEP="0.005")
    one.wait_ready()
    page.goto(f"http://127.0.0.1:{one.port}/")
    expect(page.get_by_test_id("state")).to_have_text("ready", timeout=SHOWN)
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    expect(page.locator("#control")).to_be_hidden()
    expect(page.locator("button[data-action]")).to_have_count(0)
    row = page.locator(f'#handlers tr[data-handler="{HANDLER}"]')
    expect(row.locator('[data-field="finished"]')).to_have_text("0", timeout=SHOWN)
    expect(row.locator('[data-field="guarantee"]')).to_have_text("at_least_once")

    # About 5 s of work on partition 0: its lag shows above 0, then falls to 0.
    send(kafka_bootstrap, name, [{"id": i} for i in range(1000)], partition=0)
    lag_cell = f'#partitions tr[data-partition="{name}[0]"] [data-field="lag"]'
    page.wait_for_function(
        "css => { const t = document.querySelector(css)?.textContent;"
        " return t !== undefined && t !== '0' && t !== '\u2013'; }",
        arg=lag_cell,
        timeout=SHOWN,
    )
    expect(page.locator(lag_cell)).to_have_text("0", timeout=60_000)

    send(
        kafka_bootstrap,
        name,
        [{"id": 100, "fail": True}, {"id": 101, "fail": True}],
        partition=1,
        headers=[("trace-id", b"abc-123")],
    )
    expect(row.locator('[data-field="dead_lettered"]')).to_have_text("2", timeout=30_000)
    expect(row.locator('[data-field="finished"]')).to_have_text("1,002", timeout=SHOWN)
    for field, metric in (
        ("finished", "kafkaworker_messages_finished_total"),
        ("failed", "kafkaworker_handler_failures_total"),
        ("dead_lettered", "kafkaworker_dead_lettered_total"),
    ):
        shown = count(row.locator(f'[data-field="{field}"]').text_content())
        assert shown == total(one.port, metric, handler=HANDLER), field
    assert count(row.locator('[data-field="failed"]').text_content()) == 4

    failure = page.locator(
        '#failures tr.failure[data-decision="dead_letter"]', has_text="order 100 is broken"
    )
    expect(failure).to_have_count(1, timeout=SHOWN)
    expect(failure).to_contain_text("BrokenOrderError")
    failure.click()
    detail = page.locator("#failures tr.detail")
    expect(detail.locator('[data-field="traceback"]')).to_contain_text(
        'raise BrokenOrderError(f"order'
    )
    expect(detail).to_contain_text("trace-id")
    expect(detail).to_contain_text("abc-123")
    expect(detail).to_contain_text(f"kafkaworker dlq inspect {name}.dlq")
    # The details stay open across the page's refreshes.
    expect(page.get_by_test_id("updated")).not_to_have_text(
        page.get_by_test_id("updated").text_content(), timeout=SHOWN
    )
    expect(detail).to_have_count(1)
    assert page.evaluate("window.sameDocument") is True


def test_the_page_links_the_asyncapi_document(page: Any) -> None:
    """Given the app's AsyncAPI document, the page links it and the link serves it; a page
    without one shows no link."""
    from playwright.sync_api import expect  # noqa: PLC0415 - optional, see conftest
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from apps.orders.app import app  # noqa: PLC0415
    from kafkaworker.asyncapi import build, render  # noqa: PLC0415
    from kafkaworker.observability.dashboard import Dashboard  # noqa: PLC0415
    from kafkaworker.observability.health import Health  # noqa: PLC0415
    from kafkaworker.observability.server import MetricsServer  # noqa: PLC0415
    from kafkaworker.settings import DashboardSettings, Settings  # noqa: PLC0415

    registry = CollectorRegistry()
    document = render(build(app, Settings.model_validate({})))
    for given in (lambda: document, None):
        board = Dashboard(DashboardSettings(), registry, lambda: [], asyncapi=given)
        health = lambda: Health(True, True)  # noqa: E731
        with MetricsServer("127.0.0.1", 0, registry, health, board) as server:
            page.goto(f"http://127.0.0.1:{server.port}/")
            expect(page.get_by_test_id("state")).not_to_have_text("…", timeout=SHOWN)
            link = page.get_by_test_id("asyncapi")
            if given is None:
                expect(link).to_be_hidden()
                continue
            expect(link).to_be_visible()
            served = page.request.get(str(link.evaluate("a => a.href")))
            assert served.ok and served.text() == document
