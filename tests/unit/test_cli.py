"""The CLI: routes, and one clear line when MODULE:APP cannot be used."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from kafkaworker.cli import cli

APP = textwrap.dedent(
    """
    from kafkaworker import App, Backoff

    app = App("billing")
    not_an_app = 42

    @app.handler(["invoices", "refunds"], concurrency=4, ordering="key", retries=3,
                 dlq="billing.dlq", backoff=Backoff(initial=1), retry_topics=[5, 60])
    def settle(msg):
        pass

    @app.handler("audit", group="auditors", codec="raw")
    def audit(msg):
        pass
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "billing_app.py").write_text(APP)
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no database URL')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_routes_lists_every_handler(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    result = CliRunner().invoke(cli, ["routes", "billing_app:app"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[0] == [
        "NAME",
        "TOPICS",
        "GROUP",
        "CONCURRENCY",
        "ORDERING",
        "RETRIES",
        "DLQ",
        "RETRY_TOPICS",
        "CODEC",
    ]
    assert lines[1] == [
        "settle",
        "invoices,refunds",
        "billing",
        "4",
        "key",
        "3",
        "billing.dlq",
        "5s,60s",
        "json",
    ]
    assert lines[2] == ["audit", "audit", "auditors", "8", "partition", "0", "-", "-", "raw"]


def test_routes_fit_80_columns_and_lose_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(cli, ["routes", "billing_app:app"])
    assert result.exit_code == 0, result.output
    assert max(map(len, result.output.splitlines())) <= 80
    for shown in ("invoices", "refunds", "billing.dlq", "auditors", "partition", "60s"):
        assert shown in result.output


def test_routes_show_what_will_run_with_the_settings_file_and_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "staging.yaml").write_text(
        "handlers:\n  settle:\n    topics: [staging.invoices]\n    dlq: staging.billing.dlq\n"
    )
    monkeypatch.setenv("KAFKAWORKER_HANDLERS__AUDIT__TOPICS", "staging.audit,staging.audit2")
    monkeypatch.setenv("KAFKAWORKER_HANDLERS__AUDIT__CONCURRENCY", "2")
    result = CliRunner().invoke(
        cli, ["routes", "billing_app:app", "--settings", "staging.yaml", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in orjson.loads(result.output)}
    assert rows["settle"]["topics"] == ["staging.invoices"]
    assert rows["settle"]["dlq"] == "staging.billing.dlq"
    assert rows["settle"]["retries"] == 3  # the decorator's, not overridden
    assert rows["settle"]["retry_topics"] == [5, 60]
    assert rows["audit"]["topics"] == ["staging.audit", "staging.audit2"]
    assert (rows["audit"]["concurrency"], rows["audit"]["dlq"], rows["audit"]["batch"]) == (
        2,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("billing_app", "'billing_app' is not MODULE:APP (for example myapp:app)"),
        (
            "nosuch:app",
            "cannot import module 'nosuch' (from 'nosuch:app'): no module named "
            "'nosuch'; run from the directory that holds it, or fix the name",
        ),
        (
            "billing_app:application",
            "module 'billing_app' has no attribute 'application'; it defines: app",
        ),
        ("billing_app:not_an_app", "'billing_app:not_an_app' is a int, not a kafkaworker.App"),
        (
            "broken_app:app",
            "importing 'broken_app' raised RuntimeError: no database URL (at broken_app.py:1)",
        ),
    ],
)
def test_unusable_app_reference_is_one_line(project: Path, reference: str, expected: str) -> None:
    result = CliRunner().invoke(cli, ["run", reference])
    assert result.exit_code == 1
    assert result.output == f"Error: {expected}\n"


