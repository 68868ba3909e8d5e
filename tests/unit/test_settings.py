"""Settings: defaults < decorator < settings.yaml < KAFKAWORKER_* env < CLI, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kafkaworker import App, BatchPolicy, ConfigError, Message, Settings, load_settings
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.source.consumer_group import consumer_config
from kafkaworker.settings import check_environment, settings_for_run


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    return tmp_path


def app_with_handler(**options: Any) -> App:
    app = App("svc")

    @app.handler("orders", **options)
    def handle(msg: Message[Any]) -> None:
        pass

    return app


def test_library_defaults_without_any_file_or_env() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.shutdown_timeout == 30.0
    assert resolve_specs(app_with_handler(), settings)[0].concurrency == 8


def test_each_layer_overrides_the_one_below(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with_handler(concurrency=3)  # decorator over the default of 8
    assert resolve_specs(app, load_settings())[0].concurrency == 3

    (isolated / "settings.yaml").write_text(
        "log_level: WARNING\nhandlers:\n  handle:\n    concurrency: 5\n    ordering: key\n"
    )
    settings = load_settings()
    assert resolve_specs(app, settings)[0].concurrency == 5  # yaml over decorator
    assert settings.log_level == "WARNING"

    monkeypatch.setenv("KAFKAWORKER_HANDLERS__HANDLE__CONCURRENCY", "7")
    monkeypatch.setenv("KAFKAWORKER_LOG_LEVEL", "ERROR")
    settings = load_settings()
    spec = resolve_specs(app, settings)[0]
    assert spec.concurrency == 7  # env over yaml
    assert spec.ordering == "key"  # nested env merges with the yaml, key by key
    assert settings.log_level == "ERROR"

    assert load_settings(log_level="DEBUG").log_level == "DEBUG"  # CLI over env


def test_env_nesting_reaches_kafka_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9093")
    monkeypatch.setenv("KAFKAWORKER_KAFKA__CONSUMER", '{"fetch.min.bytes": 1024}')
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9093"
    assert settings.kafka.consumer == {"fetch.min.bytes": 1024}


def test_settings_path_from_flag_then_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "a.yaml").write_text("shutdown_timeout: 3\n")
    (isolated / "b.yaml").write_text("shutdown_timeout: 4\n")
    monkeypatch.setenv("KAFKAWORKER_SETTINGS", str(isolated / "b.yaml"))
    assert load_settings().shutdown_timeout == 4
    assert load_settings(isolated / "a.yaml").shutdown_timeout == 3


def test_backoff_override_merges_with_the_decorator() -> None:
    from kafkaworker import Backoff  # noqa: PLC0415

    app = app_with_handler(backoff=Backoff(initial=1.0, max=10.0))
    Path("settings.yaml").write_text("handlers:\n  handle:\n    backoff:\n      max: 20\n")
    spec = resolve_specs(app, load_settings())[0]
    assert (spec.backoff.initial, spec.backoff.max) == (1.0, 20.0)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "kafka:\n  bootstrap_server: x\n",
            "unknown setting 'kafka.bootstrap_server' (settings file 'settings.yaml')"
            ": did you mean 'bootstrap_servers'? allowed keys are "
            "bootstrap_servers, group_protocol, group_instance_id, security, consumer, producer",
        ),
        (
            "handlers:\n  h:\n    retrys: 3\n",
            "unknown setting 'handlers.h.retrys' (settings file 'settings.yaml')"
            ": did you mean 'retries'? allowed keys are topics, group,",
        ),
        (
            "shutdown_timout: 3\n",
            "unknown setting 'shutdown_timout' (settings file 'settings.yaml')"
            ": did you mean 'shutdown_timeout'?",
        ),
        (
            "shutdown_timeout: soon\n",
            "setting shutdown_timeout='soon' is invalid (settings file 'settings.yaml')"
            ": Input should be a valid number, unable to parse string as a "
            "number",
        ),
        (
            "handlers:\n  h:\n    ordering: random\n",
            "setting handlers.h.ordering='random' is invalid (settings file 'settings.yaml')"
            ": Input should be 'partition', 'key' or 'none'",
        ),
        (
            "kafka:\n  consumer:\n    enable.auto.offset.store: true\n",
            "setting kafka.consumer.enable.auto.offset.store is managed by kafkaworker (offsets "
            "are stored only once a message is finished): remove it",
        ),
        ("kafka: [\n", "cannot read settings file 'settings.yaml': while parsing"),
    ],
)
def test_wrong_settings_fail_in_one_line_naming_key_value_and_what_is_allowed(
    yaml_text: str, expected: str
) -> None:
    Path("settings.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_wrong_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKAWORKER_MAX_PENDING", "-5")
    with pytest.raises(
        ConfigError,
        match=r"^setting max_pending='-5' is invalid \(environment KAFKAWORKER_MAX_PENDING\): "
        "Input should be greater than 0",
    ):
        load_settings()


def test_missing_settings_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"settings file 'nope\.yaml' does not exist"):
        load_settings("nope.yaml")


def test_overrides_for_an_unknown_handler_are_refused() -> None:
    Path("settings.yaml").write_text("handlers:\n  hadnle:\n    concurrency: 2\n")
    with pytest.raises(
        ConfigError, match="app 'svc' has no handler 'hadnle'; its handlers are: handle"
    ):
        resolve_specs(app_with_handler(), load_settings())


def test_only_names_an_unknown_handler() -> None:
    with pytest.raises(ConfigError, match="--only nope: app 'svc' has no such handler"):
        resolve_specs(app_with_handler(), load_settings(), only=["nope"])


def test_consumer_config_heartbeats_every_second_on_classic_and_raw_keys_win() -> None:
    spec = resolve_specs(app_with_handler(), load_settings())[0]
    classic = consumer_config("svc", spec, load_settings())
    assert classic["heartbeat.interval.ms"] == 1000
    assert classic["fetch.queue.backoff.ms"] == 10
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"
    # KIP-848: the broker sets the heartbeat interval; librdkafka refuses the client key.
    kip848 = consumer_config("svc", spec, load_settings(kafka={"group_protocol": "consumer"}))
    assert "heartbeat.interval.ms" not in kip848
    assert kip848["group.protocol"] == "consumer"
    mine = load_settings(kafka={"consumer": {"heartbeat.interval.ms": 3000}})
    assert consumer_config("svc", spec, mine)["heartbeat.interval.ms"] == 3000
    raw848 = load_settings(kafka={"consumer": {"group.protocol": "consumer"}})
    assert "heartbeat.interval.ms" not in consumer_config("svc", spec, raw848)
    assert "partition.assignment.strategy" not in consumer_config("svc", spec, raw848)


def test_a_static_member_name_is_made_per_handler_and_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = resolve_specs(app_with_handler(), load_settings())[0]
    assert "group.instance.id" not in consumer_config("svc", spec, load_settings())
    static = load_settings(kafka={"group_instance_id": "orders-0"})
    # Two handlers of one app share its group: each consumer needs a name of its own.
    assert consumer_config("svc", spec, static)["group.instance.id"] == "orders-0.handle"
    monkeypatch.setenv("KAFKAWORKER_PROCESS_INDEX", "2")  # a child of --processes N
    assert consumer_config("svc", spec, static)["group.instance.id"] == "orders-0.handle-2"
    with pytest.raises(ConfigError, match=r"group\.instance\.id is managed by kafkaworker"):
        load_settings(kafka={"consumer": {"group.instance.id": "x"}})


def test_cli_overrides_merge_into_the_apps_own_settings_key_by_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = Settings.model_validate(
        {"metrics": {"host": "127.0.0.1"}, "log_format": "console", "poll_batch": 7}
    )
    monkeypatch.setenv("KAFKAWORKER_POLL_BATCH", "99")  # the app's settings are not re-read
    merged = settings_for_run(own, None, {"metrics": {"port": 9400}, "log_level": "DEBUG"})
    assert merged.metrics.host == "127.0.0.1"
    assert merged.metrics.port == 9400
    assert (merged.log_level, merged.poll_batch) == ("DEBUG", 7)
    assert settings_for_run(own, None, {}) is own
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        settings_for_run(own, None, {"metrics": {"port": 0}})


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("KAFKAWORKER_SHUTDOWN_TIMOUT", "KAFKAWORKER_SHUTDOWN_TIMEOUT"),
        ("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVER", "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS"),
        ("KAFKAWORKER_HANDLERS__HANDLE__RETRYS", "KAFKAWORKER_HANDLERS__HANDLE__RETRIES"),
        ("KAFKAWORKER_DEADLETTER__PARTITIONS", "KAFKAWORKER_DEAD_LETTER__PARTITIONS"),
    ],
)
def test_an_env_variable_that_sets_nothing_fails_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, suggestion: str
) -> None:
    apps_own = Settings()
    monkeypatch.setenv(name, "3")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == (
        f"environment variable {name} matches no setting: did you mean {suggestion}? "
        "(fix the name or unset it)"
    )
    # The app's own settings (App(settings=...)) are refused the same way at run time.
    with pytest.raises(ConfigError, match=name):
        settings_for_run(apps_own, None, {})


@pytest.mark.parametrize(
    "name",
    [
        "KAFKAWORKER_SETTINGS",  # read by kafkaworker, not a setting
        "KAFKAWORKER_PROCESS_INDEX",
        "KAFKAWORKER_KAFKA__CONSUMER__FETCH_MIN_BYTES",  # raw client properties: any name
        "KAFKAWORKER_HANDLERS__HANDLE__BACKOFF__MAX",
        "kafkaworker_log_level",  # pydantic-settings matches names case-insensitively
    ],
)
def test_env_variables_that_set_something_are_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    check_environment({name: "1"})


def test_topics_and_batch_come_from_settings_so_one_codebase_runs_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App("svc")

    @app.handler("orders", dlq="orders.dlq")
    def handle(msg: Message[Any]) -> None:
        pass

    @app.handler("clicks", batch=BatchPolicy(max_size=10, max_wait=1.0))
    def store(batch: list[Message[Any]]) -> None:
        pass

    Path("settings.yaml").write_text(
        "handlers:\n"
        "  handle:\n    topics: [staging.orders, staging.orders.eu]\n    dlq: staging.dlq\n"
        "  store:\n    batch:\n      max_size: 200\n"
    )
    specs = {spec.name: spec for spec in resolve_specs(app, load_settings())}
    assert specs["handle"].topics == ("staging.orders", "staging.orders.eu")
    assert specs["handle"].dlq == "staging.dlq"
    assert specs["store"].batch == BatchPolicy(max_size=200, max_wait=1.0)

    monkeypatch.setenv("KAFKAWORKER_HANDLERS__HANDLE__TOPICS", "prod.orders")
    assert resolve_specs(app, load_settings())[0].topics == ("prod.orders",)
    monkeypatch.delenv("KAFKAWORKER_HANDLERS__HANDLE__TOPICS")

    Path("settings.yaml").write_text("handlers:\n  handle:\n    batch:\n      max_size: 5\n")
    with pytest.raises(ConfigError, match="handler 'handle' is not a batch handler"):
        resolve_specs(app, load_settings())
    Path("settings.yaml").write_text("handlers:\n  handle:\n    topics: [handle.dlq, 'a b']\n")
    with pytest.raises(ConfigError, match="topic name"):
        resolve_specs(app, load_settings())


def test_a_join_timeout_within_the_revoke_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A member may wait revoke_timeout for another member's revoke before it is joined: a
    # join watchdog firing sooner would replace healthy consumers in every slow rebalance.
    monkeypatch.setenv("KAFKAWORKER_JOIN_TIMEOUT", "20")
    monkeypatch.setenv("KAFKAWORKER_REVOKE_TIMEOUT", "30")
    with pytest.raises(
        ConfigError,
        match=r"^settings are invalid: join_timeout \(20 s\) must be longer than "
        r"revoke_timeout \(30 s\)",
    ):
        load_settings()
    monkeypatch.setenv("KAFKAWORKER_JOIN_TIMEOUT", "31")
    assert load_settings().join_timeout == 31


def test_every_settings_problem_is_told_at_once_with_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Path("settings.yaml").write_text("shutdown_timout: 3\nkafka:\n  consumer:\n    group.id: x\n")
    monkeypatch.setenv("KAFKAWORKER_MAX_PENDING", "-5")
    monkeypatch.setenv("KAFKAWORKER_REVOKE_TIMOUT", "3")
    with pytest.raises(ConfigError) as error:
        load_settings()
    lines = str(error.value).splitlines()
    assert lines[0] == "3 problems in the settings:"
    assert lines[1].startswith(
        "  environment variable KAFKAWORKER_REVOKE_TIMOUT matches no setting: did you mean "
        "KAFKAWORKER_REVOKE_TIMEOUT?"
    )
    assert sorted(lines[2:]) == [
        "  setting max_pending='-5' is invalid (environment KAFKAWORKER_MAX_PENDING): Input "
        "should be greater than 0",
        "  unknown setting 'shutdown_timout' (settings file 'settings.yaml'): did you mean "
        "'shutdown_timeout'? allowed keys are " + ", ".join(Settings.model_fields),
    ]
    # Once those are fixed, the client properties' problems are told together as well.
    monkeypatch.delenv("KAFKAWORKER_MAX_PENDING")
    monkeypatch.delenv("KAFKAWORKER_REVOKE_TIMOUT")
    Path("settings.yaml").write_text(
        "kafka:\n  consumer:\n    group.id: x\n    enable.auto.commit: true\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).splitlines()[0] == "2 problems in the settings:"
