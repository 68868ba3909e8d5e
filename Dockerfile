# A worker container: the package and the example app. Kafka itself runs elsewhere; point the
# worker at it with KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS. `docker stop` sends SIGTERM, which
# drains in-flight messages and commits before exit (set --stop-timeout above shutdown_timeout).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY kafkaworker ./kafkaworker
RUN pip install .

COPY apps ./apps
COPY settings.yaml ./

USER nobody
# Metrics and probes: GET /metrics, /healthz (liveness), /readyz (readiness).
ENV KAFKAWORKER_METRICS__PORT=9400
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9400/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kafkaworker"]
CMD ["run", "apps.orders.app:app"]
