"""kafkaworker on a secured cluster: real `kafkaworker run` processes and the operations
commands over SASL_SSL (SCRAM, PLAIN) and mTLS against the secured test broker (ACLs under
the StandardAuthorizer); every refusal is one line; the password never shows anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AclBindingFilter, AclOperation, AdminClient, NewTopic

from kafkaworker import App, DeadLetter, Message
from kafkaworker.testing.broker import Secured
from kafkaworker.testing.jvm import free_port
from tests.support import committed, make_settings, produce, read_topic, running, wait_until

ROOT = Path(__file__).resolve().parents[2]

APP = """
from kafkaworker import App, DeadLetter, Message

app = App("{name}")


@app.handler({source!r}, group={group!r}, output={output!r}, dlq={dlq!r}, codec="raw")
def handle(msg: Message[bytes]) -> bytes:
    if msg.value.startswith(b"bad"):
        raise DeadLetter("a bad order")
    return msg.value.upper()
"""


def security_env(secured: Secured, mode: str, **changes: str) -> dict[str, str]:
    """KAFKAWORKER_* variables for user app on one of the secured listeners."""
    prefix = "KAFKAWORKER_KAFKA__SECURITY__"
    if mode == "mtls":
        env = {
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": secured.mtls_bootstrap,
            prefix + "PROTOCOL": "SSL",
            prefix + "SSL__CA_LOCATION": str(secured.ca_location),
            prefix + "SSL__CERTIFICATE_LOCATION": str(secured.app_cert.certificate),
            prefix + "SSL__KEY_LOCATION": str(secured.app_cert.key),
        }
    else:
        env = {
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": secured.sasl_ssl_bootstrap,
            prefix + "PROTOCOL": "SASL_SSL",
            prefix + "SASL__MECHANISM": {"scram": "SCRAM-SHA-512", "plain": "PLAIN"}[mode],
            prefix + "SASL__USERNAME": secured.app_user,
            prefix + "SASL__PASSWORD": secured.app_password,
            prefix + "SSL__CA_LOCATION": str(secured.ca_location),
        }
    return {**env, **{prefix + key: value for key, value in changes.items()}}


def kafkaworker(
    cwd: Path, env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """A kafkaworker command as a user runs it: its own process, settings from the env."""
    return subprocess.run(
        [sys.executable, "-m", "kafkaworker", *args],
        cwd=cwd,
        env=_process_env(cwd, env),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _process_env(cwd: Path, env: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")}
    return {
        **inherited,
        "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)]),
        "KAFKAWORKER_STARTUP_TIMEOUT": "10",
        **env,
    }


def write_app(directory: Path, **names: str) -> str:
    module = f"secured_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(textwrap.dedent(APP.format(name=module, **names)))
    return f"{module}:app"


def create_topics(secured: Secured, *names: str, partitions: int = 2) -> None:
    """As the super user on the plain listener (the app's user may not create topics)."""
    admin = AdminClient({"bootstrap.servers": secured.plain_bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions) for n in names]).values():
        future.result(30)


def app_names(prefix: str = "app-") -> dict[str, str]:
    base = f"{prefix}{uuid.uuid4().hex[:8]}"
    return {
        "source": base,
        "output": f"{base}.out",
        "dlq": f"{base}.dlq",
        "group": f"{base}-group",
    }


def leaks(secret: str, *texts: str) -> list[str]:
    return [text[max(0, text.find(secret) - 200) :][:400] for text in texts if secret in text]


