# cdrhouse: the HTTP service and the operator CLI, for docker-compose.yml (one node)
# and docker-compose.cluster.yml (a sharded, replicated ClickHouse cluster).
# Slim, non-root; the dependencies are installed here, at build time, not at every start.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api api
COPY engine engine
COPY sql sql
COPY tiering tiering
COPY backup backup
COPY cdrhouse cdrhouse
RUN python -m venv /opt/cdrhouse \
 && /opt/cdrhouse/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/cdrhouse/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/cdrhouse /opt/cdrhouse
RUN useradd --create-home --uid 10001 cdrhouse \
 && mkdir -p /data && chown cdrhouse:cdrhouse /data
ENV PATH=/opt/cdrhouse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CDRHOUSE_DATA_DIR=/data
USER cdrhouse
WORKDIR /home/cdrhouse
EXPOSE 8000
# the service's liveness endpoint (api/v1.py); python is there, curl is not
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# the schema first (idempotent: brings every node up to date), then the service
CMD ["sh", "-c", "cdrhouse init && exec cdrhouse serve --host 0.0.0.0 --port 8000"]
