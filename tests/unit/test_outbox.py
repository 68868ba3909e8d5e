"""The outbox's declaration and what cannot work, refused in one line (no database needed),
and the inbox's row for a record's kw.outbox.id."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from kafkaworker import App
from kafkaworker.cli import cli
from kafkaworker.errors import ConfigError, StartupError
from kafkaworker.message import Message
from kafkaworker.outbox import OutboxRelay
from kafkaworker.postgres import PostgresOutbox, outbox_row
from kafkaworker.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"table": "no such"}, "table='no such': an unquoted identifier"),
        ({"poll_interval": 0}, "poll_interval=0: seconds > 0"),
        ({"retention": -1}, "retention=-1: seconds > 0"),
        ({"batch": 0}, "batch=0: an integer >= 1"),
    ],
)
def test_what_cannot_work_is_refused_at_declaration(options: dict[str, object], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        PostgresOutbox("postgresql://app@db/shop", **options)  # type: ignore[arg-type]


def test_a_relay_without_a_url_is_one_line_naming_the_setting() -> None:
    with pytest.raises(StartupError) as raised:
        PostgresOutbox().relay(Settings())
    assert str(raised.value) == (
        "the outbox's relay: PostgresOutbox() was given no URL and postgres.url is not set: "
        "set it (env KAFKAWORKER_POSTGRES__URL) or give PostgresOutbox(url)"
    )


def test_an_app_declares_one_outbox() -> None:
    app = App("shop")
    outbox = PostgresOutbox("postgresql://app@db/shop")
    assert app.outbox(outbox) is outbox
    assert app.declared_outbox is outbox
    with pytest.raises(ConfigError, match="declares an outbox already"):
        app.outbox(outbox)
    with pytest.raises(ConfigError, match="a PostgresOutbox"):
        App("other").outbox(object())  # type: ignore[arg-type]


def test_outbox_relay_of_an_app_without_an_outbox_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain_app.py").write_text(
        textwrap.dedent(
            """
            from kafkaworker import App
            app = App("plain")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["outbox", "relay", "plain_app:app"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: app 'plain' declares no outbox: app.outbox(PostgresOutbox(url))"
    ]


def test_the_inbox_records_a_records_outbox_id_beside_its_offset() -> None:
    with_id = Message("t", {}, offset=7, headers=[("kw.outbox.id", b"42")])
    assert outbox_row("g", with_id) == ("g", "t", -1, 42)
    assert outbox_row("g", Message("t", {}, offset=8)) is None
    assert outbox_row("g", Message("t", {}, headers=[("kw.outbox.id", b"x")])) is None


def test_the_relays_settings_come_from_the_file_and_env_unless_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("postgres:\n  outbox:\n    poll_interval: 0.25\n    retention: 60\n")
    monkeypatch.setenv("KAFKAWORKER_POSTGRES__OUTBOX__BATCH", "500")
    settings = load_settings(path)
    url = "postgresql://app@db/shop"

    def relay(outbox: PostgresOutbox) -> OutboxRelay:
        return OutboxRelay(outbox, url, "db:5432", settings, client_id="t")  # not started

    found = relay(PostgresOutbox(url))
    assert (found.poll_interval, found.retention, found.batch) == (0.25, 60.0, 500)
    declared = relay(PostgresOutbox(url, poll_interval=2, retention=10, batch=7))
    assert (declared.poll_interval, declared.retention, declared.batch) == (2.0, 10.0, 7)
    monkeypatch.delenv("KAFKAWORKER_POSTGRES__OUTBOX__BATCH")
    defaults = OutboxRelay(PostgresOutbox(url), url, "db:5432", Settings(), client_id="t")
    assert (defaults.poll_interval, defaults.retention, defaults.batch) == (1.0, 3600.0, 2000)


def test_a_bad_outbox_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKAWORKER_POSTGRES__OUTBOX__BATCH", "0")
    with pytest.raises(ConfigError, match=r"postgres\.outbox\.batch"):
        load_settings()