@pytest.mark.parametrize("mode", ["scram", "plain", "mtls"])
def test_a_worker_and_every_command_over_each_secured_listener(
    secured_kafka: Secured, tmp_path: Path, mode: str
) -> None:
    names = app_names()
    create_topics(secured_kafka, names["source"], names["output"])
    app_ref = write_app(tmp_path, **names)
    env = security_env(secured_kafka, mode)
    # librdkafka's own debug lines about security and its configuration, and the runtime's.
    env["KAFKAWORKER_LOG_LEVEL"] = "DEBUG"
    env["KAFKAWORKER_KAFKA__CONSUMER"] = '{"debug": "security,conf"}'
    env["KAFKAWORKER_COMMIT_INTERVAL"] = "0.2"

    checked = kafkaworker(tmp_path, env, "check", app_ref)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ok    source topic {names['source']} (handle): exists, 2 partition(s), may Read" in (
        checked.stdout
    )
    routes = kafkaworker(tmp_path, env, "routes", app_ref, "--json")
    assert routes.returncode == 0, routes.stderr
    orders = b"".join(b"order-%d\n" % i for i in range(10)) + b"bad-1\nbad-2\n"
    produced = kafkaworker(
        tmp_path, env, "produce", names["source"], "--codec", "text", stdin=orders
    )
    assert produced.returncode == 0, produced.stderr

    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", "run", app_ref, "--metrics-port", str(port)],
            cwd=tmp_path,
            env=_process_env(tmp_path, env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        outputs = read_topic(secured_kafka.plain_bootstrap, names["output"], 10, timeout=60)
        assert sorted(r.value() for r in outputs) == sorted(b"ORDER-%d" % i for i in range(10))
        inspected = wait_until(
            lambda: (
                r
                if (
                    r := kafkaworker(tmp_path, env, "dlq", "inspect", names["dlq"], "--json")
                ).stdout.count("\n")
                >= 2
                else None
            ),
            60,
            "two records in the DLQ",
        )
        dead = [orjson.loads(line) for line in inspected.stdout.splitlines()]
        assert sorted(d["value"] for d in dead) == ["bad-1", "bad-2"]
        shown = wait_until(
            lambda: (
                r
                if (
                    r := kafkaworker(tmp_path, env, "offsets", "show", names["group"], "--json")
                ).returncode
                == 0
                and [p["lag"] for p in orjson.loads(r.stdout)["partitions"]] == [0, 0]
                else None
            ),
            60,
            "the group committed to the end",
        )
        endpoints = [
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
            for path in ("/metrics", "/healthz", "/readyz")
        ]
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]

    # With the worker gone: replay the DLQ (its progress in a group the user may use) and
    # move the group back to the start.
    replayed_to = f"{names['source']}.replayed"
    create_topics(secured_kafka, replayed_to)
    replayed = kafkaworker(
        tmp_path, env, "dlq", "replay", names["dlq"], "--to", replayed_to,
        "--group", f"{names['group']}-replay",
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    again = read_topic(secured_kafka.plain_bootstrap, replayed_to, 2, timeout=30)
    assert sorted(r.value() for r in again) == [b"bad-1", b"bad-2"]
    reset = kafkaworker(
        tmp_path, env, "offsets", "reset", names["group"], "--topic", names["source"],
        "--to-earliest", "--execute",
    )  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    rewound = kafkaworker(tmp_path, env, "offsets", "show", names["group"], "--json")
    assert [p["committed"] for p in orjson.loads(rewound.stdout)["partitions"]] == [0, 0]

    help_texts = [kafkaworker(tmp_path, env, cmd, "--help").stdout for cmd in ("run", "check")]
    secrets = [secured_kafka.app_password, secured_kafka.app_cert.key.read_text().splitlines()[1]]
    for secret in secrets:
        assert not leaks(
            secret,
            output,
            checked.stdout + checked.stderr,
            routes.stdout + routes.stderr,
            produced.stdout + produced.stderr,
            inspected.stdout + inspected.stderr,
            shown.stdout + shown.stderr,
            replayed.stdout + replayed.stderr,
            reset.stdout + reset.stderr,
            *endpoints,
            *help_texts,
        )
    if mode != "mtls":  # the SASL handshake was logged at DEBUG, without the password
        assert "SASL" in output or "sasl" in output, output[-3000:]


def test_a_wrong_password_fails_start_up_in_one_line_without_a_retry_storm(
    secured_kafka: Secured, tmp_path: Path
) -> None:
    names = app_names()
    create_topics(secured_kafka, names["source"])
    env = security_env(secured_kafka, "scram", SASL__PASSWORD="not-the-password")
    started = time.monotonic()
    result = kafkaworker(tmp_path, env, "run", write_app(tmp_path, **names))
    took = time.monotonic() - started
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) <= 2, lines  # the error, not pages of librdkafka retries
    assert lines[-1].startswith(
        f"Error: authentication failed at {secured_kafka.sasl_ssl_bootstrap} "
        "(SASL_SSL, SCRAM-SHA-512, user 'app'): "
    ), lines
    assert took < 10, took  # within startup_timeout: at the first refusal, in fact
    assert "not-the-password" not in result.stdout + result.stderr


