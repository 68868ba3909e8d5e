"""The fleet page in Debian's Chromium: three `kafkaworker run` processes of two apps on the
session's broker and a `kafkaworker dashboard`. Both apps and the three processes are shown;
a topic paused from the page stops consumption in every process that owns its partitions, and
resuming it restarts it; the DLQ explorer lists a failed record, decoded, and replays it to
its source, where it is handled once the bug is fixed; a process killed with -9 is shown gone
within 20 s. The page's screenshot at the end is the README's (docs/fleet.png)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.conftest import TopicFactory
from tests.fleet.conftest import BUILD, TOKEN, DashboardProcess, WorkerProcess, fleet_settings
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.browser, pytest.mark.slow]

SHOWN = 15_000  # ms: processes report every 5 s, the page polls every 2 s


def send(bootstrap: str, topic: str, values: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, json.dumps(value).encode(), key=str(value["id"]).encode())
    assert producer.flush(30) == 0


def test_the_fleet_page_shows_commands_and_replays_across_processes(  # noqa: PLR0917 - fixtures
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    fleet_suffix: str,
    dashboard: Callable[..., DashboardProcess],
    fleet_worker: Callable[..., WorkerProcess],
    page: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415 - optional, see tests/dashboard

    # The default interval (5 s): "gone within 20 s" is about the real one.
    fleet = fleet_settings(fleet_suffix, interval=5.0)
    orders, billing = new_topic(4), new_topic(2)
    orders_app, billing_app = f"orders-{fleet_suffix}", f"billing-{fleet_suffix}"
    record, broken = tmp_path / "handled.txt", tmp_path / "broken"
    broken.touch()  # billing has a bug: {"fail": true} orders fail until it is fixed
    one = dashboard(fleet)
    workers = [
        fleet_worker(fleet, app=orders_app, topic=orders, record=record, broken=broken),
        fleet_worker(fleet, app=orders_app, topic=orders, record=record, broken=broken),
        fleet_worker(fleet, app=billing_app, topic=billing, record=record, broken=broken),
    ]

    page.goto(f"http://127.0.0.1:{one.port}/")
    for app in (orders_app, billing_app):
        expect(page.locator(f'#apps tr[data-app="{app}"]')).to_have_count(1, timeout=60_000)
    for worker in workers:
        row = page.locator(f'#processes tr[data-pid="{worker.pid}"]')
        expect(row.locator('[data-field="state"]')).to_have_text("ready", timeout=60_000)
    orders_rows = page.locator(f'#partitions tr[data-partition^="{orders_app}:{orders}["]')
    expect(orders_rows).to_have_count(4, timeout=SHOWN)
    owners = {workers[0].pid, workers[1].pid}

    def spread() -> bool:
        rows = [r for r in one.fleet()["partitions"] if r["topic"] == orders]
        return len(rows) == 4 and {r["pid"] for r in rows} == owners

    wait_until(spread, 60, "both orders processes owning some of its partitions")

    # Pause the orders topic from the page: every partition, in both processes.
    page.get_by_test_id("token").fill(TOKEN)
    page.locator("#operator").fill("ann")
    topic_row = page.locator(f'#topics tr[data-topic="{orders_app}:{orders}"]')
    topic_row.locator('button[data-action="pause"]').click()
    expect(page.get_by_test_id("control-result")).to_contain_text("pause: sent to the fleet")
    for n in range(4):
        row = page.locator(f'#partitions tr[data-partition="{orders_app}:{orders}[{n}]"]')
        expect(row.locator('[data-field="paused"]')).to_have_text("paused: operator", timeout=SHOWN)
    expect(topic_row.locator('[data-field="paused"]')).to_have_text("4 of 4 by an operator")
    sent_at = time.time()
    send(kafka_bootstrap, orders, [{"id": i} for i in range(20)])

    # Two reports of each orders process after the records were in the log (their poll
    # threads turned for seconds meanwhile): nothing consumed, nothing handled.
    def reported_since(since: float) -> bool:
        seen = {p["pid"]: p["last_seen"] for p in one.fleet()["processes"] if p["pid"] in owners}
        return len(seen) == 2 and all(t > since for t in seen.values())

    wait_until(lambda: reported_since(sent_at + 5), 30, "two reports of each orders process")
    consumed = [
        h["consumed"] for p in one.fleet()["processes"] if p["pid"] in owners for h in p["handlers"]
    ]
    assert consumed == [0, 0]
    assert workers[0].handled(orders) == workers[1].handled(orders) == []

    topic_row.locator('button[data-action="resume"]').click()
    wait_until(
        lambda: len(workers[0].handled(orders)) + len(workers[1].handled(orders)) == 20,
        30,
        "the orders handled once resumed",
    )
    # Both processes took part: each handled its own partitions' records.
    assert workers[0].handled(orders) and workers[1].handled(orders)
    expect(topic_row.locator('[data-field="paused"]')).to_have_text(
        "0 of 4 by an operator", timeout=SHOWN
    )

    # A billing order fails into the DLQ; the explorer shows it, decoded, with its kw.* headers.
    send(kafka_bootstrap, billing, [{"id": 7, "fail": True}])
    failure = page.locator("#failures tr.failure", has_text="order 7 is broken")
    expect(failure).to_have_count(1, timeout=30_000)
    failure.click()
    expect(page.locator('#failures tr.detail [data-field="traceback"]')).to_contain_text(
        "BrokenOrderError"
    )
    page.get_by_test_id("dlq-topic").select_option(f"{billing}.dlq")
    page.get_by_test_id("dlq-load").click()
    dlq_row = page.locator("#dlq-records tr.dlq")
    expect(dlq_row).to_have_count(1, timeout=SHOWN)
    expect(dlq_row.locator('[data-field="value"]')).to_have_text('{"id":7,"fail":true}')
    dlq_row.click()
    expect(page.locator('#dlq-records [data-field="kw"]')).to_contain_text("kw.original.topic")
    expect(page.locator('#dlq-records [data-field="kw"]')).to_contain_text(billing)

    broken.unlink()  # the bug is fixed
    dlq_row.locator('input[type="checkbox"]').check()
    page.get_by_test_id("dlq-replay-selected").click()
    expect(page.get_by_test_id("dlq-result")).to_have_text(
        "replayed 1 record(s) to their source", timeout=30_000
    )
    wait_until(lambda: workers[2].handled(billing) == ["7"], 30, "the replayed order handled")
    audit = page.locator("#audit tr[data-command]")
    expect(audit).to_have_count(3, timeout=SHOWN)  # pause, resume, replay
    expect(audit.first).to_contain_text("replay")

    # kill -9: no final report; three reports missed (15 s), and the page says gone.
    killed = workers[1]
    os.kill(killed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    state = page.locator(f'#processes tr[data-pid="{killed.pid}"] [data-field="state"]')
    expect(state).to_have_text("gone", timeout=20_000)
    assert time.monotonic() - killed_at < 20
    survivor = page.locator(f'#processes tr[data-pid="{workers[0].pid}"] [data-field="state"]')
    expect(survivor).not_to_have_text("gone")
    assert TOKEN not in page.content()
    BUILD.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(BUILD / "fleet.png"), full_page=True)
