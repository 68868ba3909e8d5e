"""The README's getting started against a real broker: what `lag` prints for the tutorial's
worker is what the README shows (issue 30, item 13)."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kafkaworker.cli import cli, load_app
from tests.conftest import TopicFactory
from tests.support import ROOT, committed, make_settings, running, wait_until

pytestmark = pytest.mark.kafka

README = (ROOT / "README.md").read_text()


def readme_output(command: str) -> list[str]:
    """The lines the README shows after `$ <command>` in the getting started."""
    section = README.split("## Getting started", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"$ {command}\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.strip().startswith(("$", "```")):
            break
        lines.append(line.strip())
    return lines


def test_lag_of_the_tutorials_worker_reads_as_in_the_readme(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
) -> None:
    topic = new_topic(3)
    group = f"orders-service-{uuid.uuid4().hex[:6]}"
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            f"""
            from kafkaworker import App

            app = App({group!r})

            @app.handler({topic!r}, retries=2, dlq={topic + ".dlq"!r})
            def handle_order(msg):
                if "id" not in msg.value:
                    raise ValueError("an order needs an id")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    app = load_app("myapp:app")
    # Step 6, as the README types it (its key, its partitioner: murmur2, as Java's).
    sent = CliRunner().invoke(
        cli,
        ["produce", topic, "--key", "customer-9"],
        input='{"id": 1}\n{"id": 2}\n{"total": 3}\n',
    )
    assert sent.exit_code == 0, sent.output
    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: sum(committed(kafka_bootstrap, group, topic, 3).values()) == 3,
            60,
            "the three orders committed",
        )
        shown = CliRunner().invoke(cli, ["lag", "myapp:app"])
    assert shown.exit_code == 0, shown.output

    def named(line: str) -> list[str]:
        line = line.replace(group, "GROUP").replace(topic, "TOPIC")
        return line.replace("orders-service", "GROUP").replace("orders", "TOPIC").split()

    assert [named(line) for line in shown.output.splitlines()] == [
        named(line) for line in readme_output("kafkaworker lag myapp:app")
    ]
