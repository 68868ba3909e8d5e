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
STOPSIGNAL SIGTERM
ENTRYPOINT ["kafkaworker"]
CMD ["run", "apps.orders.app:app"]
