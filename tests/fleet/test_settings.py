"""The fleet: and alerts: settings: off by default, from the environment like every setting,
and one line for what cannot work (a topic name Kafka refuses, control without the token the
commands are signed with, a negative threshold)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kafkaworker import ConfigError, load_settings


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("KAFKAWORKER_SETTINGS", "KAFKAWORKER_DASHBOARD__TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_off_by_default_and_on_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = load_settings().fleet
    assert (fleet.enabled, fleet.control, fleet.topic, fleet.interval) == (
        False,
        False,
        "__kafkaworker.reports",
        5.0,
    )
    monkeypatch.setenv("KAFKAWORKER_FLEET__ENABLED", "true")
    monkeypatch.setenv("KAFKAWORKER_FLEET__INTERVAL", "2.5")
    monkeypatch.setenv("KAFKAWORKER_ALERTS__TIME_LAG_SECONDS", "60")
    settings = load_settings()
    assert (settings.fleet.enabled, settings.fleet.interval) == (True, 2.5)
    assert settings.alerts.time_lag_seconds == 60


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"KAFKAWORKER_FLEET__TOPIC": "reports with spaces"},
            "setting fleet.topic='reports with spaces' is invalid (environment "
            "KAFKAWORKER_FLEET__TOPIC): not a Kafka topic name",
        ),
        (
            {"KAFKAWORKER_FLEET__CONTROL": "true"},
            "settings are invalid: fleet.control needs dashboard.token (a worker obeys only "
            "commands signed with it)",
        ),
        (
            {"KAFKAWORKER_ALERTS__DEAD_LETTERS_PER_MINUTE": "0"},
            "setting alerts.dead_letters_per_minute='0' is invalid",
        ),
        ({"KAFKAWORKER_FLEET__INTERVALL": "5"}, "did you mean KAFKAWORKER_FLEET__INTERVAL?"),
    ],
)
def test_what_cannot_work_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert line in str(error.value) and "\n" not in str(error.value)


def test_control_with_the_token_is_accepted_and_the_token_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKAWORKER_FLEET__CONTROL", "true")
    monkeypatch.setenv("KAFKAWORKER_DASHBOARD__TOKEN", "s3cret-token")
    settings = load_settings()
    assert settings.fleet.control
    assert "s3cret-token" not in repr(settings)
