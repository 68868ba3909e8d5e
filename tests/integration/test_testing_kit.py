"""The pytest plugin's fixtures as a user's test suite meets them, in a pytest run of its own
(pytester): what a user sees at teardown is what is tested."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import TopicFactory

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.kafka


def test_kafka_worker_with_capsys_tears_down_cleanly(
    pytester: pytest.Pytester, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Issue 30, item 8: the worker logged "worker stopped" into capsys's file after capsys
    had closed it (ValueError: I/O operation on closed file), from a thread as well."""
    topic = new_topic(1)
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import pytest

            @pytest.fixture(scope="session")
            def kafka_broker():
                return {kafka_bootstrap!r}
            """
        )
    )
    pytester.makepyfile(
        test_user=textwrap.dedent(
            f"""
            from kafkaworker import App

            app = App("capsys-user")

            @app.handler({topic!r})
            def handle(msg):
                pass

            def test_with_capsys(kafka_worker, capsys):
                kafka_worker(app)
                print("from the test")
                assert capsys.readouterr().out == "from the test\\n"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    assert "I/O operation on closed file" not in output
    assert "Exception in thread" not in output
    assert "PytestUnhandledThreadExceptionWarning" not in output
