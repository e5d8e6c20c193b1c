"""The minimal intake a competent engineer writes first: FastAPI, one confluent-kafka
producer, a 202 once the broker acknowledged every item. Nothing else: no validation
beyond "a list of objects with a sku", no tracking, no idempotency, no tracing.

    python -m benchmarks.intake_baseline --port 8090 --bootstrap 127.0.0.1:9092 --topic t

It answers ``POST /v1/galleries/bulk`` with the same payload as ``streamer serve``, so one
load generator drives both (benchmarks/intake_load.py). The producer is configured as
streamer's (idempotent, ``acks=all``, ``linger.ms=5``, lz4, murmur2): the ack wait is the
same, only what surrounds it differs. Never imported by the package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from typing import Any

import uvicorn
from confluent_kafka import KafkaError, Producer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def build_app(bootstrap: str, topic: str) -> FastAPI:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
        }
    )
    stop = threading.Event()

    def serve_reports() -> None:
        # Delivery callbacks run here, on the thread that polls; they hand each result
        # to the event loop that waits for it.
        while not stop.is_set():
            producer.poll(0.1)

    poller = threading.Thread(target=serve_reports, name="poll", daemon=True)
    poller.start()
    app = FastAPI()

    @app.post("/v1/galleries/bulk")
    async def bulk(request: Request) -> JSONResponse:
        payload: Any = json.loads(await request.body())
        items = payload["request"]["items"]
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[KafkaError | None]] = []
        for item in items:
            done: asyncio.Future[KafkaError | None] = loop.create_future()

            def report(err: KafkaError | None, _msg: Any, done: Any = done) -> None:
                loop.call_soon_threadsafe(done.set_result, err)

            producer.produce(
                topic, json.dumps(item).encode(), item["sku"].encode(), on_delivery=report
            )
            waits.append(done)
        errors = [e for e in await asyncio.gather(*waits) if e is not None]
        if errors:
            return JSONResponse({"detail": errors[0].str()}, status_code=503)
        return JSONResponse({"accepted": len(items)}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.bootstrap, args.topic),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",  # as streamer serve's
        server_header=False,
    )


if __name__ == "__main__":
    main()
