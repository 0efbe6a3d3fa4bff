# The bridge only; run Synapse, PostgreSQL and Redis as their own services.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --home /data bridge && mkdir -p /data && chown bridge /data
COPY --from=build /install /usr/local
USER bridge
WORKDIR /data
# /data holds config.yaml (and the SQLite database if you use the embedded default).
VOLUME /data
EXPOSE 29340
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; \
urllib.request.urlopen('http://127.0.0.1:29340/health/live', timeout=2)" || exit 1
ENTRYPOINT ["python", "-m", "bridge"]
CMD ["-c", "/data/config.yaml"]
