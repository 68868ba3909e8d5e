"""`kafkaworker dashboard`: the fleet's dashboard, standalone (no app module needed)."""

from __future__ import annotations

import threading

import click
import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from kafkaworker.cli.common import SETTINGS_OPTION, one_line, settings_from
from kafkaworker.observability.health import Health

log = structlog.get_logger("kafkaworker.fleet")


@click.command()
@click.option(
    "--port",
    type=click.IntRange(min=1, max=65535),
    default=9500,
    show_default=True,
    help="serve the page, its JSON and /metrics, /healthz, /readyz on this port",
)
@click.option("--host", help="the address to listen on (default: metrics.host)")
@SETTINGS_OPTION
def dashboard(port: int, host: str | None, settings_path: str | None) -> None:
    """Serve the fleet page: every worker process of every app that reports (fleet.enabled),
    the partitions they own, the cluster's lag per group, failures, a DLQ explorer and, with
    dashboard.control and dashboard.token, commands to the whole fleet. Connects with
    kafka.bootstrap_servers and kafka.security, like the workers."""
    # Not at the top: the command line starts without loading the fleet's modules.
    from kafkaworker.fleet.dashboard import FleetDashboard  # noqa: PLC0415
    from kafkaworker.observability.server import MetricsServer  # noqa: PLC0415

    with one_line():
        settings = settings_from(settings_path)
        pages = FleetDashboard(settings)
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)

        def health() -> Health:
            return Health(live=True, ready=pages.ready, detail={"reports_read": pages.ready})

        bind = host or settings.metrics.host
        with MetricsServer(bind, port, registry, health, pages) as server:
            log.info(
                "fleet dashboard",
                url=f"http://{bind}:{server.port}/",
                bootstrap=settings.kafka.bootstrap_servers,
                control=settings.dashboard.control,
            )
            threading.Event().wait()  # until a signal ends the process (cli/common.py)
