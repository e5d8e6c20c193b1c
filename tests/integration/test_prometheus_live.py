"""A real Prometheus scrapes a running worker: every dashboard query and alert rule evaluates.

promtool proves the queries parse; this proves they select the series a worker
actually exports, with the labels the panels group by.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from streamer.dev.receiver import Receiver
from streamer.dev.stack import free_port
from streamer.forward.worker import forward_runner
from streamer.objects.worker import objects_runner
from streamer.runtime.metrics import new_registry
from tests.deploy.support import PROMETHEUS
from tests.deploy.test_dashboard import as_promql, queries
from tests.integration.forwarding import SECRET
from tests.integration.replicate_support import replica_state, running_replicator, with_replica
from tests.integration.support import Sender, drained_worker, media, prepare, put_image, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.deploy]


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A Prometheus process of our own; the test writes its scrape target before it starts."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: run `make promtool` (Debian package prometheus)")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(*target_ports: int) -> int:
        shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "streamer",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in target_ports]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    exe,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return port

    yield start  # type: ignore[misc]
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def objects_job(settings: Any) -> AsyncIterator[int]:
    """An objects worker on a notification topic of its own, so the object index's panels
    have series too; yields its metrics port once it serves them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = settings.topics.media_topic.split(".")[0]
    objects = settings.replace(
        objects_topic=f"{tag}.catalog.objects.v1",
        objects_group_id=f"objects-{tag}",
        metrics_port=free_port(),
    )
    admin = AdminClient(objects.kafka.client_config())
    for future in admin.create_topics([NewTopic(objects.objects.objects_topic, 1, 1)]).values():
        future.result(timeout=30)
    worker = objects_runner(objects, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def serving() -> bool:
        if task.done():
            task.result()
        return worker.health_port is not None

    try:
        await wait_for(serving, timeout_s=60, what="the objects worker's metrics")
        yield objects.runtime.metrics_port
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def forwarding_job(settings: Any, receiver: Receiver) -> AsyncIterator[int]:
    """A webhook forwarder delivering the gallery worker's outcomes, so the forwarder's
    panels have data too; yields its metrics port once it delivered them."""
    forward = settings.replace(
        webhook_url=receiver.url, webhook_secret=SecretStr(SECRET), metrics_port=free_port()
    )
    worker = forward_runner(forward, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def delivered() -> bool:
        if task.done():
            task.result()
        return len(receiver.accepted()) >= 20

    try:
        await wait_for(delivered, timeout_s=60, what="the forwarder to deliver the outcomes")
        yield forward.runtime.metrics_port
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def test_dashboard_queries_and_alert_rules_evaluate_on_a_live_worker(
    make_settings, s3_client, prometheus
) -> None:
    settings = make_settings(
        metrics_port=free_port(), metrics_host="127.0.0.1", lag_refresh_s=0.2, topic_partitions=2
    )
    # A replicator beside the gallery worker, so that its dashboard row has data too.
    replica = with_replica(settings).replace(metrics_port=free_port())
    settings = replica.replace(metrics_port=settings.runtime.metrics_port)
    prepare(settings)
    put_image(s3_client, settings, "/p/1.jpg", b"one")
    sender = Sender(settings)
    sender.send([media(f"P-{i}", 1, [{"file_path": "/p/1.jpg"}]) for i in range(20)])
    sender.send([media("P-BAD", 1, [{"file_path": "/p/missing.jpg"}])])

    with Receiver(SECRET) as receiver:
        async with (
            drained_worker(settings, sender.ends, timeout_s=60),
            forwarding_job(settings, receiver) as forward_port,
            running_replicator(replica) as (_replicator, replicating),
            objects_job(settings) as objects_port,
        ):

            async def copied() -> bool:
                if replicating.done():
                    replicating.result()
                return bool(replica_state(replica))

            await wait_for(copied, timeout_s=60, what="the replicator's first copy")
            port = prometheus(
                settings.runtime.metrics_port,
                forward_port,
                replica.runtime.metrics_port,
                objects_port,
            )

            def scraped() -> bool:
                try:
                    result = api(
                        port, "query", query='streamer_events_processed_total{outcome="written"}'
                    )
                except OSError:
                    return False
                return bool(result["result"]) and float(result["result"][0]["value"][1]) == 20

            async def ingested() -> bool:
                return await asyncio.to_thread(scraped)

            await wait_for(ingested, timeout_s=60, what="Prometheus to scrape the worker")

            async def enough_samples() -> bool:
                # rate() needs two samples inside its window.
                data = await asyncio.to_thread(api, port, "query", query="count_over_time(up[15s])")
                return bool(data["result"]) and float(data["result"][0]["value"][1]) >= 3

            await wait_for(enough_samples, timeout_s=30, what="three scrapes")

            empty = []
            for panel, expr in queries():
                promql = as_promql(expr).replace("[1m]", "[15s]").replace("[5m]", "[15s]")
                data = await asyncio.to_thread(api, port, "query", query=promql)
                if not data["result"]:
                    empty.append(panel["title"])
            assert empty == [], f"panels with no data from a live worker: {empty}"

            by_outcome = await asyncio.to_thread(
                api, port, "query", query="sum by (outcome) (streamer_events_processed_total)"
            )
            outcomes = {r["metric"]["outcome"]: float(r["value"][1]) for r in by_outcome["result"]}
            assert outcomes["written"] == 20 and outcomes["partial"] == 1

            rules = await asyncio.to_thread(api, port, "rules")
            evaluated = [rule for group in rules["groups"] for rule in group["rules"]]
            alert_rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
            assert len(evaluated) == sum(len(g["rules"]) for g in alert_rules["groups"])
            assert all(rule["health"] == "ok" for rule in evaluated), [
                (r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"
            ]
            firing = {
                a["labels"]["alertname"]
                for a in (await asyncio.to_thread(api, port, "alerts"))["alerts"]
            }
            assert "StreamerDeadLetters" in firing
            assert not firing & {
                "StreamerConsumerDown",
                "StreamerCircuitOpen",
                "StreamerAbsent",
                "StreamerWebhookDisabled",
            }
