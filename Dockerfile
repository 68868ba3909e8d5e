# The worker image: kafkaworker and the example app (apps/). Kafka runs elsewhere: point the
# worker at it with KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS=broker:9092 (settings.yaml's
# 127.0.0.1:9092 is only right with --network host). Your own app: build FROM this image and
# COPY it into /app, then `CMD ["run", "yourapp:app"]`.
#
#   docker build -t kafkaworker .                # or `make image` (podman, no registry needed)
#   docker run --stop-timeout 40 -e KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS=broker:9092 kafkaworker
#
# `docker stop` sends SIGTERM: in-flight messages finish within shutdown_timeout (30 s by
# default), offsets are committed and the worker exits 0, so give the stop timeout more than
# shutdown_timeout. Another Python: --build-arg BASE_IMAGE=python:3.13-slim.
ARG BASE_IMAGE=python:3.11-slim

# --- build: wheels for kafkaworker and its dependencies, installed into a virtualenv ---------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The dependencies first, from pyproject.toml alone: a change to the code rebuilds only the
# (small) kafkaworker wheel below, not every dependency's.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
 && python -m pip wheel --quiet --wheel-dir /wheels -r requirements.txt
COPY README.md ./
COPY kafkaworker ./kafkaworker
# The virtualenv gets no pip of its own: the runtime image installs nothing.
RUN python -m pip wheel --quiet --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/kafkaworker \
 && python -m pip --python /opt/kafkaworker/bin/python install --quiet --no-index \
      --find-links /wheels kafkaworker

# --- runtime: the virtualenv and the app, nothing used to build them -------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/kafkaworker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 kafkaworker \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin kafkaworker
COPY --from=build /opt/kafkaworker /opt/kafkaworker
WORKDIR /app
COPY apps ./apps
COPY settings.yaml ./
USER 10001:10001

# Metrics and probes: GET /metrics, /healthz (liveness), /readyz (readiness).
ENV KAFKAWORKER_METRICS__PORT=9400
EXPOSE 9400
# Docker's health status (kept by `--format docker`; the OCI format has no HEALTHCHECK); on
# Kubernetes the probes are httpGet on /healthz and /readyz instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KAFKAWORKER_METRICS__PORT', '9400'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kafkaworker"]
CMD ["run", "apps.orders.app:app"]
