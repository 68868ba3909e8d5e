"""The operations CLI against a real broker: topics, offsets (show, reset), lag, check, and
topics taken from settings; the time-lag gauge and partitions added mid-run."""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from kafkaworker import App, Message
from kafkaworker.cli import cli
from tests.conftest import TopicFactory
from tests.support import committed, make_settings, produce, running, wait_until

HOUR_MS = 3_600_000


@pytest.fixture
def env(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Commands run as a user would: from a project directory, the cluster from the env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKAWORKER_LOG_LEVEL", "WARNING")
    return tmp_path


def kw(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> str:
    result = kw(*args)
    assert result.exit_code == 0, result.output
    return result.output


def as_json(*args: str) -> Any:
    return orjson.loads(ok(*args, "--json"))


def produce_at(bootstrap: str, topic: str, stamps_ms: list[int], partition: int = 0) -> None:
    """One record per timestamp (CreateTime), to `partition`, value = its index."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, stamp in enumerate(stamps_ms):
        producer.produce(topic, str(i).encode(), partition=partition, timestamp=stamp)
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_topics_create_describe_list(env: Path, kafka_bootstrap: str) -> None:
    name = f"ops-{uuid.uuid4().hex[:10]}"
    out = ok("topics", "create", name, "--partitions", "3", "--config", "retention.ms=3600000")
    assert out == f"created {name} (3 partition(s))\n"
    listed = {t["name"]: t for t in as_json("topics", "list")}
    assert listed[name] == {"name": name, "partitions": 3, "replication_factor": 1}
    assert not any(n.startswith("__") for n in listed)

    produce(kafka_bootstrap, name, [b"1"] * 5, partitions=[2] * 5)
    described = as_json("topics", "describe", name)
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert [(p["log_start"], p["log_end"]) for p in described["partitions"]] == [
        (0, 0),
        (0, 0),
        (0, 5),
    ]
    assert all(p["leader"] == 1 and p["isr"] == [1] for p in described["partitions"])
    table = ok("topics", "describe", name)
    assert max(map(len, table.splitlines())) <= 80

    again = kw("topics", "create", name, "--partitions", "3")
    assert (again.exit_code, again.output) == (1, f"Error: topic '{name}' exists already\n")
    kept = ok("topics", "create", name, "--partitions", "3", "--if-not-exists")
    assert kept == f"exists {name} (3 partition(s))\n"
    made = ok("topics", "create", name + "-new", "--partitions", "2", "--if-not-exists")
    assert made == f"created {name}-new (2 partition(s))\n"
    bad = kw("topics", "create", name + "x", "--config", "no.such.config=1")
    assert bad.exit_code == 1 and len(bad.output.splitlines()) == 1
    assert "Unknown topic config name: no.such.config" in bad.output
    missing = kw("topics", "describe", name + "-missing")
    assert missing.exit_code == 1
    assert "does not exist" in missing.output and len(missing.output.splitlines()) == 1


def write_app(directory: Path, module: str, source: str, **options: Any) -> str:
    args = "".join(f", {key}={value!r}" for key, value in options.items())
    (directory / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from kafkaworker import App

            app = App("{module}")

            @app.handler({source!r}{args})
            def handle(msg):
                return msg.value
            """
        )
    )
    return f"{module}:app"


def test_topics_create_from_an_app_creates_what_is_missing_sized_as_run_would(
    env: Path, new_topic: TopicFactory
) -> None:
    source = new_topic(3)
    suffix = uuid.uuid4().hex[:8]
    app = write_app(
        env,
        f"creating_{suffix}",
        source,
        dlq=f"{source}.dlq",
        retry_topics=[1],
        output=f"out-{suffix}",
    )
    out = ok("topics", "create", "--from", app, "--partitions", "2")
    lines = sorted(line.split()[:3] for line in out.splitlines())
    assert lines == sorted(
        [
            ["exists", "source", source],
            ["created", "retry", f"{source}.retry.1s"],
            ["created", "dlq", f"{source}.dlq"],
            ["created", "output", f"out-{suffix}"],
        ]
    )

    def partitions(topic: str) -> int:
        return len(as_json("topics", "describe", topic)["partitions"])

    # Retry topics and DLQ sized like the source (as run creates them); the output as asked.
    assert partitions(f"{source}.retry.1s") == 3
    assert partitions(f"{source}.dlq") == 3
    assert partitions(f"out-{suffix}") == 2
    again = ok("topics", "create", "--from", app)
    assert all(line.startswith("exists") for line in again.splitlines())
    checked = ok("check", app).splitlines()
    # Six checks of the cluster and topics, and the handler's processing guarantee.
    assert [line.split()[0] for line in checked] == ["ok"] * 7 + ["7"]