def test_unreachable_broker_fails_fast_with_one_line(project: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kafkaworker", "run", "billing_app:app"],
        cwd=project,
        env={
            "PATH": "/usr/bin:/bin",
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "KAFKAWORKER_STARTUP_TIMEOUT": "2",
            "PYTHONPATH": str(Path.cwd()),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith("Error: cannot reach Kafka at 127.0.0.1:9 within 2s")
    assert "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS" in errors[0]
    assert elapsed < 30
    # Said once, before giving up: what it waits for, and how long (issue 30, item 5).
    lines = result.stderr.splitlines()
    waiting = [line for line in lines if "waiting for Kafka to answer" in line]
    assert len(waiting) == 1, result.stderr
    assert "bootstrap=127.0.0.1:9" in waiting[0]
    assert "gives_up_after='2s (startup_timeout)'" in waiting[0]
    assert lines.index(waiting[0]) < lines.index(errors[0])


# Every command that talks to the cluster, as a user would type it.
CLUSTER_COMMANDS = [
    ["run", "billing_app:app"],
    ["check", "billing_app:app"],
    ["lag", "billing_app:app"],
    ["lag", "--group", "billing"],
    ["topics", "list"],
    ["topics", "describe", "invoices"],
    ["topics", "create", "invoices", "--partitions", "3"],
    ["topics", "create", "--from", "billing_app:app"],
    ["offsets", "show", "billing"],
    ["offsets", "reset", "billing", "--topic", "invoices", "--to-earliest"],
    ["produce", "invoices"],
    ["dlq", "inspect", "billing.dlq"],
    ["dlq", "replay", "billing.dlq"],
]


def _spawn(
    project: Path, command: list[str], bootstrap: str, startup_timeout: float = 2
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kafkaworker", *command],
        cwd=project,
        env={
            "PATH": "/usr/bin:/bin",
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_STARTUP_TIMEOUT": str(startup_timeout),
            "PYTHONPATH": str(Path.cwd()),
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_every_command_with_an_unreachable_broker_says_so_in_one_line(project: Path) -> None:
    # Started together: each waits out its 2 s startup_timeout.
    running = [(command, _spawn(project, command, "127.0.0.1:9")) for command in CLUSTER_COMMANDS]
    for command, process in running:
        output, _ = process.communicate(timeout=60)
        lines = output.strip().splitlines()
        # check prints its FAIL line, then the count; every other command one Error: line.
        assert process.returncode == 1, (command, output)
        assert len(lines) <= 2, (command, output)
        assert "cannot reach Kafka at 127.0.0.1:9 within 2s" in output, (command, output)
        assert "librdkafka" not in output and "rdkafka#" not in output, (command, output)


class SilentBroker:
    """A port that accepts connections and never answers (a broker not up yet); `reached`
    is set once a client connected, so a test knows the command is waiting on it."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.bootstrap = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.reached = threading.Event()
        self._accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._accepted.append(self._listener.accept()[0])
                self.reached.set()

    def close(self) -> None:
        for connection in self._accepted:
            connection.close()
        self._listener.close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_cluster_does_not_answer_exits_at_once(
    project: Path, signum: int, code: int
) -> None:
    brokers = [SilentBroker() for _ in CLUSTER_COMMANDS]
    running = [
        (command, _spawn(project, command, broker.bootstrap, startup_timeout=60))
        for command, broker in zip(CLUSTER_COMMANDS, brokers, strict=True)
    ]
    try:
        for (command, process), broker in zip(running, brokers, strict=True):
            assert broker.reached.wait(30), (command, process.poll())
        signalled = time.monotonic()
        for _, process in running:
            process.send_signal(signum)
        for command, process in running:
            err, _ = process.communicate(timeout=30)  # stderr is merged into stdout
            took = time.monotonic() - signalled
            assert process.returncode == code, (command, err)
            said = "interrupted" if signum == signal.SIGINT else "terminated"
            assert err.strip().splitlines()[-1:] == [said], (command, err)
            assert took < 2, (command, took)
    finally:
        for _, process in running:
            process.kill()
        for broker in brokers:
            broker.close()


# -- issue 30: what a newcomer tripped on ------------------------------------------------------


def test_an_import_error_names_where_the_users_code_raised_in_one_line(project: Path) -> None:
    (project / "deepimport.py").write_text("import helper\n\nfrom kafkaworker import App\n")
    (project / "helper.py").write_text(
        '"""A module the app imports."""\n\n\ndef load():\n    return undefined_name\n\n\n'
        "VALUE = load()\n"
    )
    result = CliRunner().invoke(cli, ["routes", "deepimport:app"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: importing 'deepimport' raised NameError: name 'undefined_name' is not defined "
        "(at helper.py:5 in load, from helper.py:8, from deepimport.py:1)\n"
    )


WIDE_APP = textwrap.dedent(
    """
    from kafkaworker import App

    app = App("a-very-long-application-name-for-its-group")

    @app.handler(["orders.incoming.priority", "orders.incoming.standard"],
                 dlq="orders.incoming.dead-letters", retries=3)
    def handle_order_with_a_long_name(msg):
        pass
    """
)


def test_routes_piped_are_not_wrapped(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal (CliRunner's output, a pipe) and no COLUMNS: whole lines, whole words,
    as grep and awk want them; with COLUMNS (or on a terminal) the table fits it."""
    (project / "wide_app.py").write_text(WIDE_APP)
    monkeypatch.delenv("COLUMNS", raising=False)
    piped = CliRunner().invoke(cli, ["routes", "wide_app:app"])
    assert piped.exit_code == 0, piped.output
    header, row = piped.output.splitlines()
    assert header.split()[:3] == ["NAME", "TOPICS", "GROUP"]
    assert row.split()[:3] == [
        "handle_order_with_a_long_name",
        "orders.incoming.priority,orders.incoming.standard",
        "a-very-long-application-name-for-its-group",
    ]
    monkeypatch.setenv("COLUMNS", "80")
    fitted = CliRunner().invoke(cli, ["routes", "wide_app:app"])
    assert max(map(len, fitted.output.splitlines())) <= 80


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["lag"], "give MODULE:APP or --group GROUP (one of them)"),
        (["lag", "billing_app:app", "--group", "g"], "give MODULE:APP or --group GROUP"),
        (["offsets", "reset", "billing", "--topic", "invoices"], "give one of --to-earliest"),
        (
            ["offsets", "reset", "billing", "--topic", "t", "--to-earliest", "--to-latest"],
            "give one of --to-earliest",
        ),
        (["offsets", "reset", "g", "--topic", "t", "--to-earliest", "--yes"], "--yes goes with"),
        (["topics", "create"], "give a topic NAME or --from MODULE:APP"),
        (["topics", "create", "t", "--from", "billing_app:app"], "give a topic NAME or --from"),
    ],
)
def test_usage_errors_exit_2_before_any_connection(
    project: Path, command: list[str], expected: str
) -> None:
    # A cluster that does not answer: a usage error is found before asking it anything.
    result = CliRunner(env={"KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}).invoke(
        cli, command
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "cannot reach Kafka" not in result.output


def test_settings_prints_each_effective_value_with_its_source_and_masks_secrets(
    project: Path,
) -> None:
    (project / "settings.yaml").write_text(
        "shutdown_timeout: 5\n"
        "kafka:\n  security:\n    protocol: SASL_SSL\n    sasl:\n      mechanism: PLAIN\n"
        "      username: app\n      password: hunter2\n"
        "schema_registry:\n  url: https://reg:s3cret@registry:8081\n"
        "  config:\n    basic.auth.user.info: 'u:pw'\n"
    )
    result = CliRunner(env={"KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": "broker:9092"}).invoke(
        cli, ["settings", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["setting"]: (row["value"], row["source"]) for row in orjson.loads(result.output)}
    in_file = "settings file 'settings.yaml'"
    assert rows["kafka.bootstrap_servers"] == (
        "broker:9092",
        "environment KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS",
    )
    assert rows["shutdown_timeout"] == (5.0, in_file)
    assert rows["revoke_timeout"] == (30.0, "default")
    assert rows["kafka.security.sasl.username"] == ("app", in_file)
    assert rows["kafka.security.sasl.password"] == ("**********", in_file)
    assert rows["schema_registry.url"] == ("https://reg:**********@registry:8081", in_file)
    assert rows["schema_registry.config.basic.auth.user.info"] == ("**********", in_file)
    for secret in ("hunter2", "s3cret", "u:pw"):
        assert secret not in result.output
    table = CliRunner().invoke(cli, ["settings"])
    assert table.exit_code == 0, table.output
    assert "hunter2" not in table.output
    assert any(
        line.split()[:2] == ["shutdown_timeout", "5.0"] and line.endswith(in_file)
        for line in table.output.splitlines()
    )


def test_settings_of_an_app_with_its_own_settings_names_them(project: Path) -> None:
    (project / "own_app.py").write_text(
        "from kafkaworker import App, Settings\n"
        "app = App('own', settings=Settings(shutdown_timeout=7))\n"
    )
    result = CliRunner().invoke(cli, ["settings", "own_app:app", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["setting"]: (row["value"], row["source"]) for row in orjson.loads(result.output)}
    assert rows["shutdown_timeout"] == (7.0, "App(settings=...)")
    assert rows["revoke_timeout"] == (30.0, "default")
