"""The command line as a person and a log pipeline meet it: 80 columns, clear waits and
errors, JSON-clean logs with the broker down, `publish --wait` and its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.dev.stack import free_port
from streamer.gallery.worker import gallery_runner
from tests.integration.support import (
    drained_worker,
    media,
    prepare,
    put_image,
    settings_env,
)

pytestmark = pytest.mark.integration


def streamer(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env={**env, "COLUMNS": "80", "TERM": "dumb"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def test_with_the_broker_down_every_log_line_is_json_and_few(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    port = free_port()  # nothing listens there
    env.update(
        STREAMER_HOME=str(tmp_path / "home"),
        STREAMER_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        STREAMER_LOG_FORMAT="json",
    )
    result = streamer("dlq", "list", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    events = [r["event"] for r in records]
    assert len(lines) < 20, events
    assert any(e.startswith("reading the dead-letter topic") for e in events), events
    assert any(f"cannot reach Kafka at 127.0.0.1:{port}" in e for e in events), events
    assert any(e.startswith("settings: ") for e in events), events


def test_outside_a_checkout_the_error_says_where_settings_came_from(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env["STREAMER_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/streamer"
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    result = streamer("gallery", "show", "SKU-1", env=env, cwd=elsewhere)
    assert result.returncode == 1
    assert "error:" in result.stderr
    settings_line = next(line for line in result.stderr.splitlines() if "settings:" in line)
    assert f"no {elsewhere}/.streamer/dev.env" in settings_line
    assert "STREAMER_DATABASE_URL" in settings_line

    # Nothing configured at all: said before anything is tried.
    del env["STREAMER_DATABASE_URL"]
    nothing = streamer("gallery", "show", "SKU-1", env=env, cwd=elsewhere, timeout_s=60)
    assert nothing.returncode == 1
    first = nothing.stderr.splitlines()[0]
    assert first.startswith("no settings found, using the defaults: no "), nothing.stderr


async def test_gallery_show_and_status_at_80_columns(make_settings, s3_client) -> None:
    settings = make_settings()
    prepare(settings)
    long_path = (
        "/" + "/".join(["a-rather-long-folder-name"] * 4) + "/the-image-with-a-long-name.jpg"
    )
    etag = put_image(s3_client, settings, long_path, b"a long-named image")
    from tests.integration.support import Sender

    sender = Sender(settings)
    sender.send(
        [media("WIDE-1", 1, [{"file_path": long_path, "label": "front", "roles": ["base"]}])]
    )
    await asyncio.wait_for(_drain(settings, sender.ends), timeout=120)
    env = settings_env(settings)

    shown = await asyncio.to_thread(streamer, "gallery", "show", "WIDE-1", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "WIDE-1" in shown.stdout, "the header is on stdout with its table"
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    assert column(shown.stdout, 2) == long_path, "the path wraps, whole"
    assert column(shown.stdout, 3) == etag, "the ETag wraps, whole"

    unknown = await asyncio.to_thread(
        streamer, "status", "--request-id", "no-such-request", env=env
    )
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "no request 'no-such-request'" in unknown.stderr
    assert "None" not in unknown.stdout
    assert max(len(line) for line in unknown.stdout.splitlines()) <= 80


def column(table: str, index: int) -> str:
    """A column of a rich table, its wrapped cell lines joined again."""
    rows = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    return "".join(cells[index].strip() for cells in rows)


async def _drain(settings, ends) -> None:
    async with drained_worker(settings, ends):
        pass


async def test_publish_wait_follows_the_bulk_and_exits_by_outcome(
    make_settings, tmp_path, s3_client
) -> None:
    settings = make_settings()
    prepare(settings)
    put_image(s3_client, settings, "/wait/ok.jpg", b"fine")
    env = settings_env(settings)
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"type": "media", "sku": "PW-1", "images": [{"file_path": "wait/ok.jpg", "roles": ["base"]}]}\n'
        '{"type": "product", "sku": "PW-1", "name": "Blue mug"}\n'
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"type": "media", "sku": "PW-2", "images": [{"file_path": "wait/missing.jpg"}]}\n'
    )

    # Nobody consumes: the wait times out (exit 2) and says how to follow the bulk.
    timed_out = await asyncio.to_thread(
        streamer, "publish", str(good), "--wait", "--timeout", "2", env=env
    )
    assert timed_out.returncode == 2, timed_out.stdout + timed_out.stderr
    assert "timed out" in timed_out.stderr and "streamer status --request-id" in timed_out.stderr

    stop = asyncio.Event()
    worker = gallery_runner(settings, install_signal_handlers=False)
    task = asyncio.create_task(worker.run(stop))
    try:
        ok = await asyncio.to_thread(
            streamer, "publish", str(good), "--wait", "--timeout", "120", "--json", env=env
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        body = json.loads(ok.stdout)
        assert body["complete"] is True
        # the timed-out bulk of the same events may have been applied first: no-ops then
        assert {i["outcome"] for i in body["request_items"]} <= {"written", "noop"}
        failed = await asyncio.to_thread(
            streamer, "publish", str(bad), "--wait", "--timeout", "120", env=env
        )
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "partial" in failed.stdout and "object_missing" in failed.stdout
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
