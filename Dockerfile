# syntax=docker/dockerfile:1
# The consumer image: `docker build -t streamer .`, then `docker run streamer consume`
# (or any other subcommand: `docker run streamer db migrate`, `... topics create`).

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/streamer
# Only what the wheel is built from (hatchling reads README.md; schemas/ is force-included).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streamer ./streamer
# The runtime dependencies only: no dev extras, no test tools, no embedded dev stack.
RUN /opt/streamer/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/streamer/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin streamer
COPY --from=build /opt/streamer /opt/streamer
# Bytecode was compiled at install time; nothing needs writing at run time, so the
# root filesystem can be read-only (deploy/k8s/deployment.yaml).
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMER_METRICS_PORT=9400
USER 10001
EXPOSE 9400
# No curl in slim images: probe /healthz with the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('STREAMER_METRICS_PORT', '9400'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["streamer"]
CMD ["consume"]