def test_certificate_problems_are_one_line_each(secured_kafka: Secured, tmp_path: Path) -> None:
    names = app_names()
    create_topics(secured_kafka, names["source"])
    app_ref = write_app(tmp_path, **names)

    def error(env: dict[str, str]) -> str:
        result = kafkaworker(tmp_path, env, "check", app_ref)
        assert result.returncode == 1, result.stdout
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        failed = [line for line in lines if line.startswith(("Error:", "FAIL"))]
        assert len(failed) == 1, lines
        return failed[0]

    untrusted_ca = secured_kafka.untrusted_ca_location()
    line = error(security_env(secured_kafka, "scram", SSL__CA_LOCATION=str(untrusted_ca)))
    assert "TLS handshake with" in line and "certificate verify failed" in line, line

    line = error(security_env(secured_kafka, "mtls", SSL__CA_LOCATION="/nowhere/ca.pem"))
    assert "ca_location '/nowhere/ca.pem' cannot be read (No such file or directory)" in line

    line = error(security_env(secured_kafka, "mtls", SSL__KEY_LOCATION=str(tmp_path / "no.key")))
    assert f"key_location '{tmp_path / 'no.key'}' cannot be read" in line, line
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    line = error(security_env(secured_kafka, "mtls", SSL__KEY_LOCATION=str(garbage)))
    assert "ssl.key.location" in line, line

    expired = secured_kafka.expired_cert()
    line = error(
        security_env(
            secured_kafka,
            "mtls",
            SSL__CERTIFICATE_LOCATION=str(expired.certificate),
            SSL__KEY_LOCATION=str(expired.key),
        )
    )
    assert f"certificate_location '{expired.certificate}' expired on " in line, line

    untrusted = secured_kafka.untrusted_cert()
    line = error(
        security_env(
            secured_kafka,
            "mtls",
            SSL__CERTIFICATE_LOCATION=str(untrusted.certificate),
            SSL__KEY_LOCATION=str(untrusted.key),
        )
    )
    assert "refused this client's TLS certificate" in line, line
    assert str(untrusted.certificate) in line, line