def test_offsets_show_gives_committed_lag_and_time_lag(
    env: Path, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(2)
    hour_ago = int(time.time() * 1000) - HOUR_MS
    produce_at(kafka_bootstrap, topic, [hour_ago + i for i in range(6)], partition=0)
    produce_at(kafka_bootstrap, topic, [hour_ago + HOUR_MS // 2] * 4, partition=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(kafka_bootstrap, group, topic, {0: 2})

    shown = as_json("offsets", "show", group, "--topic", topic)
    assert shown["group"] == group and shown["members"] == []
    rows = {p["partition"]: p for p in shown["partitions"]}
    assert (rows[0]["committed"], rows[0]["log_end"], rows[0]["lag"]) == (2, 6, 4)
    assert (rows[1]["committed"], rows[1]["log_end"], rows[1]["lag"]) == (None, 4, 4)
    # Time lag: the age of the first record not consumed yet (offset 2 on p0, 0 on p1).
    assert 3590 < rows[0]["time_lag"] < 3700
    assert 1790 < rows[1]["time_lag"] < 1900

    # Without --topic: every partition of the topics the group committed to (one it never
    # committed is all lag, not left out).
    unnamed = as_json("offsets", "show", group)["partitions"]
    assert [(p["partition"], p["lag"]) for p in unnamed] == [(0, 4), (1, 4)]
    table = ok("offsets", "show", group, "--topic", topic)
    assert "1h0" in table and "30m0" in table  # durations a person reads at a glance
    lagged = as_json("lag", "--group", group)[group]
    assert [(p["partition"], p["lag"]) for p in lagged["partitions"]] == [(0, 4), (1, 4)]
    [by_app] = as_json("lag", write_app(env, "lagging", topic, group=group)).values()
    assert [(p["partition"], p["lag"]) for p in by_app["partitions"]] == [(0, 4), (1, 4)]


def test_offsets_reset_by_each_selector_dry_run_first(
    env: Path, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    base = int(time.time() * 1000) - HOUR_MS
    produce_at(kafka_bootstrap, topic, [base + i * 1000 for i in range(10)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(kafka_bootstrap, group, topic, {0: 5})

    def target(*selector: str, execute: bool = False) -> int:
        args = ["offsets", "reset", group, "--topic", topic, *selector]
        result = as_json(*args, *(["--execute"] if execute else []))
        assert result["executed"] is execute
        [change] = result["changes"]
        return int(change["target"])

    def now() -> int:
        return committed(kafka_bootstrap, group, topic, 1)[0]

    # A dry run says where the offsets would go and changes nothing.
    assert target("--to-earliest") == 0
    dry = ok("offsets", "reset", group, "--topic", topic, "--to-latest")
    assert "dry run: nothing changed; add --execute to apply" in dry
    assert now() == 5

    at_4s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base + 4000) / 1000)) + "Z"
    cases = [
        (("--to-earliest",), 0),
        (("--to-latest",), 10),
        (("--to-offset", "7"), 7),
        (("--shift-by", "-2"), 5),
        (("--to-datetime", at_4s), 4),
        (("--to-offset", "99"), 10),  # within what the log holds
        (("--shift-by", "-50"), 0),
    ]
    for selector, expected in cases:
        assert target(*selector, execute=True) == expected, selector
        assert now() == expected, selector

    unknown = kw("offsets", "reset", group, "--topic", topic, "--to-earliest", "--partition", "3")
    assert unknown.exit_code == 1 and "there is no 3" in unknown.output
    two = kw("offsets", "reset", group, "--topic", topic, "--to-earliest", "--to-latest")
    assert two.exit_code == 2 and "give one of" in two.output  # a usage error


def test_offsets_reset_is_refused_while_the_group_has_members_then_replays_from_a_time(
    env: Path, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    base = int(time.time() * 1000) - HOUR_MS
    produce_at(kafka_bootstrap, topic, [base + i * 1000 for i in range(10)])
    app = App(f"replay-{uuid.uuid4().hex[:8]}")
    handled: list[int] = []
    lock = threading.Lock()

    @app.handler(topic, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        with lock:
            handled.append(msg.offset)

    settings = make_settings(kafka_bootstrap)
    with running(app, settings):
        wait_until(lambda: len(handled) == 10, 30, "the first run to handle all 10")
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1)[0] == 10, 30, "commit at 10"
        )
        # The preview runs while the workers do, and says what --execute would meet.
        preview = ok("offsets", "reset", app.name, "--topic", topic, "--to-earliest")
        assert "dry run: nothing changed" in preview
        assert (
            f"note: group {app.name!r} has 1 active member(s) ({app.name}.handle): stop its "
            "workers first, then --execute"
        ) in preview
        refused = kw("offsets", "reset", app.name, "--topic", topic, "--to-earliest", "--execute")
        assert refused.exit_code == 1
        assert len(refused.output.splitlines()) == 1
        assert "has 1 active member(s)" in refused.output
        assert "stop its workers first" in refused.output
    assert committed(kafka_bootstrap, app.name, topic, 1)[0] == 10

    at_6s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base + 6000) / 1000)) + "+00:00"
    ok("offsets", "reset", app.name, "--topic", topic, "--to-datetime", at_6s, "--execute")
    handled.clear()
    with running(app, settings):
        wait_until(lambda: len(handled) >= 4, 30, "the replay")
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1)[0] == 10, 30, "commit at 10"
        )
    assert sorted(handled) == [6, 7, 8, 9]  # exactly the records from that time on


