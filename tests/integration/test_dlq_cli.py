"""`kafkaworker dlq inspect` and `dlq replay` against the real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from kafkaworker import Message
from kafkaworker.cli import cli
from kafkaworker.producer import Producer
from kafkaworker.runtime.execute.outputs import FailureRecords
from tests.conftest import TopicFactory
from tests.support import end_offsets, make_settings, read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def dlq_records(kafka_bootstrap: str, new_topic: TopicFactory) -> dict[str, str]:
    """A DLQ with 5 records: 3 ValueErrors (2 from orders, 1 from payments), 2 KeyErrors."""
    orders, payments, dlq = new_topic(1), new_topic(1), new_topic(2, prefix="dlq")
    producer = Producer(make_settings(kafka_bootstrap))
    records = FailureRecords(dlq, group="svc", handler="h")
    failures: list[tuple[str, bytes, BaseException]] = [
        (orders, b'{"id": 1}', ValueError("no items")),
        (orders, b"\xff\xfe", KeyError("sku")),
        (payments, b'{"id": 3}', ValueError("negative")),
        (orders, b'{"id": 4}', ValueError("no items")),
        (payments, b'{"id": 5}', KeyError("iban")),
    ]
    for offset, (topic, value, error) in enumerate(failures):
        msg: Message[Any] = Message(
            topic,
            None,
            offset=offset,
            key=b"k%d" % offset,
            raw_value=value,
            headers=[("trace", b"t%d" % offset)],
        )
        record = records.dead_letter(msg, error)
        producer.send_sync(record.topic, record.value, key=record.key, headers=record.headers)
    producer.close()
    return {"orders": orders, "payments": payments, "dlq": dlq, "other": new_topic(1)}


def run(bootstrap: str, tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        list(args),
        env={
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_SETTINGS": "",
        },
        catch_exceptions=False,
    )


@pytest.fixture(autouse=True)
def no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_inspect_shows_origin_and_error_of_each_record(
    kafka_bootstrap: str, tmp_path: Path, dlq_records: dict[str, str]
) -> None:
    result = run(kafka_bootstrap, tmp_path, "dlq", "inspect", dlq_records["dlq"], "--json")
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5
    by_value = {row["value"] if isinstance(row["value"], str) else "binary": row for row in rows}
    first = by_value['{"id": 1}']
    assert first["original"] == {
        "topic": dlq_records["orders"],
        "partition": 0,
        "offset": 0,
        "timestamp": -1,
    }
    assert first["error"]["type"] == "builtins.ValueError"
    assert first["error"]["message"] == "no items"
    assert (first["group"], first["handler"], first["attempts"]) == ("svc", "h", 1)
    assert first["headers"] == [["trace", "t0"]]
    assert by_value["binary"]["value"] == {"base64": "//4="}

    limited = run(kafka_bootstrap, tmp_path, "dlq", "inspect", dlq_records["dlq"], "--limit", "2")
    assert limited.exit_code == 0
    lines = limited.stdout.splitlines()
    assert len(lines) == 6  # three lines a record
    assert " from " in lines[0] and "builtins." in lines[1]


def test_inspect_names_a_missing_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run(kafka_bootstrap, tmp_path, "dlq", "inspect", "no-such-dlq")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: topic 'no-such-dlq' does not exist on {kafka_bootstrap}: "
        "check the name (kafkaworker topics list)\n"
    )


def test_replay_moves_exactly_the_selected_records_once(
    kafka_bootstrap: str, tmp_path: Path, dlq_records: dict[str, str]
) -> None:
    orders, payments, dlq = dlq_records["orders"], dlq_records["payments"], dlq_records["dlq"]
    dry = run(
        kafka_bootstrap, tmp_path, "dlq", "replay", dlq, "--error-type", "ValueError", "--dry-run"
    )
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("would replay ") == 4  # 3 lines and the summary
    assert end_offsets(kafka_bootstrap, orders, 1) == {0: 0}

    first = run(kafka_bootstrap, tmp_path, "dlq", "replay", dlq, "--error-type", "ValueError")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[-1] == f"replayed 3 of 5 record(s) from {dlq} (2 filtered out)"
    # What it sent, one line a record, as the dry run listed what it would send.
    sent = sorted(line for line in first.stdout.splitlines() if line.startswith("sent "))
    would = sorted(
        line.removeprefix("would ").replace("replay ", "sent ", 1)
        for line in dry.stdout.splitlines()[:-1]
    )
    assert sent == would and len(sent) == 3
    assert all(line.endswith("(builtins.ValueError)") for line in sent)
    replayed = read_topic(kafka_bootstrap, orders, 2) + read_topic(kafka_bootstrap, payments, 1)
    assert sorted(r.value() for r in replayed) == [b'{"id": 1}', b'{"id": 3}', b'{"id": 4}']
    one = next(r for r in replayed if r.value() == b'{"id": 1}')
    assert one.key() == b"k0"
    headers = one.headers()
    assert headers[0] == ("trace", b"t0")
    assert [name for name, _ in headers] == ["trace", "kw.replayed_from"]
    assert headers[1][1].decode().startswith(f"{dlq}[")

    again = run(kafka_bootstrap, tmp_path, "dlq", "replay", dlq, "--error-type", "ValueError")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[-1] == f"replayed 0 of 0 record(s) from {dlq} (0 filtered out)"
    assert end_offsets(kafka_bootstrap, orders, 1) == {0: 2}
    assert end_offsets(kafka_bootstrap, payments, 1) == {0: 1}


def test_replay_to_another_topic_with_a_limit(
    kafka_bootstrap: str, tmp_path: Path, dlq_records: dict[str, str]
) -> None:
    other = dlq_records["other"]
    result = run(
        kafka_bootstrap,
        tmp_path,
        "dlq",
        "replay",
        dlq_records["dlq"],
        "--to",
        other,
        "--limit",
        "2",
        "--rate",
        "50",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("replayed 2 of ")
    assert end_offsets(kafka_bootstrap, other, 1) == {0: 2}
    assert end_offsets(kafka_bootstrap, dlq_records["orders"], 1) == {0: 0}


def test_inspect_json_keeps_where_a_record_was_replayed_from(
    kafka_bootstrap: str, tmp_path: Path, new_topic: TopicFactory
) -> None:
    """A record replayed from a DLQ that failed again: its kw.replayed_from is kept."""
    orders, dlq = new_topic(1), new_topic(1, prefix="dlq")
    producer = Producer(make_settings(kafka_bootstrap))
    msg: Message[Any] = Message(
        orders, None, offset=7, key=b"k", raw_value=b"{}",
        headers=[("kw.replayed_from", b"old.dlq[0]@3")],
    )  # fmt: skip
    record = FailureRecords(dlq, group="svc", handler="h").dead_letter(msg, ValueError("again"))
    producer.send_sync(record.topic, record.value, key=record.key, headers=record.headers)
    producer.close()
    result = run(kafka_bootstrap, tmp_path, "dlq", "inspect", dlq, "--json")
    assert result.exit_code == 0, result.output
    [row] = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert row["replayed_from"] == "old.dlq[0]@3"
    assert row["original"]["offset"] == 7


def test_replay_since_takes_iso_times_and_its_help_shows_examples(
    kafka_bootstrap: str, tmp_path: Path, dlq_records: dict[str, str]
) -> None:
    helped = run(kafka_bootstrap, tmp_path, "dlq", "replay", "--help")
    assert "%Y" not in helped.output
    assert "2026-11-28T09:30:00+01:00" in helped.output
    future = run(
        kafka_bootstrap, tmp_path, "dlq", "replay", dlq_records["dlq"], "--dry-run",
        "--since", "2999-01-01T00:00:00Z",
    )  # fmt: skip
    assert future.exit_code == 0, future.output
    assert future.stdout.splitlines()[-1].endswith("(5 filtered out)")
    past = run(
        kafka_bootstrap, tmp_path, "dlq", "replay", dlq_records["dlq"], "--dry-run",
        "--since", "2020-01-01",
    )  # fmt: skip
    assert past.stdout.splitlines()[-1].startswith("would replay 5 of 5")
    bad = run(kafka_bootstrap, tmp_path, "dlq", "replay", dlq_records["dlq"], "--since", "May")
    assert bad.exit_code == 2 and "is not an ISO 8601 time" in bad.output
