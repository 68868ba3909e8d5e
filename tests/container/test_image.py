"""The worker image as users run it: built from the Dockerfile with podman, run with
`--network host` against the suite's broker, stopped with `podman stop` and killed with -9."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.conftest import TopicFactory
from tests.container.conftest import ContainerFactory
from tests.container.podman import Container
from tests.support import (
    committed,
    end_offsets,
    produce,
    read_records,
    read_topic,
    wait_until,
)
from tools.image import podman

pytestmark = pytest.mark.container

# The example app shipped in the image (the Dockerfile's CMD), and the fault tests' recorder,
# mounted read-only into the image's working directory (importable from there, as a user's
# app would be): it writes one line per message it starts and finishes.
ORDERS_APP = ["run", "apps.orders.app:app"]
RECORDER_APP = ["run", "tests.apps.recorder:app"]
RECORDER_SOURCE = Path(__file__).resolve().parent.parent / "apps"
# A member killed with -9 holds its partitions until its session times out: keep that short.
FAST_SESSION = '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}'


def test_image_runs_as_non_root_without_build_tools(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image))[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert "9400/tcp" in config["ExposedPorts"]
    # The docker format keeps HEALTHCHECK (the OCI format would have dropped it).
    assert "/healthz" in " ".join(inspected["Healthcheck"]["Test"])
    probe = """
import importlib.util, json, os, shutil, kafkaworker
print(json.dumps({
    "uid": os.getuid(),
    "tools": [t for t in ("gcc", "cc", "c++", "make", "ld", "git") if shutil.which(t)],
    "pip": importlib.util.find_spec("pip") is not None,
    "leftovers": [p for p in ("/wheels", "/src") if os.path.exists(p)],
    "app": sorted(os.listdir("/app")),
    "package": kafkaworker.__file__,
}))
"""
    found = json.loads(
        podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe)
    )
    assert found["uid"] != 0
    assert found["tools"] == []
    assert found["pip"] is False, "the runtime virtualenv has an installer in it"
    assert found["leftovers"] == []
    # What .dockerignore and the COPY lines let in: no tests, benchmarks or virtualenvs.
    assert found["app"] == ["apps", "settings.yaml"]
    assert found["package"].startswith("/opt/kafkaworker/lib/")  # the wheel, not a source copy


@pytest.mark.kafka
def test_example_app_handles_orders_answers_probes_and_runs_as_non_root(
    container: ContainerFactory, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    orders, accepted, dlq = (new_topic(2, prefix=p) for p in ("orders", "accepted", "dlq"))
    worker = container(
        ORDERS_APP,
        env={
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKAWORKER_HANDLERS__ACCEPT_ORDER__TOPICS": orders,
            "KAFKAWORKER_HANDLERS__ACCEPT_ORDER__OUTPUT": accepted,
            "KAFKAWORKER_HANDLERS__ACCEPT_ORDER__DLQ": dlq,
        },
    )
    worker.wait_ready()
    status, body = worker.get("/healthz")
    assert status == 200, body
    assert json.loads(body)["live"] is True
    podman("healthcheck", "run", worker.name)  # the image's HEALTHCHECK passes (exit 0)
    uid = Path(f"/proc/{worker.host_pid()}/status").read_text().split("Uid:")[1].split()
    assert uid[0] != "0" and uid[1] != "0", f"the worker runs as uid {uid}"

    # customer-13 is blocked by the app: dead-lettered at once.
    customers = [f"customer-{10 + i}" for i in range(20)]
    produce(
        kafka_bootstrap,
        orders,
        [
            orjson.dumps({"id": i, "customer": c, "amount": 5.0 + i})
            for i, c in enumerate(customers)
        ],
        keys=[c.encode() for c in customers],
    )
    ids = {orjson.loads(r.value())["id"] for r in read_topic(kafka_bootstrap, accepted, 19)}
    assert ids == set(range(20)) - {3}
    [rejected] = read_topic(kafka_bootstrap, dlq, 1)
    assert orjson.loads(rejected.value())["id"] == 3
    assert worker.stop(30) == 0


def _recorder(
    container: ContainerFactory, bootstrap: str, topic: str, records: Path, **env: str
) -> Container:
    # The worker runs as uid 10001: it must be able to write the record files.
    records.mkdir(mode=0o777)
    records.chmod(0o777)
    return container(
        RECORDER_APP,
        env={
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_KAFKA__CONSUMER": FAST_SESSION,
            "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
            "RECORDER_TOPIC": topic,
            "RECORDER_GROUP": f"group-{topic}",
            "RECORDER_FILE": "/records/finished",
            **env,
        },
        mounts={RECORDER_SOURCE: "/app/tests/apps:ro", records: "/records"},
    )


def _started(records: Path) -> set[tuple[int, int]]:
    path = records / "starts"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(int(p), int(o)) for _pid, p, o in (line.split() for line in lines if line)}


def _finished(records: Path) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in read_records(records / "finished")]


@pytest.mark.kafka
def test_podman_stop_drains_in_flight_messages_and_exits_0(
    container: ContainerFactory, kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic, records = new_topic(4), tmp_path / "records"
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(40)],
        partitions=[i % 4 for i in range(40)],
    )
    worker = _recorder(
        container,
        kafka_bootstrap,
        topic,
        records,
        RECORDER_SLEEP="1.5",  # each message is in flight for 1.5 s
        RECORDER_CONCURRENCY="4",
        RECORDER_STARTS="/records/starts",
        KAFKAWORKER_SHUTDOWN_TIMEOUT="20",
    )
    in_flight = wait_until(
        lambda: (
            _started(records) - set(_finished(records)) if len(_started(records)) >= 4 else None
        ),
        60,
        "messages in flight in the container",
    )
    assert worker.stop(30) == 0  # not 137: drained within the 30 s, not killed
    finished = _finished(records)
    assert in_flight <= set(finished), "a message in flight at the stop never finished"
    assert _started(records) <= set(finished)
    # Committed exactly past what finished, partition by partition (one at a time, in order;
    # a partition with nothing finished at its start, committed when it was assigned).
    done = {p: sum(1 for fp, _ in finished if fp == p) for p in range(4)}
    assert committed(kafka_bootstrap, f"group-{topic}", topic, 4) == done
    assert "worker stopped" in worker.logs()


@pytest.mark.kafka
def test_kill_9_then_restart_loses_nothing(
    container: ContainerFactory, kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic, records, count = new_topic(2), tmp_path / "records", 400
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(count // 2)])
    worker = _recorder(
        container, kafka_bootstrap, topic, records, RECORDER_SLEEP="0.05", RECORDER_CONCURRENCY="2"
    )
    wait_until(lambda: len(_finished(records)) >= 50, 60, "50 messages handled before the kill")
    assert worker.kill() == 137
    before = len(_finished(records))
    assert before < count // 2, "everything was handled before the kill: nothing was tested"
    # The other half arrives while the worker is down.
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(count // 2, count)])
    worker.restart()
    worker.wait_ready()
    wait_until(lambda: len(set(_finished(records))) >= count, 90, f"all {count} messages handled")
    finished = _finished(records)
    expected = {(p, o) for p, n in end_offsets(kafka_bootstrap, topic, 2).items() for o in range(n)}
    assert len(expected) == count
    assert expected - set(finished) == set(), "lost after kill -9"
    # At least once: what was in flight or finished-but-uncommitted at the kill runs again.
    print(f"kill -9: {before} handled before the kill, {len(finished) - count} duplicates")
    assert worker.stop(30) == 0