def test_offsets_reset_of_a_group_with_no_offsets_needs_yes(
    env: Path, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """A typo of a group's name with --execute would create a new group quietly."""
    topic = new_topic(1)
    produce_at(kafka_bootstrap, topic, [int(time.time() * 1000)] * 3)
    typo = f"g-{uuid.uuid4().hex[:8]}"
    preview = ok("offsets", "reset", typo, "--topic", topic, "--to-latest")
    assert f"note: group {typo!r} has no committed offsets" in preview
    assert "--execute will need --yes" in preview
    refused = kw("offsets", "reset", typo, "--topic", topic, "--to-latest", "--execute")
    assert refused.exit_code == 1
    assert len(refused.output.splitlines()) == 1
    assert f"group {typo!r} has no committed offsets" in refused.output
    assert "confirm with --yes" in refused.output
    assert as_json("offsets", "show", typo)["partitions"] == []  # nothing was created
    ok("offsets", "reset", typo, "--topic", topic, "--to-latest", "--execute", "--yes")
    assert committed(kafka_bootstrap, typo, topic, 1)[0] == 3


def test_check_passes_and_fails_for_each_cause(
    env: Path, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    source, output = new_topic(2), new_topic(1)
    app = write_app(env, f"checked_{uuid.uuid4().hex[:8]}", source, dlq=f"{source}.dlq")
    passed = ok("check", app)
    assert passed.splitlines()[0] == f"ok    brokers: 1 broker(s) at {kafka_bootstrap}"
    assert f"ok    dlq topic {source}.dlq (handle): missing; it will be created at start-up" in (
        passed
    )
    assert kw("topics", "describe", f"{source}.dlq").exit_code == 1  # check created nothing
    assert "may Read; new (no offsets or members yet)" in passed  # not "Dead"
    assert "\nok    handler handle: processing guarantee at_least_once\n" in passed
    (env / "settings.yaml").write_text(
        "member: m7\nhandlers:\n  handle:\n    processing_guarantee: exactly_once\n"
    )
    module = app.split(":")[0]
    assert (
        f"\nok    handler handle: processing guarantee exactly_once (transactional.id "
        f"{module}.handle.m7.0; read its outputs with isolation.level=read_committed)\n"
    ) in ok("check", app)
    (env / "settings.yaml").unlink()

    def failing(app_ref: str, settings: str | None = None) -> list[str]:
        if settings is not None:
            (env / "settings.yaml").write_text(settings)
        result = kw("check", app_ref)
        (env / "settings.yaml").unlink(missing_ok=True)
        assert result.exit_code == 1, result.output
        return [line for line in result.output.splitlines() if line.startswith("FAIL")]

    missing_source = write_app(env, f"nosource_{uuid.uuid4().hex[:8]}", f"{source}-missing")
    assert failing(missing_source) == [
        f"FAIL  source topic {source}-missing (handle): does not exist: create it "
        "(kafkaworker topics create --from MODULE:APP)"
    ]
    missing_output = write_app(
        env, f"nooutput_{uuid.uuid4().hex[:8]}", source, output=f"{output}-missing"
    )
    [line] = failing(missing_output)
    assert line.startswith(f"FAIL  output topic {output}-missing (handle): does not exist")
    [line] = failing(app, "dead_letter:\n  create_topics: false\n")
    assert line == (
        f"FAIL  dlq topic {source}.dlq (handle): does not exist and "
        "dead_letter.create_topics is off"
    )
    [line] = failing(app, "dead_letter:\n  replication_factor: 3\n")
    assert line.startswith(f"FAIL  dlq topic {source}.dlq (handle): missing and cannot be created")
    assert "replication factor of 3 cannot be reached" in line
    # As JSON for a script, and topics from settings are what is checked.
    (env / "settings.yaml").write_text(f"handlers:\n  handle:\n    topics: [{output}]\n")
    report = orjson.loads(kw("check", missing_source, "--json").output)
    assert report["ok"] is True
    assert any(c["name"] == f"source topic {output} (handle)" for c in report["checks"])


def test_a_handler_consumes_the_topics_its_settings_name(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    staging = new_topic(1)
    app = App(f"settings-topics-{uuid.uuid4().hex[:8]}")
    seen: list[bytes] = []

    @app.handler("prod.orders", codec="raw")  # what the code says; not on this cluster
    def handle(msg: Message[bytes]) -> None:
        seen.append(msg.value)

    settings = make_settings(kafka_bootstrap, handlers={"handle": {"topics": [staging]}})
    produce(kafka_bootstrap, staging, [b"a", b"b", b"c"])
    with running(app, settings):
        wait_until(lambda: len(seen) == 3, 30, "the staging topic's records")
    assert sorted(seen) == [b"a", b"b", b"c"]


def test_partitions_added_mid_run_are_consumed_without_a_restart(
    kafka_bootstrap: str, new_topic: TopicFactory, admin: AdminClient
) -> None:
    topic = new_topic(1)
    app = App(f"grow-{uuid.uuid4().hex[:8]}")
    seen: set[tuple[int, bytes]] = set()

    @app.handler(topic, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        seen.add((msg.partition, msg.value))

    with running(app, make_settings(kafka_bootstrap)):
        produce(kafka_bootstrap, topic, [b"first"], partitions=[0])
        wait_until(lambda: (0, b"first") in seen, 30, "the first record")
        added = time.monotonic()
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(30)
        produce(kafka_bootstrap, topic, [b"p1", b"p2"], partitions=[1, 2])
        # Within the metadata refresh interval (10 s) plus a rebalance.
        wait_until(lambda: {(1, b"p1"), (2, b"p2")} <= seen, 40, "the new partitions' records")
        took = time.monotonic() - added
    assert took < 40


def test_time_lag_gauge_is_the_age_of_the_oldest_unfinished_record(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    app = App(f"timelag-{uuid.uuid4().hex[:8]}")
    release = threading.Event()

    @app.handler(topic, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        release.wait(60)

    produce_at(kafka_bootstrap, topic, [int(time.time() * 1000) - HOUR_MS] * 3)
    with running(app, make_settings(kafka_bootstrap)) as runner:
        labels = {"handler": "handle", "topic": topic, "partition": "0"}

        def sample(name: str) -> float | None:
            return runner.metrics.registry.get_sample_value(name, labels)

        age = wait_until(
            lambda: sample("kafkaworker_consumer_lag_seconds"), 30, "the time-lag gauge"
        )
        assert 3590 < age < 3700
        release.set()
        wait_until(
            lambda: sample("kafkaworker_consumer_lag_seconds") == 0.0, 30, "time lag back to 0"
        )
        assert sample("kafkaworker_consumer_lag") == 0
