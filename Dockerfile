# syntax=docker/dockerfile:1
# The consumer image: `docker build -t streamer .`, then `docker run streamer consume`.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/streamer
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streamer ./streamer
RUN /opt/streamer/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/streamer/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin streamer
COPY --from=build /opt/streamer /opt/streamer
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMER_METRICS_PORT=9400
USER 10001
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["streamer"]
CMD ["consume"]
