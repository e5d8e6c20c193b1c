"""A forwarder process SIGKILLed mid-run loses nothing: what the receiver recorded, compared with
what was published, has every event, duplicates only under the same webhook-id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from streamer.dev.receiver import Receiver, Record, Reply
from tests.integration.forwarding import (
    SECRET,
    Outcomes,
    assert_received,
    forward_settings,
    forwarder,
)
from tests.integration.support import dead_letters, settings_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_sigkill_mid_run_loses_nothing(make_settings) -> None:
    with Receiver(SECRET) as receiver:
        settings = forward_settings(make_settings, receiver, webhook_max_in_flight=4)
        outcomes = Outcomes(settings)
        published = outcomes.publish([f"K-{i:02d}" for i in range(10)], versions=30)

        def slowly(record: Record) -> Reply | None:
            return Reply(204, hang_s=0.005) if record.verified else None

        receiver.behaviour = slowly
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [sys.executable, "-m", "streamer", "forward"],
            env=settings_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            async def a_third_accepted() -> bool:
                assert process.poll() is None, "the forwarder exited by itself"
                return len(receiver.accepted()) >= len(published) // 3

            await wait_for(a_third_accepted, timeout_s=90, what="a third of the deliveries")
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        before = len(receiver.accepted())
        assert before < len(published), "the run was over before the kill"
        async with forwarder(settings) as running:
            await running.drained(outcomes, timeout_s=120)
        assert_received(receiver, published)
    assert dead_letters(settings) == []
