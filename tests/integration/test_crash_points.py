"""Test-only crash points: a worker started with ``STREAMER_TEST_CRASH_POINTS`` alone (a
deployment that carries it by accident) commits as usual and says the variable is
ignored; only the harness's hidden flag arms them, and the worker says so loudly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.settings import Settings
from tests.integration.support import (
    Sender,
    drained,
    media,
    prepare,
    put_image,
    settings_env,
    stored_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration


def _start(settings: Settings, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = settings_env(settings)
    env["STREAMER_TEST_CRASH_POINTS"] = "after_offsets:1.0"
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *flags, "consume"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _published(make_settings, s3_client) -> tuple[Settings, Sender]:  # type: ignore[no-untyped-def]
    settings = make_settings(topic_partitions=1)
    prepare(settings)
    put_image(s3_client, settings, "/c/1.jpg", b"one")
    sender = Sender(settings)
    sender.send([media("C-1", 1, [{"file_path": "/c/1.jpg"}])])
    return settings, sender


async def test_the_variable_without_the_flag_is_ignored(make_settings, s3_client, tmp_path) -> None:
    settings, sender = _published(make_settings, s3_client)
    log = tmp_path / "worker.log"
    worker = _start(settings, log)
    try:

        async def committed() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            return await drained(settings, sender.ends)

        await wait_for(committed, timeout_s=90, what="the unarmed worker to commit its batch")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert "STREAMER_TEST_CRASH_POINTS is set but ignored" in text
    assert "ARMED" not in text


async def test_the_hidden_flag_arms_them_and_the_worker_says_so(
    make_settings, s3_client, tmp_path
) -> None:
    settings, sender = _published(make_settings, s3_client)
    log = tmp_path / "worker.log"
    worker = _start(settings, log, "--arm-test-crash-points")
    try:
        code = worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert code == -signal.SIGKILL, text[-3000:]
    assert "TEST CRASH POINTS ARMED (after_offsets:1)" in text
    assert "test crash point after_offsets reached" in text
    # Killed between the fenced offset write and COMMIT: nothing of the batch landed.
    assert not await drained(settings, sender.ends)
    assert all(offset <= 0 for offset in (await stored_offsets(settings)).values())


def test_the_flag_is_not_in_the_help() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "streamer", "--help"], capture_output=True, timeout=60, check=True
    )
    assert b"crash" not in shown.stdout.lower()
