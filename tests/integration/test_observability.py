"""Scraping a running worker: /metrics matches what the run did, lag drains to zero, probes answer."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from streamer.cli import app
from streamer.dev.stack import free_port
from streamer.gallery.worker import gallery_runner
from tests.integration.support import (
    Sender,
    drained,
    media,
    prepare,
    put_image,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status_of(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_match_the_run_and_lag_drains(make_settings, s3_client) -> None:
    settings = make_settings(
        metrics_port=free_port(), metrics_host="127.0.0.1", lag_refresh_s=0.2, topic_partitions=2
    )
    prepare(settings)
    put_image(s3_client, settings, "/m/1.jpg", b"one")
    put_image(s3_client, settings, "/m/2.jpg", b"two")
    sender = Sender(settings)
    first = [
        media(f"M-{i}", 1, [{"file_path": "/m/1.jpg"}, {"file_path": "/m/2.jpg"}])
        for i in range(10)
    ]
    sender.send(first)
    sender.send(
        [
            e.model_copy(update={"event_id": e.event_id[:-4] + "beef", "version": 2})
            for e in first[:4]
        ]
    )  # re-syncs with a newer version: no-ops
    sender.send([media("M-BAD", 1, [{"file_path": "/m/missing.jpg"}])])
    sender.raw(settings.topics.media_topic, b"junk", b"not avro at all")
    sender.flush()

    worker = gallery_runner(settings, install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=worker.health_port is not None),
            timeout_s=10,
            what="the server",
        )
        port = worker.health_port
        assert port is not None
        assert status_of(port, "/healthz")[0] == 200

        async def done() -> bool:
            if task.done():
                task.result()
            return await drained(settings, sender.ends)

        await wait_for(done, timeout_s=60, what="the drain")

        async def lag_zero() -> bool:
            samples = scrape(port)
            lags = [v for (n, _), v in samples.items() if n == "streamer_consumer_lag_messages"]
            return bool(lags) and all(v == 0 for v in lags)

        await wait_for(lag_zero, timeout_s=20, what="lag gauges at zero")
        samples = scrape(port)
        ready = status_of(port, "/readyz")
        assert ready[0] == 200 and json.loads(ready[1])["ready"] is True
        assert status_of(port, "/nope")[0] == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    assert value(samples, "streamer_events_processed_total", outcome="written") == 10
    assert value(samples, "streamer_events_processed_total", outcome="noop") == 4
    assert value(samples, "streamer_events_processed_total", outcome="partial") == 1
    assert value(samples, "streamer_events_processed_total", outcome="dead_lettered") == 1
    assert (
        value(
            samples,
            "streamer_events_consumed_total",
            topic=settings.topics.media_topic,
            event_type="MediaGalleryChanged",
        )
        == 15
    )
    assert value(samples, "streamer_dead_letters_total", reason="object_missing") == 1
    assert value(samples, "streamer_dead_letters_total", reason="unknown_framing") == 1
    assert value(samples, "streamer_images_total", result="added") == 20
    assert value(samples, "streamer_images_total", result="unchanged") == 8
    assert value(samples, "streamer_images_total", result="object_missing") == 1
    assert value(samples, "streamer_db_rows_written_total", operation="insert") == 20
    assert value(samples, "streamer_outcome_events_total") == 10
    assert value(samples, "streamer_etag_checks_total", result="missing") >= 1
    assert value(samples, "streamer_s3_head_duration_seconds_count") >= 3
    assert value(samples, "streamer_assigned_partitions") == 4
    assert value(samples, "streamer_circuit_state", dependency="s3") == 0
    assert value(samples, "streamer_last_commit_timestamp_seconds") > 0
    assert value(samples, "streamer_build_info", version="0.1.0") == 1


async def test_status_reports_lag_dead_letters_and_a_request(
    make_settings, s3_client, monkeypatch
) -> None:
    settings = make_settings(topic_partitions=2)
    prepare(settings)
    put_image(s3_client, settings, "/s/1.jpg", b"one")
    sender = Sender(settings)
    sender.send(
        [media(f"S-{i}", 1, [{"file_path": "/s/1.jpg"}], request_id="req-42") for i in range(3)]
        + [media("S-X", 1, [{"file_path": "/s/gone.jpg"}], request_id="req-42")]
    )
    from tests.integration.support import run_until_drained

    await run_until_drained(settings, sender.ends)
    sender.send(
        [media("S-0", 1, [{"file_path": "/s/1.jpg"}], request_id="req-42")]
    )  # lag 1, not consumed

    for key, val in settings_env(settings).items():
        if key.startswith("STREAMER_"):
            monkeypatch.setenv(key, val)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["status", "--request-id", "req-42", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["request"]["outcomes"] == {"written": 3, "partial": 1}
    assert [f["sku"] for f in report["request"]["failed"]] == ["S-X"]
    assert report["dead_letters"] == {"object_missing": 1}
    assert report["total_lag"] == 1
