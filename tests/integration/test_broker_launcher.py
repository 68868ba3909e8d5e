"""The broker launcher never leaves a JVM behind and says in one line what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kafkaworker.testing import broker
from kafkaworker.testing.jvm import free_port, port_answers

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but is still listed until its parent reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.kafka
def test_broker_dies_with_a_parent_killed_by_sigkill() -> None:
    script = (
        "from kafkaworker.testing.broker import Cluster\n"
        "import sys, time\n"
        "c = Cluster(1)\n"
        "c.start()\n"
        "print(c.nodes[0].process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    jvm = int(parent.stdout.readline())
    assert _alive(jvm)
    parent.kill()
    parent.wait()
    assert _wait_dead(jvm, 15), f"JVM {jvm} outlived its parent"


@pytest.mark.kafka
def test_dev_broker_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    stderr = tmp_path / "broker-stderr.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kafkaworker.testing.broker", "run", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        # As under a shell's background job: SIGINT inherited as ignored must not stop Ctrl+C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    assert f"127.0.0.1:{port}" in banner
    jvm = int(banner.split("(pid ", 1)[1].split(",", 1)[0])
    assert _alive(jvm)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # dumps its Python stack to stderr
        time.sleep(1)
        proc.kill()
        raise AssertionError(
            f"the dev broker ignored Ctrl+C; its stack:\n{stderr.read_text()}"
        ) from None
    assert code == 0
    assert _wait_dead(jvm, 15)
    assert not port_answers(port)


def test_missing_maven_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    java_dir = Path(
        os.path.realpath(
            subprocess.run(
                ["sh", "-c", "command -v java"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    ).parent
    monkeypatch.setenv("PATH", str(java_dir))
    with pytest.raises(broker.BrokerError) as error:
        broker.ensure_jars()
    message = str(error.value)
    assert "'mvn' is not on PATH" in message
    assert "\n" not in message


def test_a_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    # Random ids are URL-safe base64: about one in 64 starts with "-", which the storage
    # tool's argparse would take for an option.
    node = broker.Node(
        node_id=1,
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path / "node1",
        jars=broker.ensure_jars(),
        heap="256m",
    )
    node.write_config(f"1@127.0.0.1:{node.controller_port}", "-" + "A" * 21, share_groups=False)
    assert (tmp_path / "node1" / "data" / "meta.properties").exists()


def _start_dev_broker(port: int, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kafkaworker.testing.broker", "run", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, [proc.stdout.readline(), proc.stdout.readline()]


@pytest.mark.kafka
def test_dev_broker_says_where_its_data_goes_and_keeps_it_with_data(tmp_path: Path) -> None:
    """Issue 30, item 11: the dev broker's data vanished on stop, unannounced."""
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    port = free_port()
    data = tmp_path / "kafka-data"
    proc, banner = _start_dev_broker(port, "--data", str(data))
    try:
        assert "kept after it stops: --data DIR again resumes it" in banner[1]
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        admin.create_topics([NewTopic("kept", 2, 1)])["kept"].result(timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    proc, banner = _start_dev_broker(port, "--data", str(data))
    try:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        found = admin.list_topics(timeout=30).topics
        assert "kept" in found and len(found["kept"].partitions) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert data.is_dir()  # a directory it was given is never removed

    proc, banner = _start_dev_broker(free_port())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "deleted when it stops; --data DIR keeps it across runs" in banner[1]
    assert not Path(banner[0].split("data ", 1)[1].split(")", 1)[0]).exists()


@pytest.mark.parametrize("module", ["kafkaworker.testing.broker", "kafkaworker.testing.registry"])
def test_fetch_prints_where_the_cached_server_is(module: str) -> None:
    """`make jars` runs these: the cache is filled before the suite starts, so a fetch only
    says where (a broken command line failed CI before any test ran)."""
    done = subprocess.run(
        [sys.executable, "-m", module, "fetch"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).exists()