def test_acls_missing_for_a_source_a_dlq_or_the_group_fail_start_up_in_one_line(
    secured_kafka: Secured, tmp_path: Path
) -> None:
    def refused(env: dict[str, str], **names: str) -> str:
        result = kafkaworker(tmp_path, env, "run", write_app(tmp_path, **names))
        assert result.returncode == 1, result.stdout + result.stderr
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) <= 2, lines
        return lines[-1]

    env = security_env(secured_kafka, "scram")
    bootstrap = secured_kafka.sasl_ssl_bootstrap
    # A source topic outside what the user may use.
    names = app_names()
    names["source"] = f"other-{uuid.uuid4().hex[:8]}"
    create_topics(secured_kafka, names["source"])
    assert refused(env, **names) == (
        f"Error: user 'app' is not authorized to Describe and Read topic {names['source']!r} "
        f"(source of handler 'handle') on {bootstrap}: grant it Describe and Read on the topic "
        "(an ACL), or fix the name"
    )
    # A DLQ the user may describe but not write: found now, not at the first failure.
    names = app_names()
    names["dlq"] = f"other-{uuid.uuid4().hex[:8]}.dlq"
    create_topics(secured_kafka, names["source"], names["output"], names["dlq"])
    # (A literal ACL on this topic alone: it changes nothing for the other tests.)
    secured_kafka.allow("app", topics=[names["dlq"]], operations=(AclOperation.DESCRIBE,))
    assert refused(env, **names) == (
        f"Error: user 'app' is not authorized to Write topic {names['dlq']!r} "
        f"(dead-letter topic of handler 'handle') on {bootstrap}: grant it Write on the "
        "topic (an ACL), or fix the name"
    )
    # A group outside the user's.
    names = app_names()
    names["group"] = f"other-{uuid.uuid4().hex[:8]}"
    create_topics(secured_kafka, names["source"], names["output"])
    assert refused(env, **names) == (
        f"Error: user 'app' is not authorized to Describe and Read group {names['group']!r} "
        f"(group of handler 'handle') on {bootstrap}: grant it Describe and Read on the group "
        "(an ACL), or fix the name"
    )
    # check says the same, one line per topic.
    checked = kafkaworker(tmp_path, env, "check", write_app(tmp_path, **names))
    assert checked.returncode == 1
    assert f"FAIL  group {names['group']}: user 'app' is not authorized" in checked.stdout


def test_a_dlq_made_unwritable_by_an_acl_mid_run_stalls_the_partition_until_allowed_again(
    secured_kafka: Secured,
) -> None:
    """The ACL form of issue 5's "DLQ trouble": nothing is committed past the message that
    could not be dead-lettered, and the partition flows again once the ACL allows it."""
    names = app_names()
    create_topics(secured_kafka, names["source"], names["dlq"], partitions=1)
    app = App(f"{names['source']}-app")

    @app.handler(names["source"], group=names["group"], dlq=names["dlq"], codec="raw")
    def handle(msg: Message[bytes]) -> None:
        if msg.value == b"poison":
            raise DeadLetter("a bad record")

    settings = make_settings(
        secured_kafka.sasl_ssl_bootstrap,
        dead_letter={"create_topics": False, "timeout": 2.0},
        kafka={
            "bootstrap_servers": secured_kafka.sasl_ssl_bootstrap,
            "security": {
                "protocol": "SASL_SSL",
                "sasl": {
                    "mechanism": "SCRAM-SHA-512",
                    "username": secured_kafka.app_user,
                    "password": secured_kafka.app_password,
                },
                "ssl": {"ca_location": str(secured_kafka.ca_location)},
            },
            "producer": {"message.timeout.ms": 2000},
        },
    )
    plain = secured_kafka.plain_bootstrap
    with running(app, settings) as runner:
        deny = secured_kafka.allow(
            "app", topics=[names["dlq"]], operations=(AclOperation.WRITE,), deny=True
        )
        produce(plain, names["source"], [b"0", b"poison", b"2"])
        failures = "kafkaworker_dead_letter_write_failures_total"
        wait_until(
            lambda: runner.metrics.value(failures, handler="handle") >= 2, 60, "DLQ writes denied"
        )
        assert committed(plain, names["group"], names["source"], 1) in ({0: 1}, {0: 0})
        admin = secured_kafka.admin_client()
        for future in admin.delete_acls(
            [
                AclBindingFilter(
                    b.restype,
                    b.name,
                    b.resource_pattern_type,
                    b.principal,
                    b.host,
                    b.operation,
                    b.permission_type,
                )
                for b in deny
            ]
        ).values():
            future.result(15)
        wait_until(
            lambda: committed(plain, names["group"], names["source"], 1) == {0: 3},
            60,
            "the partition flowing again once the DLQ is writable",
        )
    [dead] = read_topic(plain, names["dlq"], 1)
    assert dead.value() == b"poison"
