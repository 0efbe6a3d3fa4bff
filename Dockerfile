# The bridge only; Synapse, PostgreSQL and Redis run as their own services
# (docker-compose.example.yml). Matrix bridge conventions: uid 1337, state in /data,
# docker-run.sh writes the config, then the registration, then runs the bridge.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY docker-run.sh /usr/local/bin/docker-run.sh
RUN chmod 0755 /usr/local/bin/docker-run.sh && mkdir -p /data && chown 1337:1337 /data
USER 1337:1337
WORKDIR /data
# In a container the bridge listens on every interface (the example config says loopback).
ENV BRIDGE_APPSERVICE__HOSTNAME=0.0.0.0 \
    PYTHONUNBUFFERED=1
# config.yaml, registration.yaml, and the SQLite database if you keep the embedded default.
VOLUME /data
EXPOSE 29340
# Readiness, not liveness: 503 until the database and homeserver checks pass; a Redis
# outage stays 200 ("degraded") on purpose (docs/realtime.md).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('BRIDGE_APPSERVICE__PORT', '29340'), timeout=2)" || exit 1
ENTRYPOINT ["/usr/local/bin/docker-run.sh"]
